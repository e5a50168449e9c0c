"""HAProxy (Debian's ``haproxy``) in front of control-plane replicas, for the tests and
the fleet bench: the configuration is written here, TLS terminated by HAProxy with a
certificate of a throw-away CA (``tests/support/tls.py``), the replicas behind it plain.

Usage::

    with running_haproxy(tmp_path / "lb", [("a", 8001), ("b", 8002)], tls=(cert, key)) as lb:
        lb.url  # https://127.0.0.1:PORT

Health checks every 200 ms (one failure marks a replica down, two successes up again)
and ``option redispatch``: a connection to a dead replica is retried on another one.
"""

from __future__ import annotations

import resource
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import end_process


__all__ = ["HAProxy", "HAProxyUnavailable", "haproxy_config", "running_haproxy"]

START_TIMEOUT = 15.0


class HAProxyUnavailable(RuntimeError):
    """The machine has no ``haproxy`` binary (apt-get install haproxy)."""


@dataclass
class HAProxy:
    """A running HAProxy: its URL and process."""

    url: str
    port: int
    process: subprocess.Popen[bytes]
    config: Path


def haproxy_config(
    port: int, backends: Sequence[tuple[str, int]], *, pem: Path | None, maxconn: int = 20_000
) -> str:
    """The configuration: one frontend on ``127.0.0.1:port`` (TLS with ``pem``: the
    certificate then its key), one backend of ``(name, port)`` replicas on loopback."""
    bind = f"bind 127.0.0.1:{port}" + (f" ssl crt {pem}" if pem is not None else "")
    proto = "https" if pem is not None else "http"
    servers = "\n".join(
        f"    server {name} 127.0.0.1:{p} check inter 200 fall 1 rise 2" for name, p in backends
    )
    return f"""global
    maxconn {maxconn}

defaults
    mode http
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    timeout http-request 10s
    option redispatch
    retries 3
    option forwardfor

frontend fleet
    {bind}
    http-request set-header X-Forwarded-Proto {proto}
    default_backend replicas

backend replicas
    balance roundrobin
{servers}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def running_haproxy(
    workdir: Path,
    backends: Sequence[tuple[str, int]],
    *,
    tls: tuple[Path, Path] | None = None,
    maxconn: int = 4_000,
) -> Iterator[HAProxy]:
    """Start HAProxy in front of ``backends``; ``tls`` is ``(cert, key)`` to terminate.

    ``maxconn`` is capped by the open-files limit (HAProxy needs two descriptors per
    connection: client and replica side)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY:
        maxconn = min(maxconn, (hard - 200) // 2)
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not Path(binary).exists():
        raise HAProxyUnavailable("haproxy not found (apt-get install haproxy)")
    workdir.mkdir(parents=True, exist_ok=True)
    pem = None
    if tls is not None:
        pem = workdir / "frontend.pem"
        pem.touch(mode=0o600)
        pem.write_bytes(tls[0].read_bytes() + tls[1].read_bytes())
    port = _free_port()
    config = workdir / "haproxy.cfg"
    config.write_text(haproxy_config(port, backends, pem=pem, maxconn=maxconn), encoding="utf-8")
    log = (workdir / "haproxy.log").open("ab")
    process = subprocess.Popen(
        [binary, "-f", str(config), "-db"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                text = (workdir / "haproxy.log").read_text(errors="replace")[-4000:]
                raise RuntimeError(f"haproxy exited with {process.returncode}:\n{text}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("haproxy did not listen") from None
                time.sleep(0.02)
        scheme = "https" if tls is not None else "http"
        yield HAProxy(f"{scheme}://127.0.0.1:{port}", port, process, config)
    finally:
        end_process(process, timeout=10, crash=False)
        log.close()
