"""agentctl's fast paths import no heavy library (measured with `python -X importtime`).

Wall time is left to `bench/cli`; what can be checked here without flaking is the cause:
the modules each path loads. `--version` loads no HTTP client, no pydantic, no rich and
no asyncio, not even argparse; `exec` (run to its end, here against a closed port) loads `http.client` but
neither httpx nor pydantic nor rich nor websockets; `cp` from a script loads no rich, and
`cp` of a single file neither tarfile nor the directory transfers.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fleetgate.agentctl import client


HEAVY = ("httpx", "pydantic", "rich", "websockets", "fleetgate.shared.protocol")


PROXIES = ("http_proxy", "https_proxy", "all_proxy")


def without_proxies() -> dict[str, str]:
    """This environment without *_proxy variables (they change exec's HTTP path)."""
    return {k: v for k, v in os.environ.items() if k.lower() not in PROXIES}


def imported(*args: str, env: dict[str, str] | None = None) -> tuple[set[str], str]:
    """The modules `python -X importtime -m fleetgate.agentctl ARGS` imports, and stdout."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "fleetgate.agentctl", *args],
        env={**without_proxies(), **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    modules = {
        line.split("|")[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "fleetgate.agentctl.entry" in modules, result.stderr[-2000:]
    return modules, result.stdout


def heavy(modules: set[str]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in HEAVY or m.startswith(HEAVY)}


def test_version_imports_nothing_heavy() -> None:
    modules, out = imported("--version")
    assert out.startswith("agentctl ")
    assert heavy(modules) == set()
    # Not even the parser: `--version` is answered by the console script's own module.
    assert not {"argparse", "asyncio", "http.client", "ssl", "fleetgate.agentctl.main"} & modules


def test_exec_imports_only_the_standard_http_client(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = tmp_path / "agentctl.toml"
        config.write_text(f'url = "http://127.0.0.1:{port}"\ntoken = "t"\n')
        modules, _ = imported("exec", "web-01", "--", "true", env={"AGENTCTL_CONFIG": str(config)})
    assert "http.client" in modules  # it did go as far as the request
    assert heavy(modules) == set()
    # Only exec's own command group is loaded, not cp's, tunnel's or websh's.
    assert not {m for m in modules if m.startswith("fleetgate.agentctl.commands.")} - {
        "fleetgate.agentctl.commands.exec_cmd",
        "fleetgate.agentctl.commands.exec_history",
    }


def test_a_proxy_in_the_environment_sends_exec_through_httpx(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """http.client ignores *_proxy variables; httpx honours them: with one set, exec's
    request goes through httpx (slower, but it reaches the control plane the same way)."""
    for name in PROXIES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    assert not client._proxied()
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert client._proxied()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        config = tmp_path / "agentctl.toml"
        config.write_text(f'url = "http://127.0.0.1:{sock.getsockname()[1]}"\ntoken = "t"\n')
        env = {"AGENTCTL_CONFIG": str(config), "HTTPS_PROXY": "http://proxy.invalid:3128"}
        modules, _ = imported("exec", "web-01", "--", "true", env=env)
    assert "httpx" in modules


def test_cp_without_a_terminal_imports_no_rich(tmp_path: Path) -> None:
    """`cp` from a script (stderr not a terminal) shows no progress bar, so it does not
    load rich: 54 modules, 25-30 ms of a start with a cold page cache."""
    source = tmp_path / "source.txt"
    source.write_text("x\n")
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        config = tmp_path / "agentctl.toml"
        config.write_text(f'url = "http://127.0.0.1:{sock.getsockname()[1]}"\ntoken = "t"\n')
        modules, _ = imported(
            "cp", str(source), "web-01:/tmp/x", env={"AGENTCTL_CONFIG": str(config)}
        )
    assert "fleetgate.agentctl.filetransfer" in modules  # it did get to the transfer
    assert not {m for m in modules if m.split(".")[0] == "rich"}
    # A single file: what only directories need (5 ms of every start) stays unloaded.
    assert not {"tarfile", "fleetgate.agentctl.filetrees"} & modules
    # Its control frames are parsed with the standard library (pydantic_core: 12 ms).
    assert not {m for m in modules if m.split(".")[0] == "pydantic_core"}


def test_cp_of_a_directory_imports_the_directory_transfers(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on: bound, never listening
        sock.bind(("127.0.0.1", 0))
        config = tmp_path / "agentctl.toml"
        config.write_text(f'url = "http://127.0.0.1:{sock.getsockname()[1]}"\ntoken = "t"\n')
        modules, _ = imported(
            "cp", "-r", str(tmp_path), "web-01:/tmp/x", env={"AGENTCTL_CONFIG": str(config)}
        )
    assert {"tarfile", "fleetgate.agentctl.filetrees"} <= modules
