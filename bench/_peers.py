"""Shared set-up of the benchmarks: our stack and an OpenSSH peer on loopback.

``our_stack()`` starts the real control plane and a real agent (subprocesses, as in the
integration tests). ``openssh_peer()`` starts Debian's sshd on a free loopback port with a
throwaway host key and client key, and yields the argv prefix of a multiplexed ssh client
(``ControlMaster``), already connected.
"""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.agent import AgentProcess, start_agent
from tests.support.controlplane import ControlPlaneProcess, start_control_plane


__all__ = [
    "bench_user",
    "cpu_seconds",
    "free_port",
    "openssh_peer",
    "our_stack",
    "percentile",
    "summary",
]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary(values_s: Sequence[float]) -> dict[str, float]:
    """p50/p99/mean of durations given in seconds, reported in milliseconds."""
    return {
        "p50_ms": round(percentile(values_s, 50) * 1000, 3),
        "p99_ms": round(percentile(values_s, 99) * 1000, 3),
        "mean_ms": round(statistics.fmean(values_s) * 1000, 3),
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU time consumed so far by process ``pid`` (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """CPU time the whole machine has spent busy so far, every core summed (/proc/stat).

    user + nice + system + irq + softirq + steal: what every process and the kernel's work
    on their behalf (loopback TCP, fork, exec, page faults) cost, idle and iowait left out.
    """
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """A free TCP port on loopback (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def our_stack(
    sections: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[tuple[ControlPlaneProcess, AgentProcess]]:
    """A control plane and one connected agent, both subprocesses, torn down at the end."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    env = {"CONTROLPLANE_LOG_LEVEL": "warning"}
    cp = start_control_plane(workdir / "cp", env=env)
    merged: dict[str, dict[str, Any]] = {"logging": {"level": "warning"}}
    for name, values in (sections or {}).items():
        merged.setdefault(name, {}).update(values)
    try:
        agent = start_agent(cp, workdir / "agent", name="bench", sections=merged)
        try:
            yield cp, agent
        finally:
            agent.stop()
    finally:
        cp.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@contextmanager
def bench_user() -> Iterator[str]:
    """A throw-away user with shell /bin/sh and an empty home, removed afterwards.

    Both sides run their commands as this user: our agent as it would for any operator,
    OpenSSH through its login. Root's own shell here may source heavy rc files (bash reads
    ~/.bashrc for commands sent by sshd), which would slow the peer for reasons that are
    not OpenSSH's.
    """
    if os.geteuid() != 0:
        raise SystemExit("the benchmarks need root (they create a user and run sshd)")
    name = f"bench{os.getpid()}"
    subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/sh", name], check=True, capture_output=True
    )
    # '*': no password can log in, but the account is not locked (sshd refuses '!').
    subprocess.run(["usermod", "--password", "*", name], check=True, capture_output=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", "--remove", name], check=False, capture_output=True)


@contextmanager
def openssh_peer(user: str, max_sessions: int = 64) -> Iterator[list[str]]:
    """Debian's sshd on loopback, and the argv prefix of a multiplexed client to it."""
    sshd = shutil.which("sshd") or "/usr/sbin/sshd"
    if not os.path.exists(sshd) or shutil.which("ssh") is None:
        raise SystemExit("OpenSSH is not installed: apt-get install openssh-server openssh-client")
    workdir = Path(tempfile.mkdtemp(prefix="bench-ssh-"))
    port = free_port()
    host_key, client_key = workdir / "host_ed25519", workdir / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = workdir / "authorized_keys"
    shutil.copy(f"{client_key}.pub", authorized)
    # sshd reads authorized_keys as the target user.
    os.chmod(workdir, 0o755)
    os.chmod(authorized, 0o644)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    config = workdir / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"AuthorizedKeysFile {authorized}",
                "PermitRootLogin prohibit-password",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                # The fastest honest configuration of the peer: no PAM, no DNS look-ups.
                "UsePAM no",
                "UseDNS no",
                "StrictModes no",
                f"MaxSessions {max_sessions}",
                # bench/files compares with sftp (in-process server: no extra exec).
                "Subsystem sftp internal-sftp",
                "MaxStartups 200",
                f"PidFile {workdir / 'sshd.pid'}",
                "LogLevel ERROR",
            ]
        )
        + "\n"
    )
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    control = workdir / "mux.sock"
    ssh = [
        "ssh",
        "-q",
        "-p",
        str(port),
        "-i",
        str(client_key),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        f"ControlPath={control}",
        "-o",
        "ControlMaster=auto",
        "-o",
        "ControlPersist=600",
        f"{user}@127.0.0.1",
    ]
    try:
        deadline = time.monotonic() + 20
        while subprocess.run([*ssh, "true"], check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise RuntimeError("sshd did not come up")
            time.sleep(0.1)
        yield ssh
    finally:
        subprocess.run([*ssh[:-1], "-O", "exit", ssh[-1]], check=False, capture_output=True)
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(workdir, ignore_errors=True)
