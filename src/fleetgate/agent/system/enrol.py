"""``fleetgate-agent register`` and ``fleetgate-agent unregister``: the server's identity with the control plane.

Registration posts the server's name (and the public half of its SSH host key, made now
beside the configuration, 0600, and named in ``[ssh] host_key_file``) with an operator's token, then stores the server id, the control plane's SSH
certificate authority (``identity.ssh_ca_key``)
and the control plane's grant-signing public key (``identity.control_plane_key``: grants
are verified against the key seen at registration, over verified TLS) in the
configuration file and the server's key in the key file (0600, in a 0700 directory), all
written atomically. It is idempotent: when the configuration already holds an identity
that the control plane accepts for the same name, nothing is done. The token and the key
are never printed or logged.

Plain ``urllib`` is enough for two requests and keeps the agent free of an HTTP client
dependency; TLS is verified (system store or ``--ca-file``) unless the URL is ``http://``.
"""

from __future__ import annotations

import contextlib
import json
import platform
import socket
import ssl
import tomllib
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetgate.agent.config import load, parse
from fleetgate.agent.errors import ConfigError, RegistrationError
from fleetgate.agent.ssh.hostkey import ensure_host_key, new_host_key, write_host_key
from fleetgate.agent.system.tomledit import Value, set_keys
from fleetgate.shared.atomic import atomic_write
from fleetgate.shared.jsontext import loads as json_loads
from fleetgate.shared.tlserrors import describe_tls_error


__all__ = ["Result", "register", "unregister"]

TIMEOUT = 15.0
EX_UNAVAILABLE = 69
EX_NOPERM = 77
EX_CONFIG = 78

_TEMPLATE = """\
# fleetgate-agent configuration, written by `fleetgate-agent register`.
# Every key and its default: see the README (Agent configuration reference).
"""


@dataclass(frozen=True)
class Result:
    """What a registration did, for the command line."""

    server_id: str
    changed: bool
    message: str


def register(
    *,
    config_path: Path,
    url: str,
    token: str,
    name: str,
    key_file: Path | None = None,
    ca_file: Path | None = None,
) -> Result:
    """Register this server as ``name`` and store its identity.

    Raises:
        RegistrationError: the control plane is unreachable (exit 69), refused the token
            (77), knows the name already, or this machine is registered under another
            name.
        ConfigError: the existing configuration cannot be read or updated.
    """
    url = url.rstrip("/")
    existing = _current_identity(config_path)
    if existing is not None:
        status, body = _request(
            "GET", f"{url}/api/servers/servers/-/", _agent_auth(*existing), ca_file=ca_file
        )
        if status == 200 and body.get("name") == name:
            return Result(
                existing[0],
                False,
                f"already registered as {name} (id {existing[0]}); nothing to do",
            )
        if status == 200:
            raise RegistrationError(
                f"this server is already registered as {body.get('name')!r} (id {existing[0]}); "
                "run `fleetgate-agent unregister` first"
            )
        if status not in (401, 403, 404):
            raise _unexpected("checking the stored identity", status, body)
        # The stored identity is no longer valid there: register anew.
    host_key_file = _host_key_path(config_path).absolute()
    host_public, host_private = _host_key(host_key_file)
    status, body = _request(
        "POST",
        f"{url}/api/servers/servers/register/",
        {"Authorization": f'token="{token}"'},
        payload={
            "name": name,
            "hostname": socket.gethostname(),
            "platform": _platform(),
            "ssh_host_key": host_public,
        },
        ca_file=ca_file,
    )
    if status in (401, 403):
        raise RegistrationError(
            f"the control plane refused the token (HTTP {status}: {body.get('code')})", EX_NOPERM
        )
    if status == 409:
        raise RegistrationError(
            f"a server named {name!r} is already registered; pick another name or delete it"
        )
    if status != 201:
        raise _unexpected("registering", status, body)
    server_id, key = str(body["id"]), str(body["key"])
    signing_key = body.get("signing_public_key")
    ssh_ca = body.get("ssh_ca_public_key")
    key_file = key_file or config_path.parent / "server.key"
    try:
        _write_identity(
            config_path,
            url,
            server_id,
            key,
            key_file.absolute(),
            ca_file,
            signing_key=None if signing_key is None else str(signing_key),
            ssh_ca=None if ssh_ca is None else str(ssh_ca),
            host_key_file=host_key_file,
        )
        if host_private is not None:
            with contextlib.suppress(FileExistsError):
                write_host_key(host_key_file, host_private)
    except (OSError, ConfigError) as exc:
        # Do not leave an orphan behind on the control plane (best effort).
        with contextlib.suppress(RegistrationError):
            _request(
                "DELETE", f"{url}/api/servers/servers/-/", _agent_auth(server_id, key), ca_file
            )
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"cannot store the identity: {exc}") from exc
    return Result(server_id, True, f"registered as {name} (id {server_id}); config {config_path}")


