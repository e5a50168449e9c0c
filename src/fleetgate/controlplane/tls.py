"""Serving TLS: the certificate and key files are checked before the socket is served.

uvicorn loads them itself (``ssl_certfile``/``ssl_keyfile``) but reports a bad file with a
traceback; :func:`check_tls_files` names the file and the problem in one line instead, and
refuses a private key that group or others can read.
"""

from __future__ import annotations

import os
import ssl
import stat
from pathlib import Path

from fleetgate.shared.errors import FleetgateError


__all__ = ["TlsSetupError", "check_tls_files"]


class TlsSetupError(FleetgateError):
    """The TLS certificate or key cannot be served; the message names the file."""


def check_tls_files(cert: Path, key: Path) -> None:
    """Check that ``cert`` and ``key`` are readable, private enough and belong together.

    Raises:
        TlsSetupError: a file is missing or unreadable, the key is readable by group or
            others, or the pair does not load (not PEM, or a key of another certificate).
    """
    for what, path in (("certificate", cert), ("key", key)):
        try:
            with path.open("rb") as fh:
                # The mode of the file we opened, not of whatever the path names later.
                mode = stat.S_IMODE(os.fstat(fh.fileno()).st_mode)
        except OSError as exc:
            raise TlsSetupError(f"TLS {what} {path}: cannot read: {exc.strerror}") from None
        if what == "key" and mode & 0o077:
            raise TlsSetupError(
                f"TLS key {path} is readable by group or others (mode {mode:04o}); "
                f"make it private: chmod 600 {path}"
            )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        raise TlsSetupError(
            f"TLS certificate {cert} and key {key} do not load together: {reason}"
        ) from None
