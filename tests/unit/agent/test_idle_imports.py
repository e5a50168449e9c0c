"""What the agent imports at start, and what it leaves for first use (its idle memory).

Every module imported stays resident for the daemon's life: capabilities an idle agent
does not use (file transfers, tunnels, SSH, registration, grant signatures) load with
their first use. These tests fail when a start-up import pulls one of them in again.
They run the agent's import path in a fresh interpreter, as the daemon starts.
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from fleetgate.agent.channels import LazyService
from fleetgate.agent.config import parse
from fleetgate.agent.errors import ChannelRefused
from fleetgate.agent.terminals import Terminals
from fleetgate.agent.tunnel.service import TunnelService
from fleetgate.shared.protocol import ChannelOpen, TunnelSpec, WebshSpec


LAZY = [
    # A capability's own modules: loaded when its first channel opens (websh also with
    # the first SSH channel, or at start when recordings wait to be shipped).
    "fleetgate.agent.websh.service",
    "fleetgate.agent.websh.terminal",
    "fleetgate.agent.files.service",
    "fleetgate.agent.tunnel.service",
    "fleetgate.agent.ssh.service",
    "fleetgate.agent.ssh.server",
    "asyncssh",
    # Commands: loaded with the first one.
    "fleetgate.agent.exec.runner",
    # Registration (``fleetgate-agent register``), never done by the daemon.
    "fleetgate.agent.system.enrol",
    "tomlkit",
    # Grant signatures are verified with the first gated operation; the host key's
    # public line is read without it.
    "cryptography",
    # Loaded with file transfers only.
    "ctypes",
    # structlog's optional pretty tracebacks: never in the agent, installed or not.
    "rich",
]

EAGER = [
    # What an idle agent does run: the positive control of this test.
    "fleetgate.agent.daemon",
    "fleetgate.agent.backhaul.connection",
    "fleetgate.agent.spool.store",
    "fleetgate.agent.channels.lazy",
    "fleetgate.agent.terminals",
    "fleetgate.agent.dispatch",
    "fleetgate.agent.ssh.hostkey",
    "structlog",
    "pydantic",
]


def _loaded_after(code: str) -> set[str]:
    """The modules loaded in a fresh interpreter after running ``code``."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(k for k, v in sys.modules.items() if v is not None)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


def _config(tmp_path: Path) -> str:
    return json.dumps(
        {
            "state_dir": str(tmp_path / "state"),
            "control_plane": {"url": "http://127.0.0.1:1"},
            "identity": {"server_id": str(uuid.uuid4()), "key_file": str(tmp_path / "k")},
        }
    )


def test_the_agent_starts_without_its_lazy_capabilities() -> None:
    """``python -m fleetgate.agent`` (and the installed program) imports the daemon but
    none of the capabilities an idle agent does not use."""
    loaded = _loaded_after("import fleetgate.agent.__main__")
    assert set(EAGER) <= loaded
    unexpected = {name for name in LAZY if name in loaded}
    assert not unexpected, f"imported at start, should load on first use: {sorted(unexpected)}"


def test_building_the_daemon_loads_no_capability(tmp_path: Path) -> None:
    """Wiring every component (as ``daemon.run`` does before connecting) constructs no
    lazily registered service either, and the loaders import exactly their service."""
    setup = (
        "import fleetgate.agent.__main__\n"
        "from fleetgate.agent.daemon import wiring\n"
        "from fleetgate.agent.config import parse\n"
        f"config = parse(__import__('json').loads({_config(tmp_path)!r}))\n"
    )
    loaded = _loaded_after(setup + "wiring._files_service(config)\n")
    assert "fleetgate.agent.files.service" in loaded
    assert "fleetgate.agent.tunnel.service" not in loaded
    loaded = _loaded_after(setup + "wiring._tunnel_service(config, wiring._stream_book(config))\n")
    assert "fleetgate.agent.tunnel.service" in loaded
    assert "fleetgate.agent.files.service" not in loaded
    assert "ctypes" not in loaded


def test_rich_stays_out_even_where_it_is_installed() -> None:
    """The dev environment has rich (agentctl's extra): the agent's entry still keeps
    structlog from importing it, and structlog still configures and logs."""
    code = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('rich') is not None, 'this test needs rich installed'\n"
        "import fleetgate.agent.__main__\n"
        "from fleetgate.shared import logs\n"
        "logs.configure('info', 'console')\n"
        "import structlog\n"
        "try:\n"
        "    raise ValueError('boom')\n"
        "except ValueError:\n"
        "    structlog.get_logger('t').exception('test.failed')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code + "print('rich' in sys.modules and sys.modules['rich'])"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip().splitlines()[-1] in ("None", "False")
    assert "test.failed" in done.stderr
    assert "ValueError: boom" in done.stderr  # the plain traceback, without rich


def _tunnel_open() -> ChannelOpen:
    return ChannelOpen(
        channel_id=uuid.uuid4(), spec=TunnelSpec(tunnel_id=uuid.uuid4(), host="127.0.0.1", port=1)
    )


def test_a_lazy_service_loads_once_on_first_use(tmp_path: Path) -> None:
    config = parse(json.loads(_config(tmp_path)))
    loads: list[TunnelService] = []

    def load() -> TunnelService:
        loads.append(TunnelService(config.tunnel))
        return loads[-1]

    lazy = LazyService("tunnel", load)
    assert lazy.kind == "tunnel"
    assert lazy.loaded is None  # registering builds nothing
    assert not loads
    assert lazy.scope == loads[0].scope  # the router asks the scope first: this loads it
    with pytest.raises(ChannelRefused) as refused:
        lazy.check(_tunnel_open())  # the real service's own refusal (port not allowed)
    assert refused.value.code.startswith("tunnel_")
    assert lazy.loaded is loads[0]
    assert len(loads) == 1


def test_a_service_that_cannot_load_is_refused_not_fatal() -> None:
    """A broken installation refuses that kind of channel with a clear code; the router
    (and the agent) go on."""

    def load() -> TunnelService:
        raise ImportError("No module named 'fleetgate.agent.tunnel.service'")

    lazy = LazyService("tunnel", load)
    with pytest.raises(ChannelRefused) as refused:
        lazy.check(_tunnel_open())
    assert refused.value.code == "unavailable"
    assert "tunnel" in refused.value.message
    assert lazy.loaded is None


def test_terminals_exist_only_once_asked_for(tmp_path: Path) -> None:
    """websh's stand-in: nothing to end before the service exists; the first websh
    ``channel.open`` builds it (and its refusals are the real service's)."""
    config = parse({**json.loads(_config(tmp_path)), "websh": {"enabled": False}})
    terminals = Terminals(config, "key")
    assert not terminals.loaded
    assert terminals.end(uuid.uuid4(), "revoked") is False
    opened = ChannelOpen(
        channel_id=uuid.uuid4(), spec=WebshSpec(terminal_id=uuid.uuid4(), username="alice")
    )
    with pytest.raises(ChannelRefused) as refused:
        terminals.check(opened)
    assert refused.value.code == "websh_disabled"
    assert terminals.loaded
    assert terminals.scope == "websh"
    assert terminals.end(uuid.uuid4(), "revoked") is False  # loaded, but no such terminal