def unregister(*, config_path: Path, keep_remote: bool = False) -> Result:
    """Delete this server on the control plane (with its own credentials), then locally.

    Raises:
        ConfigError: there is no valid configuration or key.
        RegistrationError: the control plane cannot be reached (exit 69).
    """
    config = load(config_path)
    server_id = str(config.identity.server_id)
    note = "deleted on the control plane"
    if keep_remote:
        note = "left on the control plane (--local-only)"
    else:
        cp = config.control_plane
        status, body = _request(
            "DELETE",
            f"{str(cp.url).rstrip('/')}/api/servers/servers/-/",
            _agent_auth(server_id, config.read_key()),
            ca_file=cp.ca_file,
            verify=cp.verify_tls,
        )
        if status in (401, 403, 404):
            note = "already unknown to the control plane"
        elif status != 204:
            raise _unexpected("unregistering", status, body)
    config.identity.key_file.unlink(missing_ok=True)
    text = config_path.read_text(encoding="utf-8")
    atomic_write(config_path, set_keys(text, "identity", {"server_id": None}), 0o600)
    return Result(
        server_id,
        True,
        f"unregistered {server_id}: {note}; local identity removed "
        "(a running service stops at its next start: `systemctl disable --now fleetgate-agent`)",
    )


def _current_identity(config_path: Path) -> tuple[str, str] | None:
    """``(server_id, key)`` from an existing configuration, or ``None``."""
    if not config_path.exists():
        return None
    try:
        config = load(config_path)
        return str(config.identity.server_id), config.read_key()
    except ConfigError:
        return None


def _write_identity(
    config_path: Path,
    url: str,
    server_id: str,
    key: str,
    key_file: Path,
    ca_file: Path | None,
    *,
    signing_key: str | None,
    ssh_ca: str | None = None,
    host_key_file: Path | None = None,
) -> None:
    for directory in {config_path.parent, key_file.parent}:
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True)
    atomic_write(key_file, key + "\n", 0o600)
    try:
        text = config_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        text = _TEMPLATE
    cp_values: dict[str, Value | None] = {"url": url}
    if ca_file is not None:
        cp_values["ca_file"] = str(ca_file.absolute())
    text = set_keys(text, "control_plane", cp_values)
    identity: dict[str, Value | None] = {"server_id": server_id, "key_file": str(key_file)}
    if signing_key is not None:
        identity["control_plane_key"] = signing_key
    if ssh_ca is not None:
        identity["ssh_ca_key"] = ssh_ca
    text = set_keys(text, "identity", identity)
    if host_key_file is not None:
        text = set_keys(text, "ssh", {"host_key_file": str(host_key_file)})
    try:
        written = parse(tomllib.loads(text), source=str(config_path))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            f"{config_path}: cannot be updated safely ({exc}); edit it by hand"
        ) from exc
    if (
        str(written.identity.server_id) != server_id
        or written.identity.key_file != key_file
        or (signing_key is not None and written.identity.control_plane_key != signing_key)
    ):
        raise ConfigError(f"{config_path}: cannot be updated safely; edit it by hand")
    atomic_write(config_path, text, 0o600)


def _host_key_path(config_path: Path) -> Path:
    """Where the SSH host key lives: ``[ssh] host_key_file`` if the configuration names
    one, else beside the configuration (like the server key)."""
    raw: dict[str, Any] = {}
    with contextlib.suppress(OSError, tomllib.TOMLDecodeError):
        raw = tomllib.loads(config_path.read_text(encoding="utf-8"))
    section = raw.get("ssh")
    ssh: dict[str, Any] = section if isinstance(section, dict) else {}
    named = ssh.get("host_key_file")
    return Path(str(named)) if named else config_path.parent / "ssh_host_ed25519_key"


def _host_key(path: Path) -> tuple[str, bytes | None]:
    """The SSH host key's public line, and the private key to write once registration
    succeeded (``None``: it exists already). Nothing is written before the control plane
    accepted us, so a refused registration leaves no trace.

    Raises:
        ConfigError: an existing key cannot be read.
    """
    if path.exists():
        return ensure_host_key(path), None
    data, public = new_host_key()
    return public, data


def _agent_auth(server_id: str, key: str) -> dict[str, str]:
    return {"Authorization": f'id="{server_id}", key="{key}"'}


def _platform() -> str:
    try:
        return platform.freedesktop_os_release().get("ID", "linux")
    except OSError:
        return "linux"


def _request(
    method: str,
    url: str,
    headers: dict[str, str],
    ca_file: Path | None = None,
    *,
    payload: dict[str, Any] | None = None,
    verify: bool = True,
) -> tuple[int, dict[str, Any]]:
    """One HTTP request; returns the status and the JSON body (``{}`` if none)."""
    if not url.startswith(("https://", "http://")):
        raise ConfigError(f"--url must be an http:// or https:// URL, not {url!r}")
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - scheme checked
    for name, value in {**headers, "Content-Type": "application/json"}.items():
        request.add_header(name, value)
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except OSError as exc:  # ssl.SSLError is an OSError too
        raise ConfigError(f"--ca-file: cannot load {ca_file}: {exc.strerror or exc}") from exc
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as response:  # noqa: S310
            return response.status, _json(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read())
    except (urllib.error.URLError, OSError) as exc:
        reason: object = getattr(exc, "reason", exc)
        reason = describe_tls_error(exc, ca_file) or reason
        raise RegistrationError(f"cannot reach {url}: {reason}", EX_UNAVAILABLE) from exc


def _json(data: bytes) -> dict[str, Any]:
    try:
        body = json_loads(data) if data else {}
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _unexpected(what: str, status: int, body: dict[str, Any]) -> RegistrationError:
    detail = body.get("detail") or body.get("code") or "no detail"
    return RegistrationError(f"{what}: unexpected HTTP {status} from the control plane: {detail}")
