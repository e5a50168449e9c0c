"""TLS end to end, as deployed: the control plane serves ``https://``/``wss://`` itself.

A throw-away CA made in the test signs the control plane's certificate (for 127.0.0.1);
the agent dials ``wss://`` and verifies it with ``control_plane.ca_file``; agentctl uses
``https://`` with its ``ca_file``. Commands, a websh terminal and a file transfer cross
it; a certificate of another CA, or a host name the certificate does not name
(``localhost``), is refused by the agent (logged, retried, shown by ``status``) and by
every agentctl client (httpx, ``http.client``, the SSH proxy's websocket).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess, running_agent, start_agent
from tests.support.agentctl import RUN_TIMEOUT, AgentctlRunner
from tests.support.controlplane import REPO_ROOT, TlsFiles, running_control_plane
from tests.support.files import sha256_file, write_random
from tests.support.tls import ThrowawayCA, make_ca
from tests.support.users import CreatedUser, temporary_user
from tests.support.websh import shell_round


pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]

SERVER = "tls-01"
VERIFY_FAILED = "certificate verify failed: "


@dataclass
class TlsStack(AgentctlRunner):
    """A control plane serving TLS, a verifying agent (``SERVER``) and agentctl for both."""

    agent: AgentProcess
    ca: ThrowawayCA
    impostor: ThrowawayCA
    root: Path

    def agentctl_env(self, name: str, *, url: str, ca_file: Path) -> dict[str, str]:
        """The environment of an agentctl configured for ``url``, verifying with ``ca_file``."""
        config = self.root / f"{name}.toml"
        config.write_text(
            f'url = "{url}"\ntoken = "{self.cp.admin_token}"\nca_file = "{ca_file}"\n',
            encoding="utf-8",
        )
        return {**self.env, "AGENTCTL_CONFIG": str(config)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsStack]:
    root = tmp_path_factory.mktemp("tls")
    ca = make_ca(root / "ca")
    impostor = make_ca(root / "impostor", "impostor CA")
    cert, key = ca.issue(root / "pki", ip="127.0.0.1")
    with (
        running_control_plane(root / "cp", tls=TlsFiles(cert, key, ca.cert_path)) as cp,
        running_agent(cp, root / "agent", name=SERVER) as agent,
    ):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTCTL_")}
        env.update({"PYTHONUNBUFFERED": "1", "TERM": "xterm"})
        env["AGENTCTL_CONFIG"] = str(root / "agentctl.toml")
        stack = TlsStack(cp, env, agent, ca, impostor, root)
        # As an operator would: `login` checks the token over https and stores the CA.
        login = stack.run(
            "login", cp.url, "--token", cp.admin_token, "--ca-file", str(ca.cert_path)
        )
        assert login.returncode == 0, login.stderr
        yield stack


@pytest.fixture
def user() -> Iterator[CreatedUser]:
    with temporary_user() as created:
        yield created


@pytest.fixture
def user_dir(user: CreatedUser) -> Iterator[Path]:
    """A directory on the server side owned by ``user`` (outside root's 0700 tmp_path)."""
    path = Path(tempfile.mkdtemp(prefix="tls-files-", dir="/tmp"))
    os.chown(path, user.uid, user.gid)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def agent_status(agent: AgentProcess) -> subprocess.CompletedProcess[str]:
    """``fleetgate-agent status`` of ``agent`` (a real subprocess)."""
    return subprocess.run(
        [sys.executable, "-m", "fleetgate.agent", "status", "--config", str(agent.config_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


# -- through TLS -------------------------------------------------------------------------


def test_agent_dials_wss_and_commands_run_through_https(stack: TlsStack) -> None:
    cp, agent = stack.cp, stack.agent
    assert cp.url.startswith("https://127.0.0.1:")
    assert f"controlplane listening on {cp.url}" in cp.log_tail()
    status = agent_status(agent)
    assert status.returncode == 0, status.stdout + status.stderr
    assert re.search(r"connection:\s+connected since ", status.stdout), status.stdout
    assert re.search(rf"control plane:\s+{re.escape(cp.url)}", status.stdout), status.stdout

    # The streaming create (http.client) and the reads (httpx) of `exec`, both verified.
    result = stack.run("exec", SERVER, "--", "echo", "over", "tls")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "over tls\n"
    listing = stack.run("server", "ls")
    assert listing.returncode == 0, listing.stderr
    assert [SERVER, agent.server_id, "yes"] in [r.split()[:3] for r in listing.stdout.splitlines()]


async def test_websh_terminal_over_wss(stack: TlsStack, user: CreatedUser) -> None:
    """agentctl's terminal websocket (wss://, verified) to the agent's channel (wss://)."""
    argv = [sys.executable, "-m", "fleetgate.agentctl", "websh", SERVER, "-u", user.name]
    await shell_round(argv, stack.env, str(REPO_ROOT), user=user.name, tag="tls", exit_code=7)


def test_file_transfer_over_wss(
    stack: TlsStack, user: CreatedUser, user_dir: Path, tmp_path: Path
) -> None:
    local = tmp_path / "payload.bin"
    digest = write_random(local, 3 << 20)
    up = stack.run("cp", str(local), f"{SERVER}:{user_dir}/", "-u", user.name)
    assert up.returncode == 0, up.stderr
    remote = user_dir / "payload.bin"
    assert sha256_file(remote) == digest
    assert remote.stat().st_uid == user.uid
    back = tmp_path / "back.bin"
    down = stack.run("cp", f"{SERVER}:{remote}", str(back), "-u", user.name)
    assert down.returncode == 0, down.stderr
    assert sha256_file(back) == digest


def test_register_with_ca_file_then_run(stack: TlsStack, tmp_path: Path) -> None:
    """As deployed: ``register --ca-file`` stores the CA; the daemon verifies with it."""
    cp = stack.cp
    config = tmp_path / "agent.toml"

    def register(ca_file: Path) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "fleetgate.agent", "register", "--url", cp.url]
        argv += ["--name", "tls-reg", "--token-file", str(cp.workdir / "admin.token")]
        return subprocess.run(
            [*argv, "--config", str(config), "--ca-file", str(ca_file)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )

    refused = register(stack.impostor.cert_path)
    assert refused.returncode == 69, refused.stderr
    assert f"{VERIFY_FAILED}unable to get local issuer certificate" in refused.stderr
    assert not config.exists()
    registered = register(stack.ca.cert_path)
    assert registered.returncode == 0, registered.stderr
    stored = tomllib.loads(config.read_text(encoding="utf-8"))
    assert stored["control_plane"] == {"url": cp.url, "ca_file": str(stack.ca.cert_path)}
    # This test's own directories instead of /var/lib, /run and /var/log (top-level keys).
    dirs = "".join(f'{k} = "{tmp_path / v}"\n' for k, v in DIRS.items())
    config.write_text(dirs + config.read_text(encoding="utf-8"), encoding="utf-8")
    agent = AgentProcess(cp, tmp_path, "tls-reg", stored["identity"]["server_id"], config)
    try:
        agent.start()  # returns once the control plane sees it connected
        assert agent_status(agent).returncode == 0
    finally:
        agent.stop()


DIRS = {"state_dir": "state", "runtime_dir": "run", "logs_dir": "logs"}


# -- refused certificates ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong CA", "unable to get local issuer certificate"),
        ("wrong host", "Hostname mismatch, certificate is not valid for 'localhost'"),
    ],
)
def test_agent_refuses_and_retries(stack: TlsStack, tmp_path: Path, case: str, reason: str) -> None:
    """The agent logs the refusal, retries with backoff and ``status`` shows the reason."""
    cp, ca, impostor = stack.cp, stack.ca, stack.impostor
    if case == "wrong CA":
        url, ca_file = cp.url, impostor.cert_path
    else:
        url, ca_file = f"https://localhost:{cp.port}", ca.cert_path
    agent = start_agent(cp, tmp_path / "agent", url=url, ca_file=ca_file, wait=False)
    expected = f"{VERIFY_FAILED}{reason} (checked against ca_file {ca_file})"
    try:
        deadline = time.monotonic() + 30
        while True:  # until two refusals were logged and status shows the last one
            assert agent.process is not None
            assert agent.process.poll() is None, agent.log_tail()
            refusals = agent.log_path.read_text(encoding="utf-8").count(expected)
            status = agent_status(agent)
            if refusals >= 2 and expected in status.stdout:
                break
            assert time.monotonic() < deadline, f"{status.stdout}\n{agent.log_tail()}"
            time.sleep(0.1)
        assert status.returncode == 1  # running, not connected
        assert re.search(r"connection:\s+(waiting|connecting) \(last error: ", status.stdout)
        assert "backhaul.reconnect_in" in agent.log_path.read_text(encoding="utf-8")
        with cp.client() as client:
            server = client.get(f"/api/servers/servers/{agent.server_id}/").json()
        assert server["is_connected"] is False
        assert server["connected_at"] is None  # the agent never got through
    finally:
        agent.stop()


@pytest.mark.parametrize("case", ["wrong CA", "wrong host"])
def test_agentctl_refuses_with_one_line(stack: TlsStack, case: str) -> None:
    """httpx (``server ls``), ``http.client`` (``exec``) and the SSH proxy's websocket."""
    cp, ca, impostor = stack.cp, stack.ca, stack.impostor
    if case == "wrong CA":
        url, ca_file = cp.url, impostor.cert_path
        reason = "unable to get local issuer certificate"
    else:
        url, ca_file = f"https://localhost:{cp.port}", ca.cert_path
        reason = "Hostname mismatch, certificate is not valid for 'localhost'"
    env = stack.agentctl_env(case.replace(" ", "-"), url=url, ca_file=ca_file)
    line = f"cannot reach {url}: {VERIFY_FAILED}{reason} (checked against ca_file {ca_file})\n"
    for args in (("server", "ls"), ("exec", SERVER, "--", "true")):
        result = stack.run(*args, env=env)
        assert (result.returncode, result.stdout) == (1, ""), result.stderr
        assert result.stderr == f"agentctl: {line}", args
    proxy = stack.run("ssh-proxy", SERVER, env=env)
    assert (proxy.returncode, proxy.stdout) == (255, ""), proxy.stderr
    assert proxy.stderr == f"fleetgate: {line}"


def test_serve_refuses_unusable_tls_files(stack: TlsStack, tmp_path: Path) -> None:
    """A key readable by others, or half a pair: a clear error at start, nothing served."""
    cert, key = stack.ca.issue(tmp_path / "pki", ip="127.0.0.1")
    key.chmod(0o644)

    def serve(*flags: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "fleetgate.controlplane", "serve", "--port", "0"]
        return subprocess.run(
            [*argv, "--db", str(tmp_path / "cp.db"), *flags],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            check=False,
        )

    open_key = serve("--tls-cert", str(cert), "--tls-key", str(key))
    assert open_key.returncode == 2
    assert open_key.stderr == (
        f"error: TLS key {key} is readable by group or others (mode 0644); "
        f"make it private: chmod 600 {key}\n"
    )
    half = serve("--tls-cert", str(cert))
    assert half.returncode == 2
    assert "tls_cert and tls_key go together" in half.stderr
    assert not (tmp_path / "cp.db").exists()  # refused before anything was created
