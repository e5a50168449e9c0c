"""One readable line for a refused certificate: real handshakes through memory BIOs."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from fleetgate.shared.tlserrors import describe_tls_error, find_tls_error
from tests.support.tls import make_ca


def handshake_error(tmp_path: Path, *, trust: str, name: str) -> ssl.SSLError:
    """The client's error of a real TLS handshake (in memory) against 127.0.0.1's cert."""
    ca = make_ca(tmp_path / "ca")
    other = make_ca(tmp_path / "other", "other CA")
    cert, key = ca.issue(tmp_path / "pki", ip="127.0.0.1")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    trusted = ca if trust == "ca" else other
    client_ctx = ssl.create_default_context(cafile=str(trusted.cert_path))
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):  # a handshake takes a few flights; it must fail on the client
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as exc:
            return exc
        s_in.write(c_out.read())
        try:
            server.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError:
            pass  # the server learns of the client's alert; the client's error is wanted
        c_in.write(s_out.read())
    pytest.fail("the handshake did not fail")


def test_wrong_ca_reads_as_one_line(tmp_path: Path) -> None:
    exc = handshake_error(tmp_path, trust="other", name="127.0.0.1")
    assert describe_tls_error(exc, "/etc/ca.pem") == (
        "certificate verify failed: unable to get local issuer certificate "
        "(checked against ca_file /etc/ca.pem)"
    )


def test_wrong_host_names_the_host(tmp_path: Path) -> None:
    exc = handshake_error(tmp_path, trust="ca", name="cp.example")
    assert describe_tls_error(exc) == (
        "certificate verify failed: Hostname mismatch, certificate is not valid for "
        "'cp.example' (checked against the system trust store)"
    )


def test_found_behind_wrappers(tmp_path: Path) -> None:
    """httpx raises ConnectError from httpcore's ConnectError from the SSLError."""
    exc = handshake_error(tmp_path, trust="other", name="127.0.0.1")
    inner = ConnectionError("inner")
    inner.__cause__ = exc
    outer = RuntimeError(str(exc))
    outer.__cause__ = inner
    assert find_tls_error(outer) is exc
    assert (describe_tls_error(outer) or "").startswith("certificate verify failed: ")


def test_other_tls_failures_and_non_tls_errors() -> None:
    plain = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1000)")
    assert describe_tls_error(plain) == "TLS handshake failed: wrong version number"
    assert describe_tls_error(ConnectionRefusedError(111, "Connection refused")) is None
    looped = ValueError("a")
    looped.__context__ = ValueError("b")
    looped.__context__.__context__ = looped  # a cycle ends the walk instead of hanging
    assert find_tls_error(looped) is None
