"""The sudo decision server: the approval plugin inside ``sudo`` asks, the agent decides.

A Unix stream socket (``runtime_dir/sudo.sock``, 0600, root's): only root-side code (the
setuid ``sudo`` with its plugin) can connect. One request per connection: the plugin
writes one JSON line ``{"command", "argv", "runas_uid", "runas_gid", "shell",
"sudoedit"}`` and reads one line back, ``allow <code> <message>`` or
``deny <code> <message>``. The caller is identified by the kernel (``SO_PEERCRED`` pid,
then ``/proc``), never by what it sends. Every decision is written to the audit log, and
decisions about a work session are reported to the control plane for its timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from fleetgate.agent.audit import AuditLog
from fleetgate.agent.config import SudoConfig
from fleetgate.agent.errors import StateDirError
from fleetgate.agent.exec.idcache import NameCache, files_signature
from fleetgate.agent.localsocket import bind_private_socket, serve_clients
from fleetgate.agent.policy.sudo_decision import SessionGrant, SudoCall, SudoVerdict, decide
from fleetgate.agent.sudo import proc
from fleetgate.agent.sudo.registry import SudoSessions
from fleetgate.shared.jsontext import loads as json_loads
from fleetgate.shared.sudo_patterns import Resolver


__all__ = ["Decided", "SudoDecisionServer", "parse_request"]

log = structlog.get_logger(__name__)

MAX_CLIENTS = 32
MAX_REQUEST_BYTES = 64 * 1024
IO_TIMEOUT = 5.0
REGISTRATION_WAIT = 2.0


@dataclass(frozen=True, slots=True)
class Decided:
    """One decision with its context, handed to the reporter."""

    call: SudoCall
    caller: proc.Caller
    grant: SessionGrant | None
    verdict: SudoVerdict
    at: float


OnDecided = Callable[[Decided], Awaitable[None]]


class BadRequest(ValueError):
    """The plugin's request is not what it should be."""


def parse_request(data: bytes, *, caller_uid: int, caller_user: str) -> SudoCall:
    """The call described by the plugin's JSON line.

    Raises:
        BadRequest: not JSON, or a field missing or of the wrong type.
    """
    try:
        doc = json_loads(data)
    except ValueError:
        raise BadRequest("not JSON") from None
    if not isinstance(doc, dict):
        raise BadRequest("not a JSON object")
    command, argv = doc.get("command"), doc.get("argv")
    if not isinstance(command, str) or not command:
        raise BadRequest("command: a non-empty string is required")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise BadRequest("argv: a non-empty list of strings is required")
    ids = [doc.get("runas_uid"), doc.get("runas_gid")]
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise BadRequest("runas_uid, runas_gid: integers are required")
    return SudoCall(
        command=command,
        argv=tuple(argv),
        runas_uid=int(doc["runas_uid"]),
        runas_gid=int(doc["runas_gid"]),
        shell=doc.get("shell") is True,
        sudoedit=doc.get("sudoedit") is True,
        caller_uid=caller_uid,
        caller_user=caller_user,
    )


def _reply(verdict: SudoVerdict) -> bytes:
    word = "allow" if verdict.allowed else "deny"
    message = verdict.message.replace("\n", " ")[:1000]
    return f"{word} {verdict.code} {message}\n".encode()


