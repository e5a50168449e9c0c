"""``agentctl ssh-proxy SERVER``: OpenSSH's ``ProxyCommand``, stdin/stdout <-> an ssh channel.

OpenSSH starts one per connection (Ansible: one per task and host), so it must start
fast: it imports only the standard library and websockets' small synchronous client (no
pydantic, no httpx, no asyncio), reads the configuration file with ``tomllib`` and is
given the work session on its command line by ``agentctl ssh-config``. Two threads copy
bytes: stdin to binary frames (then ``{"type": "eof"}``), frames to stdout (``eof``:
close stdout). The pipes to and from ssh are widened to :data:`PIPE_BYTES` (Linux). A refusal is printed as ``fleetgate: <detail> (<code>)`` on stderr, and the
exit status is 255, as ssh's own for a failed connection.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import tomllib
from pathlib import Path
from urllib.parse import quote, urlencode


__all__ = ["main"]

READ_BYTES = 256 * 1024
PIPE_BYTES = 1024 * 1024
"""ssh writes one SSH packet (about 32 KiB in bulk transfers) at a time; through the
default 64 KiB pipe every read became a frame of one or two packets, each costing its
own send, relay and receive in ssh-proxy, the control plane and the agent. With 1 MiB
(Linux's default ``fs.pipe-max-size``) a read takes what ssh wrote meanwhile, up to
:data:`READ_BYTES`: an upload through it took about 30 % less CPU in all."""
EXIT_FAILED = 255
_EOF = json.dumps({"type": "eof"})


def _config(path: str | None) -> tuple[str, str, bool, str | None]:
    """``(url, token, verify_tls, ca_file)`` from the file and the environment."""
    env = os.environ
    if path is None:
        path = env.get("AGENTCTL_CONFIG")
    if path is None:
        xdg = env.get("XDG_CONFIG_HOME")
        base = Path(xdg) if xdg else Path(env.get("HOME") or Path.home()) / ".config"
        path = str(base / "agentctl" / "config.toml")
    try:
        data = tomllib.loads(Path(path).expanduser().read_text(encoding="utf-8"))
    except FileNotFoundError:
        data = {}
    except (OSError, ValueError) as exc:
        raise SystemExit(_fail(f"cannot read config {path}: {exc}")) from None
    url = env.get("AGENTCTL_URL") or data.get("url")
    token = env.get("AGENTCTL_TOKEN") or data.get("token")
    if not url or not token:
        raise SystemExit(_fail("not logged in: run `agentctl login` first"))
    return str(url).rstrip("/"), str(token), bool(data.get("verify_tls", True)), data.get("ca_file")


def _fail(message: str) -> int:
    sys.stderr.write(f"fleetgate: {message}\n")
    sys.stderr.flush()
    return EXIT_FAILED


def _parse(argv: list[str]) -> tuple[str, str, str | None, str | None]:
    """``(server, user, work_session, config)`` from ``[--user U] [--work-session W]
    [--config PATH] SERVER`` (a hand parser: argparse costs start-up time)."""
    user = work_session = config = None
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg in ("--user", "-l", "--work-session", "--config"):
            value = next(args, None)
            if value is None:
                raise SystemExit(_fail(f"{arg} needs a value"))
            if arg in ("--user", "-l"):
                user = value
            elif arg == "--work-session":
                work_session = value
            else:
                config = value
        elif arg.startswith("-"):
            raise SystemExit(_fail(f"unknown option {arg}"))
        else:
            rest.append(arg)
    if len(rest) != 1:
        raise SystemExit(
            _fail("usage: agentctl ssh-proxy [--user USER] [--work-session ID] SERVER")
        )
    return rest[0], user or os.environ.get("USER", "root"), work_session, config


def main(argv: list[str] | None = None) -> int:
    """Relay one SSH connection; returns the exit status."""
    server, user, work_session, config_file = _parse(list(sys.argv[2:] if argv is None else argv))
    url, token, verify, ca_file = _config(config_file)
    work_session = work_session or os.environ.get("AGENTCTL_WORK_SESSION")
    _widen_pipes()

    from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
    from websockets.sync.client import connect

    scheme, rest = url.split("://", 1)
    ws_url = f"{'wss' if scheme == 'https' else 'ws'}://{rest}/ws/ssh/{quote(server, safe='')}/"
    ws_url += "?" + urlencode({"user": user})
    headers = {"Authorization": f'token="{token}"'}
    if work_session:
        headers["X-Work-Session"] = work_session
    ssl_context = None
    if scheme == "https":
        import ssl

        try:
            ssl_context = ssl.create_default_context(cafile=ca_file)
        except OSError as exc:  # ssl.SSLError is an OSError too
            return _fail(f"cannot load ca_file {ca_file}: {exc.strerror or exc}")
        if not verify:
            ssl_context.check_hostname = False
            ssl_context.verify_mode = ssl.CERT_NONE
    try:
        ws = connect(
            ws_url,
            additional_headers=headers,
            ssl=ssl_context,
            open_timeout=30,
            max_size=16 * 1024 * 1024,
            compression=None,
            close_timeout=5,
        )
    except InvalidStatus as exc:
        return _fail(_answer(exc.response.status_code, bytes(exc.response.body or b"")))
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        from fleetgate.shared.tlserrors import describe_tls_error

        return _fail(f"cannot reach {url}: {describe_tls_error(exc, ca_file) or exc}")
    # SFTP and the SSH handshake are request/response: small packets must not wait for
    # a delayed ACK (Nagle), or every round trip costs tens of milliseconds.
    import socket

    ws.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    status = {"code": 0}

    def upstream() -> None:
        stdin = sys.stdin.buffer.raw if hasattr(sys.stdin.buffer, "raw") else sys.stdin.buffer
        try:
            while data := os.read(stdin.fileno(), READ_BYTES):
                ws.send(data)
            ws.send(_EOF)
        except (ConnectionClosed, OSError):
            return

    sender = threading.Thread(target=upstream, daemon=True)
    sender.start()
    out = sys.stdout.buffer
    try:
        for message in ws:
            if isinstance(message, bytes):
                out.write(message)
                out.flush()
                continue
            frame = json.loads(message)
            if frame.get("type") == "eof":
                out.close()
            elif frame.get("type") == "error":
                status["code"] = _fail(f"{frame.get('message')} ({frame.get('code')})")
    except ConnectionClosed:
        pass
    except OSError:
        status["code"] = EXIT_FAILED  # ssh went away: nothing to tell it
    rcvd = ws.protocol.close_rcvd
    if rcvd is not None and rcvd.code not in (1000, 1001):
        status["code"] = _fail(_reason(rcvd.code, rcvd.reason))
    ws.close()
    return status["code"]


def _widen_pipes() -> None:
    """Give stdin and stdout :data:`PIPE_BYTES` of buffer when they are pipes (as ssh
    makes them); anything else (a terminal, a socket, another OS, a lower limit) keeps
    its size: only throughput depends on it."""
    setpipe = getattr(fcntl, "F_SETPIPE_SZ", None)
    if setpipe is None:
        return
    for fd in (0, 1):
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, setpipe, PIPE_BYTES)


def _answer(status: int, body: bytes) -> str:
    try:
        data = json.loads(body)
        return f"{data['detail']} ({data['code']})"
    except (ValueError, KeyError, TypeError):
        return f"the control plane refused the connection (HTTP {status})"


def _reason(code: int, reason: str) -> str:
    try:
        data = json.loads(reason)
        return f"{data['detail']} ({data['code']})"
    except (ValueError, KeyError, TypeError):
        return f"the channel closed ({code} {reason})".strip()
