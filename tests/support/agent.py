"""Run the real agent as a subprocess against a control plane, for integration tests.

The helper registers a server through the control plane's HTTP API, writes the agent's
configuration and key file (0600) into a work directory, starts ``python -m fleetgate.agent run``
and waits until the control plane reports the server connected. Everything the agent
logs goes to ``agent.log`` in the work directory.

Usage::

    with running_control_plane(tmp_path / "cp") as cp, running_agent(cp, tmp_path / "a") as ag:
        ...
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from tests.support.controlplane import REPO_ROOT, ControlPlaneProcess
from tests.support.processes import end_process


__all__ = ["SENTINEL_ENV", "AgentProcess", "running_agent", "start_agent"]

START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0

SENTINEL_ENV = ("AGENT_DAEMON_SECRET_SENTINEL", "must-not-leak")
"""Set in the agent's own environment: a command must never see it."""

_live: set[AgentProcess] = set()


class AgentProcess:
    """An agent subprocess registered to one control plane as one server."""

    def __init__(
        self, cp: ControlPlaneProcess, workdir: Path, name: str, server_id: str, config: Path
    ) -> None:
        self.cp = cp
        self.workdir = workdir
        self.name = name
        self.server_id = server_id
        self.config_path = config
        self.log_path = workdir / "agent.log"
        self.runtime_dir = workdir / "run"
        self.logs_dir = workdir / "logs"
        self.env: dict[str, str] = {}
        """Extra environment of the agent process (e.g. ``NOTIFY_SOCKET``)."""
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, *, wait: bool = True) -> None:
        """Start the agent; with ``wait``, return once the control plane sees it connected."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("the agent is already running")
        self._log = self.log_path.open("ab")
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            SENTINEL_ENV[0]: SENTINEL_ENV[1],
            **self.env,
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fleetgate.agent", "run", "--config", str(self.config_path)],
            cwd=REPO_ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _live.add(self)
        if wait:
            self.wait_connected()

    def wait_connected(self, connected: bool = True, timeout: float = START_TIMEOUT) -> None:
        """Poll the control plane until the server's ``is_connected`` equals ``connected``."""
        deadline = time.monotonic() + timeout
        with self.cp.client() as client:
            while True:
                if connected and self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(
                        f"the agent exited with {self.process.returncode}:\n{self.log_tail()}"
                    )
                response = client.get(f"/api/servers/servers/{self.server_id}/")
                if response.status_code == 200 and response.json()["is_connected"] is connected:
                    return
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"agent connected != {connected} after {timeout} s:\n{self.log_tail()}"
                    )
                time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL the agent (a crash) and reap it."""
        end_process(self.process, timeout=STOP_TIMEOUT, crash=True)
        self._closed()

    def stop(self) -> int | None:
        """SIGTERM the agent and wait for it; returns its exit status."""
        proc = self.process
        end_process(proc, timeout=STOP_TIMEOUT, crash=False)
        self._closed()
        return None if proc is None else proc.returncode

    def _closed(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        _live.discard(self)

    def log_tail(self, max_bytes: int = 8000) -> str:
        """The end of the agent's log, for failure messages."""
        try:
            return self.log_path.read_bytes()[-max_bytes:].decode("utf-8", "replace")
        except OSError:
            return ""


def write_agent_config(
    path: Path,
    *,
    url: str,
    server_id: str,
    key_file: Path,
    state_dir: Path,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    control_plane_key: str | None = None,
    ssh_ca_key: str | None = None,
    ca_file: Path | None = None,
    urls: Sequence[str] = (),
) -> None:
    """Write an agent TOML configuration (small values only: str, int, float, bool).

    ``control_plane_key`` pins the control plane's grant key (registration's
    ``signing_public_key``), as an installed agent does; ``urls`` lists further replicas.
    """
    lines = [
        f'state_dir = "{state_dir}"',
        # Per-agent directories: several agents run side by side in the tests, as root.
        f'runtime_dir = "{state_dir.parent / "run"}"',
        f'logs_dir = "{state_dir.parent / "logs"}"',
        "[control_plane]",
        f'url = "{url}"',
        *([f"urls = [{', '.join(f'{u!r}' for u in urls)}]"] if urls else []),
        *([f'ca_file = "{ca_file}"'] if ca_file is not None else []),
        "[identity]",
        f'server_id = "{server_id}"',
        f'key_file = "{key_file}"',
    ]
    if control_plane_key is not None:
        lines.append(f'control_plane_key = "{control_plane_key}"')
    if ssh_ca_key is not None:
        lines.append(f'ssh_ca_key = "{ssh_ca_key}"')
    for section, values in (sections or {}).items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if isinstance(value, bool):
                rendered = "true" if value else "false"
            elif isinstance(value, str):
                rendered = f'"{value}"'
            else:
                rendered = repr(value)
            lines.append(f"{key} = {rendered}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def start_agent(
    cp: ControlPlaneProcess,
    workdir: Path,
    *,
    name: str | None = None,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    wait: bool = True,
    url: str | None = None,
    env: Mapping[str, str] | None = None,
    ca_file: Path | None = None,
    urls: Sequence[str] = (),
) -> AgentProcess:
    """Register a server named ``name`` (default: random) and start its agent.

    ``url`` is what the agent dials (default: the control plane's own URL; a fault test
    passes a proxy's). ``ca_file`` is what it verifies the control plane's certificate
    with (default: the CA of a control plane serving TLS); ``urls`` are further replicas
    the agent rotates to.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    name = name or f"srv-{uuid.uuid4().hex[:8]}"
    server_id, key = cp.register_server(name)
    key_file = workdir / "server.key"
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(key + "\n")
    merged: dict[str, dict[str, Any]] = {
        # Fast reconnects keep fault tests short; production defaults are slower.
        "backhaul": {"reconnect_min_delay": 0.05, "reconnect_max_delay": 0.5},
        "logging": {"format": "json", "level": "info"},
    }
    for section, values in (sections or {}).items():
        merged.setdefault(section, {}).update(values)
    config = workdir / "agent.toml"
    write_agent_config(
        config,
        url=url or cp.url,
        server_id=server_id,
        key_file=key_file,
        state_dir=workdir / "state",
        sections=merged,
        control_plane_key=cp.signing_public_key,
        ssh_ca_key=cp.ssh_ca_public_key,
        ca_file=ca_file or (cp.tls.ca if cp.tls is not None else None),
        urls=urls,
    )
    agent = AgentProcess(cp, workdir, name, server_id, config)
    agent.env.update(env or {})
    agent.start(wait=wait)
    return agent


@contextmanager
def running_agent(
    cp: ControlPlaneProcess,
    workdir: Path,
    *,
    name: str | None = None,
    sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[AgentProcess]:
    """Context manager around :func:`start_agent` that always stops it at the end."""
    agent = start_agent(cp, workdir, name=name, sections=sections)
    try:
        yield agent
    finally:
        agent.stop()


@atexit.register
def _kill_leftovers() -> None:
    for agent in list(_live):
        agent.kill()
