"""The sudo decision server on a real unix socket, without sudo: the caller is this test
process or a child of it (identified by the kernel), its process session registered or not."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import shutil
import socket
import stat
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from fleetgate.agent.audit import AuditLog
from fleetgate.agent.config.access import SudoConfig
from fleetgate.agent.sudo import Decided, SudoDecisionServer, SudoSessions, server as sudo_server
from fleetgate.agent.sudo.proc import identify, trusted_realpath
from fleetgate.shared.protocol import GrantClaims
from tests.support.users import require_root


class Served:
    def __init__(self, path: Path, sessions: SudoSessions, audit: Path) -> None:
        self.path, self.sessions, self.audit_path = path, sessions, audit
        self.decided: list[Decided] = []

    async def ask(self, data: bytes) -> bytes:
        """Send ``data`` as the plugin does; return the server's answer."""
        return await asyncio.to_thread(exchange, self.path, data)

    def audit(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.audit_path.read_text().splitlines()]


def exchange(path: Path, data: bytes) -> bytes:
    """One datagram each way, as the plugin does: from a socket with an address of its own
    (autobind, abstract), connected to the server's."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(10)
        sock.bind("")
        sock.connect(str(path))
        sock.send(data)
        return sock.recv(65536)


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


@pytest.fixture
def tools() -> Iterator[Path]:
    """A directory only root can change, with ``tool -> /usr/bin/id`` (/tmp is anyone's)."""
    path = Path(f"/run/fleetgate-test-{uuid.uuid4().hex}")
    path.mkdir(mode=0o755)
    try:
        os.chmod(path, 0o755)
        (path / "tool").symlink_to("/usr/bin/id")
        yield path
    finally:
        shutil.rmtree(path)


@pytest.mark.root
async def test_a_path_that_became_changeable_is_refused_at_the_next_call(
    served: Served, tools: Path
) -> None:
    # The pattern's command was resolved at the first call and is reused for a while;
    # the call's own path is checked at every call, so a directory root opened to others
    # (someone could now swap the link sudo would execute) refuses the very next call.
    served.sessions.register(os.getsid(0), claims(sudo=[f"{tools}/tool -u"]), label="t")
    ask = request("tool", "-u", command=f"{tools}/tool")
    assert (await served.ask(ask)).startswith(b"allow allowed ")
    os.chmod(tools, 0o777)
    assert (await served.ask(ask)).startswith(b"deny sudo_pattern_not_allowed ")
    os.chmod(tools, 0o755)
    os.unlink(tools / "tool")
    os.symlink("/usr/bin/whoami", tools / "tool")  # root's own swap: refused at once too
    assert (await served.ask(ask)).startswith(b"deny sudo_pattern_not_allowed ")


@pytest.mark.root
async def test_unmanaged_session_allowed_by_default(served: Served) -> None:
    reply = await served.ask(request("rm", "-rf", "/nothing"))
    assert reply.startswith(b"allow unmanaged_allowed ")
    assert served.decided == []  # no work session: audit only, no timeline report
    assert served.audit()[-1]["code"] == "unmanaged_allowed"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"not json\n", b"not JSON"),
        (b"[1, 2]\n", b"not a JSON object"),
        (b'{"command": "/usr/bin/id"}\n', b"argv: "),
        (
            b'{"command": "/usr/bin/id", "argv": ["id"], "runas_uid": "0", "runas_gid": 0}\n',
            b"runas_uid",
        ),
        (b"\n", b"not JSON"),
        (b"", b"not JSON"),
        (b"x" * (70 * 1024), b"larger than 65536 bytes"),
    ],
    ids=["not-json", "not-object", "no-argv", "bad-uid", "empty-line", "nothing", "oversized"],
)
@pytest.mark.root
async def test_malformed_requests_are_refused_with_the_reason(
    served: Served, data: bytes, reason: bytes
) -> None:
    # sudo waits for an answer: it gets a refusal saying why, and the server goes on.
    reply = await served.ask(data)
    assert reply.startswith(b"deny sudo_request_invalid ")
    assert reason in reply
    assert reply.endswith(b"\n")
    assert reply.count(b"\n") == 1
    assert (await served.ask(request("id", "-u"))).startswith(b"allow unmanaged_allowed ")


