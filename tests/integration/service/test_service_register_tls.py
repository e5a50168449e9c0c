"""``fleetgate-agent register`` verifies the control plane's certificate (system store or --ca-file).

A stand-in HTTPS server on loopback with a self-signed certificate: without ``--ca-file``
the handshake fails before anything (the token) is sent; with it, registration succeeds
and the CA file is stored in the configuration for the daemon.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import tomllib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetgate.agent.errors import RegistrationError
from fleetgate.agent.service import enrol
from tests.support.serving import serving


SERVER_ID = "6f1c1b52-7d0e-4c55-9a53-2b1f6c7e0a11"


def self_signed(directory: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetgate-agent test CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


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
    cert, key = self_signed(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    Handler.seen = []
    with serving(server) as port:
        yield f"https://127.0.0.1:{port}", cert


def test_unverified_certificate_is_refused_before_sending_the_token(
    https_cp: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = https_cp
    with pytest.raises(RegistrationError) as caught:
        enrol.register(
            config_path=tmp_path / "etc" / "agent.toml", url=url, token="fat_secret", name="tls-1"
        )
    assert caught.value.exit_status == 69
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value)
    assert Handler.seen == []  # no request, so no token, went to the unverified server
    assert not (tmp_path / "etc").exists()


def test_ca_file_verifies_and_is_stored(https_cp: tuple[str, Path], tmp_path: Path) -> None:
    url, cert = https_cp
    config = tmp_path / "etc" / "agent.toml"
    result = enrol.register(
        config_path=config, url=url, token="fat_secret", name="tls-1", ca_file=cert
    )
    assert result.changed
    assert result.server_id == SERVER_ID
    assert Handler.seen == [("POST", "/api/servers/servers/register/", 'token="fat_secret"')]
    stored = tomllib.loads(config.read_text())
    assert stored["control_plane"] == {"url": url, "ca_file": str(cert)}
    assert stored["identity"]["server_id"] == SERVER_ID
    assert (tmp_path / "etc" / "server.key").read_text() == "fsk_test-key\n"
