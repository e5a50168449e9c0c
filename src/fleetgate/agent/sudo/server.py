"""The sudo decision server: the approval plugin inside ``sudo`` asks, the agent decides.

A Unix stream socket (``runtime_dir/sudo.sock``, 0600, root's): only root-side code (the
setuid ``sudo`` with its plugin) can connect. One request per connection, one line each
way (:mod:`fleetgate.agent.sudo.request`). The caller is identified by the kernel
(:mod:`fleetgate.agent.sudo.callers`), never by what it sends. Every decision is written to
the audit log, and decisions about a work session are reported to the control plane for
its timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import structlog

from fleetgate.agent.audit import AuditLog
from fleetgate.agent.config import SudoConfig
from fleetgate.agent.errors import StateDirError
from fleetgate.agent.localsocket import bind_private_socket
from fleetgate.agent.policy.sudo_decision import SessionGrant, SudoCall, SudoVerdict, decide
from fleetgate.agent.sudo import proc
from fleetgate.agent.sudo.callers import Callers
from fleetgate.agent.sudo.registry import SudoSessions
from fleetgate.agent.sudo.request import MAX_REQUEST_BYTES, BadRequest, parse_request, reply_line
from fleetgate.shared.sudo_patterns import Resolver


__all__ = ["Decided", "SudoDecisionServer"]

log = structlog.get_logger(__name__)

MAX_CLIENTS = 32
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


OnDecided = Callable[[Decided], Coroutine[Any, Any, None]]


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
        self._callers = Callers(sessions.known)
        # Accepted connections whose request has not arrived: their expiry timers.
        self._waiting: dict[socket.socket, asyncio.TimerHandle] = {}

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
        """Answer clients until cancelled.

        Sudo waits on every answer, so the usual request is answered in a reader callback,
        with no task and no extra loop turn between its arrival and the answer: on
        ``accept`` if it is there already, else when the connection becomes readable
        (:meth:`_answer_at_once`). A request that needs to wait (an account lookup, a
        session registering, an unmanaged caller's group membership, a request in
        pieces) is answered by a task of an inner group. At most ``MAX_CLIENTS``
        connections wait for their request and as many tasks answer; one more is closed
        unanswered, which sudo takes as a refusal (it fails closed, never hangs).
        """
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        fd = self._sock.fileno()
        try:
            async with asyncio.TaskGroup() as tg:
                loop.add_reader(fd, self._accept_ready, tg)
                try:
                    await loop.create_future()  # until cancelled
                finally:
                    loop.remove_reader(fd)
                    for conn in list(self._waiting):
                        self._stop_waiting(conn).close()
        finally:
            self.close()

    def _accept_ready(self, tg: asyncio.TaskGroup) -> None:
        """The listening socket's reader: accept what is waiting (a bounded number per
        call, so a flood cannot hold the loop) and answer at once what can be."""
        assert self._sock is not None
        for _ in range(MAX_CLIENTS):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors: the backlog waits for the next call
                log.warning("sudo.accept_failed", error=str(exc))
                return
            conn.setblocking(False)
            self._go_on(conn, tg, arrived=False)

    def _go_on(self, conn: socket.socket, tg: asyncio.TaskGroup, *, arrived: bool) -> None:
        """Answer ``conn`` at once, or wait for its request, or hand it to a task."""
        pending = self._answer_at_once(conn, tg)
        if pending is None:
            return
        head, caller = pending
        if not head and not arrived:
            # The plugin's connect() woke us before its request landed: wait for it in
            # the loop's reader, bounded in number and time like a task.
            if len(self._waiting) >= MAX_CLIENTS:
                conn.close()
                return
            loop = asyncio.get_running_loop()
            loop.add_reader(conn.fileno(), self._arrived, conn, tg)
            self._waiting[conn] = loop.call_later(IO_TIMEOUT, self._expired, conn)
            return
        if self._clients.locked():
            conn.close()
            return
        tg.create_task(self._answer(conn, head, caller), name="sudo-client")

    def _arrived(self, conn: socket.socket, tg: asyncio.TaskGroup) -> None:
        self._stop_waiting(conn)
        self._go_on(conn, tg, arrived=True)

    def _expired(self, conn: socket.socket) -> None:
        log.warning("sudo.request_failed", error="no request in time")
        self._stop_waiting(conn).close()

    def _stop_waiting(self, conn: socket.socket) -> socket.socket:
        asyncio.get_running_loop().remove_reader(conn.fileno())
        self._waiting.pop(conn).cancel()
        return conn

    def _answer_at_once(
        self, conn: socket.socket, tg: asyncio.TaskGroup
    ) -> tuple[bytes, proc.Caller | None] | None:
        """Answer ``conn`` now if nothing needs waiting for: the request arrived whole,
        the caller's name is cached, its session is registered with a grant. None when
        it was answered (or refused: closed unanswered); otherwise what was read of the
        request and the caller if known, for :meth:`_answer` to go on with."""
        try:
            head = conn.recv(MAX_REQUEST_BYTES + 1)
        except (BlockingIOError, InterruptedError):
            return b"", None  # nothing arrived yet
        except OSError as exc:
            log.warning("sudo.request_failed", error=str(exc))
            conn.close()
            return None
        if not head:
            log.warning("sudo.request_failed", error="closed without a request")
            conn.close()
            return None
        if b"\n" not in head:
            return head, None
        try:
            caller = self._callers.cached(conn)
            grant = None if caller is None else self._registered_grant(caller)
            if caller is None or grant is None:
                return head, caller
            decided = self._verdict(caller, head.split(b"\n", 1)[0], grant, fleet_member=False)
            reply = reply_line(decided.verdict)
            # A fresh socket's buffer takes the short answer whole; less would leave sudo
            # half a line, so that is a failure (refused), not a retry.
            if conn.send(reply) != len(reply):
                raise OSError("the answer did not fit the socket's buffer")
        except (OSError, BadRequest) as exc:
            log.warning("sudo.request_failed", error=str(exc))
            conn.close()
            return None
        except Exception as exc:  # one bad request never stops the server
            log.error("sudo.decision_failed", exc_info=exc)
            conn.close()
            return None
        conn.close()
        self._record(decided)
        if self._on_decided is not None:
            tg.create_task(self._on_decided(decided), name="sudo-report")
        return None

    async def _answer(self, conn: socket.socket, head: bytes, caller: proc.Caller | None) -> None:
        """Answer ``conn`` in its own task: ``head`` is what was read of its request."""
        async with self._clients:
            try:
                async with asyncio.timeout(IO_TIMEOUT):
                    line = await self._read_line(conn, head)
                    if caller is None:
                        caller = await self._callers.look_up(conn)
                    grant = await self._grant_of(caller)
                    member = grant is None and await asyncio.to_thread(
                        proc.fleet_member, caller.user, caller.uid, self._config.group
                    )
                    decided = self._verdict(caller, line, grant, fleet_member=member)
                    await asyncio.get_running_loop().sock_sendall(conn, reply_line(decided.verdict))
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

    async def _read_line(self, conn: socket.socket, head: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        data = head
        while b"\n" not in data:
            if len(data) > MAX_REQUEST_BYTES:
                raise BadRequest("request too large")
            chunk = await loop.sock_recv(conn, 65536)
            if not chunk:
                break
            data += chunk
        return data.split(b"\n", 1)[0]

    def _registered_grant(self, caller: proc.Caller) -> SessionGrant | None:
        """The grant of the first registered session up the caller's ancestry (None:
        none registered, or registered without a work session)."""
        for sid in caller.sids:
            if self.sessions.known(sid):
                return self.sessions.lookup(sid)
        return None

    async def _grant_of(self, caller: proc.Caller) -> SessionGrant | None:
        """The grant of the first managed session up the caller's ancestry.

        A session is registered just after its process was spawned; a sudo that wins
        that race (its session leader is our child, not registered yet) waits for the
        registration, briefly.
        """
        deadline = time.monotonic() + REGISTRATION_WAIT
        while True:
            if any(self.sessions.known(sid) for sid in caller.sids):
                return self._registered_grant(caller)
            ours = any(proc.parent_of(sid) == os.getpid() for sid in caller.sids)
            if not ours or time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.01)

    def _verdict(
        self, caller: proc.Caller, line: bytes, grant: SessionGrant | None, *, fleet_member: bool
    ) -> Decided:
        """Decide the request ``line`` of ``caller``.

        Raises:
            BadRequest: the line is not a request.
        """
        call = parse_request(line, caller_uid=caller.uid, caller_user=caller.user)
        # One decision resolves the same paths more than once (the pattern's command and
        # the call's): each is checked once per decision, never across decisions.
        resolver = replace(self._resolver, realpath=functools.cache(proc.trusted_realpath))
        verdict = decide(
            grant,
            call,
            now=time.time(),
            unmanaged=self._config.unmanaged,
            fleet_member=fleet_member,
            resolver=resolver,
        )
        return Decided(call, caller, grant, verdict, time.time())

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
