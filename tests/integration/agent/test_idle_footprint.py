"""A real connected agent keeps its capabilities' libraries unloaded until first use.

The process's memory map is the evidence: a native library appears in
``/proc/PID/maps`` once imported and never leaves. An idle agent has not mapped
cryptography's binding (about 9 MB resident) nor ctypes; its first command, whose grant
it verifies, works and maps the binding then. tests/unit/agent/test_idle_imports.py
checks the Python modules of the start-up path.
"""

from __future__ import annotations

from pathlib import Path

from fleetgate.agent.ssh.hostkey import new_host_key, write_host_key
from tests.integration.e2e.commands import run_command
from tests.support.agent import start_agent
from tests.support.controlplane import running_control_plane


CRYPTOGRAPHY = "cryptography/hazmat/bindings/_rust"
CTYPES = "/_ctypes."


def _mapped(pid: int, needle: str) -> bool:
    return needle in Path(f"/proc/{pid}/maps").read_text()


def test_an_idle_agent_loads_grant_verification_with_its_first_command(tmp_path: Path) -> None:
    with running_control_plane(tmp_path / "cp") as cp:
        # As after registration (fleetgate-agent register makes the SSH host key).
        write_host_key(tmp_path / "agent" / "state" / "ssh_host_ed25519_key", new_host_key()[0])
        agent = start_agent(cp, tmp_path / "agent")
        try:
            assert agent.process is not None
            pid = agent.process.pid
            assert not _mapped(pid, CRYPTOGRAPHY)
            assert not _mapped(pid, CTYPES)
            with cp.client(timeout=60) as api:
                command = run_command(api, agent.name, "echo first use")
            assert command["exit_code"] == 0
            assert command["streamed"] == "first use\n"
            assert _mapped(pid, CRYPTOGRAPHY)  # the command's grant was verified
            assert not _mapped(pid, CTYPES)  # no file transfer yet
        finally:
            agent.stop()
