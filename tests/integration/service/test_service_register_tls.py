"""``fleetgate-agent register`` verifies the control plane's certificate (system store or --ca-file).

A stand-in HTTPS server on loopback with a certificate of a throw-away CA: without ``--ca-file``
the handshake fails before anything (the token) is sent; with it, registration succeeds
and the CA file is stored in the configuration for the daemon.
"""

from __future__ import annotations

import json
import ssl
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from fleetgate.agent.errors import RegistrationError
from fleetgate.agent.system import enrol
from tests.support.serving import serving
from tests.support.tls import make_ca


SERVER_ID = "6f1c1b52-7d0e-4c55-9a53-2b1f6c7e0a11"


class Handler(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str | None]] = []

    def do_POST(self) -> None:
        self.seen.append(("POST", self.path, self.headers.get("Authorization")))
        length = int(self.headers.get("Content-Length", "0"))
        name = json.loads(self.rfile.read(length))["name"]
        self._reply(201, {"id": SERVER_ID, "name": name, "key": "fsk_test-key"})

    def _reply(self, status: int, body: dict[str, str]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def https_cp(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    ca = make_ca(tmp_path / "ca")
    cert, key = ca.issue(tmp_path / "pki", ip="127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    Handler.seen = []
    with serving(server) as port:
        yield f"https://127.0.0.1:{port}", ca.cert_path


def test_unverified_certificate_is_refused_before_sending_the_token(
    https_cp: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = https_cp
    with pytest.raises(RegistrationError) as caught:
        enrol.register(
            config_path=tmp_path / "etc" / "agent.toml", url=url, token="fat_secret", name="tls-1"
        )
    assert caught.value.exit_status == 69
    assert str(caught.value) == (
        f"cannot reach {url}/api/servers/servers/register/: certificate verify failed: "
        "unable to get local issuer certificate (checked against the system trust store)"
    )
    assert Handler.seen == []  # no request, so no token, went to the unverified server
    assert not (tmp_path / "etc").exists()


def test_ca_file_verifies_and_is_stored(https_cp: tuple[str, Path], tmp_path: Path) -> None:
    url, ca_file = https_cp
    config = tmp_path / "etc" / "agent.toml"
    result = enrol.register(
        config_path=config, url=url, token="fat_secret", name="tls-1", ca_file=ca_file
    )
    assert result.changed
    assert result.server_id == SERVER_ID
    assert Handler.seen == [("POST", "/api/servers/servers/register/", 'token="fat_secret"')]
    stored = tomllib.loads(config.read_text())
    assert stored["control_plane"] == {"url": url, "ca_file": str(ca_file)}
    assert stored["identity"]["server_id"] == SERVER_ID
    assert (tmp_path / "etc" / "server.key").read_text() == "fsk_test-key\n"