@pytest.mark.root
async def test_caller_is_the_real_uid_the_kernel_gives(served: Served) -> None:
    # As sudo does: real uid the user's, effective uid root (so it may use the 0600
    # socket); what it claims in the request changes nothing.
    code = (
        "import os, sys\n"
        "from tests.integration.agent.test_sudo_server import exchange, request\n"
        "from pathlib import Path\n"
        "os.setresuid(65534, 0, 0)\n"
        "data = request('id', '-u', caller_uid=0, caller_user='root')\n"
        "sys.stdout.buffer.write(exchange(Path(sys.argv[1]), data))\n"
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code, str(served.path), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(child.communicate(), 30)
    assert out.startswith(b"allow unmanaged_allowed ")
    entry = served.audit()[-1]
    assert (entry["uid"], entry["user"], entry["pid"]) == (
        65534,
        pwd.getpwuid(65534).pw_name,
        child.pid,
    )


@pytest.mark.root
async def test_only_the_agent_can_answer_the_plugin(served: Served) -> None:
    # The plugin's socket is connected to the agent's: the kernel refuses a forged answer
    # sent by anyone else to its (guessable) abstract address.
    def forge_then_ask() -> bytes:
        with (
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as plugin,
            socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as forger,
        ):
            plugin.bind("")
            plugin.connect(str(served.path))
            with pytest.raises(PermissionError):
                forger.sendto(b"allow allowed forged\n", plugin.getsockname())
            plugin.settimeout(10)
            plugin.send(request("id", "-u"))
            return plugin.recv(65536)

    assert (await asyncio.to_thread(forge_then_ask)).startswith(b"allow unmanaged_allowed ")


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


@pytest.mark.root
async def test_a_request_with_no_address_is_dropped(served: Served) -> None:
    # Nowhere to answer (an unbound sender): logged and dropped, the server goes on.
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unbound:
        unbound.sendto(request("id", "-u"), str(served.path))
    assert (await served.ask(request("id", "-u"))).startswith(b"allow unmanaged_allowed ")
    assert [e["code"] for e in served.audit() if e["event"] == "sudo.decision"] == [
        "unmanaged_allowed"
    ]


@pytest.mark.root
async def test_waiting_requests_are_bounded(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A request that needs a task (here: an unmanaged caller's group membership) while
    # every task is taken is refused at once, not queued; one answered at once is not.
    served.sessions.register(os.getsid(0), claims(), label="websh t-3")
    allowed = b"allow allowed allowed by pattern 'id -u'\n"
    assert await served.ask(request("id", "-u")) == allowed  # the caller's name is cached
    monkeypatch.setattr(sudo_server, "MAX_CLIENTS", 0)
    assert await served.ask(request("id", "-u")) == allowed
    served.sessions.unregister(os.getsid(0))
    reply = await served.ask(request("id", "-u"))
    assert reply == b"deny sudo_agent_busy too many sudo calls are waiting\n"


@pytest.mark.root
async def test_an_unmanaged_caller_is_answered_at_once_once_known(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first call looks up the caller's name and group membership in a task; they are
    # cached, so the next one needs no task (there is none to be had here).
    allowed = b"allow unmanaged_allowed not a fleet session: sudoers decides\n"
    assert await served.ask(request("id", "-u")) == allowed
    monkeypatch.setattr(sudo_server, "MAX_CLIENTS", 0)
    assert await served.ask(request("id", "-u")) == allowed
    assert [e["code"] for e in served.audit() if e["event"] == "sudo.decision"] == [
        "unmanaged_allowed",
        "unmanaged_allowed",
    ]
    assert served.decided == []  # no work session: no timeline report


@pytest.fixture
def touch_account_files() -> Iterator[Callable[[], None]]:
    """Changes the account files' signature (the mtime of /etc/nsswitch.conf, by one
    nanosecond); the original times come back at the end."""
    path = "/etc/nsswitch.conf"
    before = os.stat(path)
    bumps = [0]

    def touch() -> None:
        bumps[0] += 1
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + bumps[0]))

    try:
        yield touch
    finally:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.mark.root
async def test_a_work_session_call_is_answered_before_the_account_files_are_checked(
    served: Served, monkeypatch: pytest.MonkeyPatch, touch_account_files: Callable[[], None]
) -> None:
    # Its decision does not depend on the caller's name: after a change of the account
    # files it is still answered at once (no task to be had here), named as known
    # before; the files are checked after the answer, so the next call looks the name
    # up again (it needs a task, refused here as busy).
    served.sessions.register(os.getsid(0), claims(), label="websh t-4")
    allowed = b"allow allowed allowed by pattern 'id -u'\n"
    assert await served.ask(request("id", "-u")) == allowed  # looks the name up
    monkeypatch.setattr(sudo_server, "MAX_CLIENTS", 0)
    assert await served.ask(request("id", "-u")) == allowed
    touch_account_files()
    assert await served.ask(request("id", "-u")) == allowed
    reply = await served.ask(request("id", "-u"))
    assert reply == b"deny sudo_agent_busy too many sudo calls are waiting\n"
    me = pwd.getpwuid(os.getuid()).pw_name
    entries = [e for e in served.audit() if e["event"] == "sudo.decision"]
    assert [(e["code"], e["user"]) for e in entries] == [("allowed", me)] * 3


@pytest.mark.root
async def test_an_unmanaged_call_checks_the_account_files_first(
    served: Served, monkeypatch: pytest.MonkeyPatch, touch_account_files: Callable[[], None]
) -> None:
    # Outside the agent's sessions the decision depends on the account database (the
    # fleet group's members are refused): a change of the files is seen before answering.
    allowed = b"allow unmanaged_allowed not a fleet session: sudoers decides\n"
    assert await served.ask(request("id", "-u")) == allowed
    monkeypatch.setattr(sudo_server, "MAX_CLIENTS", 0)
    assert await served.ask(request("id", "-u")) == allowed
    touch_account_files()
    reply = await served.ask(request("id", "-u"))
    assert reply == b"deny sudo_agent_busy too many sudo calls are waiting\n"


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
