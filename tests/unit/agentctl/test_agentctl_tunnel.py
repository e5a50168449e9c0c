"""`agentctl tunnel` argument handling, without a control plane (nothing is sent)."""

from __future__ import annotations

import socket

import pytest

from tests.unit.agentctl.agentctl_fakes import FakeApi, run


@pytest.mark.parametrize(
    "argv",
    [
        ("tunnel", "web-01", "-l", "0", "-r", "80"),
        ("tunnel", "web-01", "-l", "8080", "-r", "70000"),
        ("tunnel", "web-01", "-l", "http", "-r", "80"),
        ("tunnel", "web-01", "-r", "80"),
        ("tunnel", "web-01", "-l", "8080"),
    ],
)
def test_bad_ports_are_usage_errors(argv: tuple[str, ...]) -> None:
    api = FakeApi()
    code, out, err = run(api, *argv)
    assert code == 2, err
    assert out == ""


def test_a_busy_local_port_is_a_usage_error_before_anything_is_created() -> None:
    api = FakeApi()
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        code, out, err = run(api, "tunnel", "web-01", "-l", str(port), "-r", "80")
    assert code == 2
    assert f"cannot listen on 127.0.0.1:{port}" in err
    assert out == ""