class SudoDecisionServer:
    """Serves decisions on ``path`` until cancelled; removes the socket when it ends."""

    def __init__(
        self,
        path: Path,
        sessions: SudoSessions,
        config: SudoConfig,
        *,
        audit: AuditLog | None = None,
        on_decided: OnDecided | None = None,
    ) -> None:
        self.path = path
        self.sessions = sessions
        self._config = config
        self._audit = audit
        self._on_decided = on_decided
        self._resolver = Resolver.from_path(
            config.secure_path, proc.is_executable, proc.trusted_realpath
        )
        self._sock: socket.socket | None = None
        self._clients = asyncio.Semaphore(MAX_CLIENTS)
        self._names = NameCache()

    def bind(self) -> None:
        """Listen on the socket (0600) in the runtime directory (0700 when created).

        Raises:
            StateDirError: the socket cannot be made.
        """
        try:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # the status socket already proved no agent runs here
            sock = bind_private_socket(self.path, MAX_CLIENTS)
        except OSError as exc:
            raise StateDirError(f"sudo socket {self.path}: {exc.strerror or exc}") from exc
        self._sock = sock

    def close(self) -> None:
        """Stop listening (a bound socket that never served)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(OSError):
                self.path.unlink()

    async def serve(self) -> None:
        """Answer clients until cancelled, each in a task of an inner group."""
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        try:
            # A client refused for lack of room fails closed: refused, not hung.
            await serve_clients(self._sock, self._answer, clients=self._clients, name="sudo-client")
        finally:
            self.close()

    async def _answer(self, conn: socket.socket) -> None:
        async with self._clients:
            try:
                conn.setblocking(False)
                async with asyncio.timeout(IO_TIMEOUT):
                    data = await self._read_line(conn)
                    decided = await self._decide(conn, data)
                    await asyncio.get_running_loop().sock_sendall(conn, _reply(decided.verdict))
            except (OSError, TimeoutError, BadRequest) as exc:
                log.warning("sudo.request_failed", error=str(exc))
                return
            except Exception as exc:  # one bad request never stops the server
                # The plugin sees the connection close without an answer: refused.
                log.error("sudo.decision_failed", exc_info=exc)
                return
            finally:
                conn.close()
        self._record(decided)
        if self._on_decided is not None and decided.grant is not None:
            await self._on_decided(decided)

    async def _read_line(self, conn: socket.socket) -> bytes:
        loop = asyncio.get_running_loop()
        data = b""
        while b"\n" not in data:
            chunk = await loop.sock_recv(conn, 65536)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_REQUEST_BYTES:
                raise BadRequest("request too large")
        return data.split(b"\n", 1)[0]

    async def _decide(self, conn: socket.socket, data: bytes) -> Decided:
        """Identify the caller through the kernel and decide.

        In the event loop, without a thread hop: ``/proc`` and the stats of the pattern
        resolver are local and never wait for a device. Only the account database (NSS,
        which may be LDAP) runs in a thread, and a caller's user name is taken from a
        short-lived cache (:class:`~fleetgate.agent.exec.idcache.NameCache`) when fresh.
        """
        pid, peer_uid, _ = proc.peer_credentials(conn)
        if peer_uid != 0:
            raise BadRequest(f"peer uid {peer_uid} is not root")
        uid = proc.real_uid(pid)
        now, signature = time.monotonic(), files_signature()
        user = self._names.get(uid, now=now, signature=signature)
        if user is None:
            user = await asyncio.to_thread(proc.user_name, uid)
            self._names.put(uid, user, now=now, signature=signature)
        caller = proc.identify(pid, uid, user, until=self.sessions.known)
        call = parse_request(data, caller_uid=caller.uid, caller_user=caller.user)
        grant = await self._grant_of(caller)
        member = grant is None and await asyncio.to_thread(
            proc.fleet_member, caller.user, caller.uid, self._config.group
        )
        verdict = decide(
            grant,
            call,
            now=time.time(),
            unmanaged=self._config.unmanaged,
            fleet_member=member,
            resolver=self._resolver,
        )
        return Decided(call, caller, grant, verdict, time.time())

    async def _grant_of(self, caller: proc.Caller) -> SessionGrant | None:
        """The grant of the first managed session up the caller's ancestry.

        A session is registered just after its process was spawned; a sudo that wins
        that race (its session leader is our child, not registered yet) waits for the
        registration, briefly.
        """
        deadline = time.monotonic() + REGISTRATION_WAIT
        while True:
            for sid in caller.sids:
                if self.sessions.known(sid):
                    return self.sessions.lookup(sid)
            ours = any(proc.parent_of(sid) == os.getpid() for sid in caller.sids)
            if not ours or time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.01)

    def _record(self, d: Decided) -> None:
        fields: dict[str, Any] = {
            "allowed": d.verdict.allowed,
            "code": d.verdict.code,
            "reason": d.verdict.message,
            "user": d.caller.user,
            "uid": d.caller.uid,
            "pid": d.caller.pid,
            "sid": d.caller.sids[0] if d.caller.sids else None,
            "command": d.call.command,
            "argv": list(d.call.argv),
            "runas_uid": d.call.runas_uid,
            "work_session": d.grant.work_session if d.grant else None,
            # Who the session's grant was issued to: the person behind this shell/command.
            "requested_by": d.grant.assignee if d.grant else None,
            "session": d.grant.label if d.grant else None,
        }
        log.info("sudo.decision", **{k: v for k, v in fields.items() if k != "argv"})
        if self._audit is not None:
            self._audit.record("sudo.decision", **fields)
