"""sd_notify datagrams and the watchdog, against sockets the tests bind themselves."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetgate.agent.system.notify import SystemdNotifier, watchdog_interval
from tests.support.waiting import eventually


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket bound on a path, playing systemd's notify socket."""
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield str(path), sock
    sock.close()


def drain(sock: socket.socket) -> list[str]:
    """Every datagram already queued on ``sock`` (without waiting)."""
    messages: list[str] = []
    sock.setblocking(False)
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            return messages


def test_watchdog_interval_is_half_of_watchdog_usec() -> None:
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "soon"}) is None
    # Meant for another process (inherited by a child): not ours to ping.
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    notifier.ready("connected")
    notifier.stopping()
    notifier.close()


def test_messages_reach_a_path_socket_in_order(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    notifier = SystemdNotifier({"NOTIFY_SOCKET": path})
    notifier.status("connecting to x")
    notifier.ready("connected to x")
    notifier.ready("reconnecting to x: refused")  # READY only once; then a status update
    notifier.stopping("stopping: waiting for 0 command(s)")
    notifier.close()
    assert drain(sock) == [
        "STATUS=connecting to x",
        "READY=1\nSTATUS=connected to x",
        "STATUS=reconnecting to x: refused",
        "STOPPING=1\nSTATUS=stopping: waiting for 0 command(s)",
    ]


def test_abstract_namespace_socket() -> None:
    name = f"fleetgate-agent-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    try:
        notifier = SystemdNotifier({"NOTIFY_SOCKET": f"@{name}"})
        notifier.ready("connected")
        notifier.close()
        assert drain(sock) == ["READY=1\nSTATUS=connected"]
    finally:
        sock.close()


def test_a_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = SystemdNotifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    notifier.ready("connected")  # logged, not raised
    notifier.close()


async def test_watchdog_pings_resume_after_the_event_loop_was_blocked(
    notify_socket: tuple[str, socket.socket],
) -> None:
    """Pings come from the event loop itself, at half the watchdog period: a hung loop
    (here blocked on purpose) pings again as soon as it runs again."""
    path, sock = notify_socket
    notifier = SystemdNotifier(
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "40000"}
    )  # ping every 20 ms
    assert notifier.watchdog_interval == pytest.approx(0.02)
    received: list[str] = []

    def pings() -> int:
        received.extend(drain(sock))
        return received.count("WATCHDOG=1")

    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(notifier.watchdog())
        await eventually(lambda: pings() >= 2, 5, "two watchdog pings")
        time.sleep(0.2)  # noqa: ASYNC251 - a hung loop: blocking it is the point
        seen = pings()
        await eventually(lambda: pings() > seen, 5, "a ping after the loop ran again")
        task.cancel()
    notifier.close()
