"""The sudo decision server on a real unix socket, without sudo: the caller is this test
process (identified by the kernel), its own process session is registered or not."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fleetgate.agent.audit import AuditLog
from fleetgate.agent.config import SudoConfig
from fleetgate.agent.sudo import Decided, SudoDecisionServer, SudoSessions, server as sudo_server
from fleetgate.agent.sudo.proc import identify, trusted_realpath
from fleetgate.shared.protocol import GrantClaims
from tests.support.users import require_root


class Served:
    def __init__(self, path: Path, sessions: SudoSessions, audit: Path) -> None:
        self.path, self.sessions, self.audit_path = path, sessions, audit
        self.decided: list[Decided] = []

    async def ask(self, data: bytes) -> bytes:
        """Send ``data`` as the plugin would; return everything the server answers."""

        def exchange() -> bytes:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(10)
                sock.connect(str(self.path))
                chunks = []
                try:
                    sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)
                    while chunk := sock.recv(65536):
                        chunks.append(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the server hung up on an oversized request
                return b"".join(chunks)

        return await asyncio.to_thread(exchange)

    def audit(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]


def request(*argv: str, **fields: object) -> bytes:
    body: dict[str, object] = {
        "v": 1,
        "command": f"/usr/bin/{argv[0]}",
        "argv": list(argv),
        "runas_uid": 0,
        "runas_gid": 0,
        "shell": False,
        "sudoedit": False,
    }
    body.update(fields)
    return json.dumps(body).encode() + b"\n"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    require_root()
    sessions = SudoSessions()
    audit = AuditLog(tmp_path / "audit.log")
    audit.open()
    result = Served(tmp_path / "run" / "sudo.sock", sessions, tmp_path / "audit.log")

    async def on_decided(decided: Decided) -> None:
        result.decided.append(decided)

    server = SudoDecisionServer(
        result.path,
        sessions,
        SudoConfig(group="nonexistent-grp"),
        audit=audit,
        on_decided=on_decided,
    )
    server.bind()
    task = asyncio.create_task(server.serve())
    try:
        yield result
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        audit.close()
    assert not result.path.exists()  # removed when the server ends


def claims(**changes: object) -> GrantClaims:
    server = uuid.uuid4()
    fields: dict[str, object] = {
        "command_id": uuid.uuid4(),
        "server_id": server,
        "auth": "work_session",
        "work_session": "ws-test",
        "assignee": "alice",
        "scopes": ["sudo"],
        "servers": [server],
        "not_before": 0,
        "expires_at": 4_000_000_000,
        "sudo": ["id -u"],
        "content": "0" * 64,
    }
    fields.update(changes)
    return GrantClaims.model_validate(fields)


@pytest.mark.root
async def test_socket_is_root_only(served: Served) -> None:
    mode = served.path.stat().st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600


@pytest.mark.root
async def test_managed_session_by_kernel_identity(served: Served) -> None:
    served.sessions.register(os.getsid(0), claims(), label="websh t-1")
    assert await served.ask(request("id", "-u")) == b"allow allowed allowed by pattern 'id -u'\n"
    reply = await served.ask(request("id", "-un"))
    assert reply.startswith(b"deny sudo_pattern_not_allowed ")
    # What the client says about itself is ignored: the kernel said who it is.
    reply = await served.ask(request("id", "-u", caller_uid=1234, sid=1))
    assert reply.startswith(b"allow ")
    served.sessions.end_work_session("ws-test")
    assert (await served.ask(request("id", "-u"))).startswith(b"deny work_session_ended ")
    assert [d.verdict.code for d in served.decided] == [
        "allowed",
        "sudo_pattern_not_allowed",
        "allowed",
        "work_session_ended",
    ]
    entries = [e for e in served.audit() if e["event"] == "sudo.decision"]
    assert [e["code"] for e in entries][-1] == "work_session_ended"
    assert entries[0]["sid"] == os.getsid(0)
    assert entries[0]["work_session"] == "ws-test"
    assert entries[0]["session"] == "websh t-1"


@pytest.mark.root
async def test_unmanaged_session_allowed_by_default(served: Served) -> None:
    reply = await served.ask(request("rm", "-rf", "/nothing"))
    assert reply.startswith(b"allow unmanaged_allowed ")
    assert served.decided == []  # no work session: audit only, no timeline report
    assert served.audit()[-1]["code"] == "unmanaged_allowed"


@pytest.mark.parametrize(
    "data",
    [
        b"not json\n",
        b"[1, 2]\n",
        b'{"command": "/usr/bin/id"}\n',
        b'{"command": "/usr/bin/id", "argv": ["id"], "runas_uid": "0", "runas_gid": 0}\n',
        b"\n",
        b"",
        b"x" * (70 * 1024),
    ],
    ids=["not-json", "not-object", "no-argv", "bad-uid", "empty-line", "nothing", "oversized"],
)
@pytest.mark.root
async def test_malformed_requests_get_no_answer(served: Served, data: bytes) -> None:
    # No answer is a refusal for the plugin (it fails closed); the server goes on.
    assert await served.ask(data) == b""
    assert (await served.ask(request("id", "-u"))).startswith(b"allow unmanaged_allowed ")


@pytest.mark.root
def test_trusted_realpath(tmp_path: Path) -> None:
    require_root()
    assert trusted_realpath("/usr/bin/../bin/id") == os.path.realpath("/usr/bin/id")
    assert trusted_realpath("/bin/sh") == os.path.realpath("/bin/sh")
    assert trusted_realpath("relative/id") is None
    assert trusted_realpath("/nonexistent/id") is None
    link = tmp_path / "link"
    link.symlink_to("/usr/bin/id")
    assert trusted_realpath(str(link)) is None  # under /tmp: world writable
    os.chmod(tmp_path, 0o755)
    owned = tmp_path / "owned"
    owned.mkdir(mode=0o755)
    (owned / "id").symlink_to("/usr/bin/id")
    os.lchown(owned / "id", 65534, 65534)
    assert trusted_realpath(str(owned / "id")) is None  # a link someone else owns


async def _connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_unix_connection(str(path))


@pytest.mark.root
async def test_request_in_pieces_is_answered(served: Served) -> None:
    # The first write has no end of line: the answer waits for the rest, in a task.
    served.sessions.register(os.getsid(0), claims(), label="websh t-2")
    reader, writer = await _connect(served.path)
    data = request("id", "-u")
    writer.write(data[:10])
    await writer.drain()
    await asyncio.sleep(0)  # let the server see the first piece alone, if it is quick
    writer.write(data[10:])
    await writer.drain()
    assert await reader.readline() == b"allow allowed allowed by pattern 'id -u'\n"
    writer.close()
    await writer.wait_closed()


@pytest.mark.root
async def test_silent_connections_are_bounded(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sudo_server, "IO_TIMEOUT", 60.0)  # longer than any wait below
    silent = [await _connect(served.path) for _ in range(sudo_server.MAX_CLIENTS)]
    # One more than the bound is closed at once (not after IO_TIMEOUT).
    reader, writer = await _connect(served.path)
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    # A request still gets its answer meanwhile.
    assert (await served.ask(request("id", "-u"))).startswith(b"allow unmanaged_allowed ")
    for reader, writer in silent:
        writer.write_eof()  # no request: the server closes its end at once
        assert await asyncio.wait_for(reader.read(), 10) == b""
        writer.close()
    assert (await served.ask(request("id", "-u"))).startswith(b"allow unmanaged_allowed ")


@pytest.mark.root
async def test_silent_connection_expires(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sudo_server, "IO_TIMEOUT", 0.3)
    reader, writer = await _connect(served.path)
    # Closed unanswered after IO_TIMEOUT (sudo refuses), not held open.
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    assert (await served.ask(request("id", "-u"))).startswith(b"allow unmanaged_allowed ")


@pytest.mark.root
async def test_cancel_closes_waiting_connections(tmp_path: Path) -> None:
    require_root()
    server = SudoDecisionServer(
        tmp_path / "sudo.sock", SudoSessions(), SudoConfig(group="nonexistent-grp")
    )
    server.bind()
    task = asyncio.create_task(server.serve())
    reader, writer = await _connect(server.path)
    # The server has accepted once it answers another client; then cancel it.
    answered = Served(server.path, server.sessions, tmp_path / "none")
    assert (await answered.ask(request("id", "-u"))).startswith(b"allow ")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed, not left open
    writer.close()
    assert not server.path.exists()


async def test_identify_stops_at_the_first_registered_session() -> None:
    own = os.getsid(0)
    assert identify(os.getpid(), 0, "root", until={own}.__contains__).sids == (own,)
    # Nothing registered: the whole ancestry's sessions, this process's first.
    walked = identify(os.getpid(), 0, "root").sids
    assert walked[0] == own
    assert os.getsid(os.getppid()) in walked
    child = await asyncio.create_subprocess_exec("true")
    await child.wait()
    with pytest.raises(OSError, match="gone"):
        identify(child.pid, 0, "root")
