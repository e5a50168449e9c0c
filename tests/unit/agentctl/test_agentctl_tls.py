"""agentctl's TLS context: verifying by default, one per setting, a clear error for a bad ca_file."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from fleetgate.agentctl.client import Client, tls_context, unreachable
from fleetgate.agentctl.errors import CliError
from tests.support.tls import make_ca


def test_the_context_verifies_and_is_shared(tmp_path: Path) -> None:
    ca = make_ca(tmp_path / "ca")
    ctx = Client("https://cp.test", "t", ca_file=ca.cert_path).ssl_context()
    assert (ctx.verify_mode, ctx.check_hostname) == (ssl.CERT_REQUIRED, True)
    assert len(ctx.get_ca_certs()) == 1
    assert tls_context(ca.cert_path, True) is ctx  # HTTP and every websocket share it
    insecure = tls_context(ca.cert_path, False)
    assert (insecure.verify_mode, insecure.check_hostname) == (ssl.CERT_NONE, False)


def test_an_unusable_ca_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    with pytest.raises(CliError, match=rf"^cannot load ca_file {missing}: No such file"):
        tls_context(missing, True)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(CliError, match=rf"^cannot load ca_file {garbage}: "):
        Client("https://cp.test", "t", ca_file=garbage).ssl_context()


def test_unreachable_without_tls_keeps_the_reason() -> None:
    error = unreachable("https://cp.test", ConnectionRefusedError(111, "Connection refused"), None)
    assert error.message == "cannot reach https://cp.test: [Errno 111] Connection refused"
    assert error.code == "CONNECTION_FAILED"
