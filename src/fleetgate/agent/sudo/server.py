"""The sudo decision server: the approval plugin inside ``sudo`` asks, the agent decides.

A Unix datagram socket (``runtime_dir/sudo.sock``, 0600, root's): only root-side code (the
setuid ``sudo`` with its plugin) can send to it. One datagram each way: the plugin's
request (:mod:`fleetgate.agent.sudo.request`) from a socket of its own, connected to ours
so that nothing else can answer it, and the agent's answer back to that socket. The kernel
attaches the sender's pid and real uid to each datagram; the caller is identified from
them (:mod:`fleetgate.agent.sudo.callers`), never from what it sends. Every request is
answered, a malformed one with a refusal that says why: sudo waits for the answer. Every
decision is written to the audit log, and decisions about a work session are reported to
the control plane for its timeline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog

from fleetgate.agent.audit import AuditLog
from fleetgate.agent.config.access import SudoConfig
from fleetgate.agent.errors import StateDirError
from fleetgate.agent.localsocket import bind_private_datagram_socket
from fleetgate.agent.policy.sudo_decision import SessionGrant, SudoCall, SudoVerdict, decide
from fleetgate.agent.sudo import proc
from fleetgate.agent.sudo.callers import Callers
from fleetgate.agent.sudo.commands import CommandPaths
from fleetgate.agent.sudo.registry import SudoSessions
from fleetgate.agent.sudo.request import MAX_REQUEST_BYTES, BadRequest, parse_request, reply_line


__all__ = ["Decided", "SudoDecisionServer"]

log = structlog.get_logger(__name__)

MAX_CLIENTS = 32
"""Requests answered by tasks at once (those that wait: an account lookup, a session
registering, group membership); one more is refused at once."""
MAX_BATCH = 32
"""Datagrams read per wake-up, so that a flood cannot hold the loop."""
IO_TIMEOUT = 5.0
REGISTRATION_WAIT = 2.0

_CREDENTIALS_SPACE = socket.CMSG_SPACE(proc.UCRED_SIZE)


@dataclass(frozen=True, slots=True)
class Decided:
    """One decision with its context, handed to the reporter."""

    call: SudoCall
    caller: proc.Caller
    grant: SessionGrant | None
    verdict: SudoVerdict
    at: float


OnDecided = Callable[[Decided], Coroutine[Any, Any, None]]
Address = str | bytes
_FAILED = reply_line(SudoVerdict(False, "sudo_decision_failed", "the agent failed to decide"))


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
        self._paths = CommandPaths(config.secure_path)
        self._sock: socket.socket | None = None
        self._callers = Callers(sessions.known, config.group)
        self._answering = 0  # tasks answering a request (at most MAX_CLIENTS)

    def bind(self) -> None:
        """Bind the socket (0600) in the runtime directory (0700 when created).

        Raises:
            StateDirError: the socket cannot be made.
        """
        try:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # the status socket already proved no agent runs here
            sock = bind_private_datagram_socket(self.path)
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
        """Answer requests until cancelled.

        Sudo waits on every answer, so the usual request is answered in the socket's
        reader callback, with no task and no extra loop turn between its arrival and the
        answer (:meth:`_received`). A request that needs to wait (an account lookup, a
        session registering, an unmanaged caller's group membership) is answered by a
        task of an inner group, at most ``MAX_CLIENTS`` at once; one more is refused.
        """
        if self._sock is None:
            self.bind()
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        fd = self._sock.fileno()
        try:
            async with asyncio.TaskGroup() as tg:
                loop.add_reader(fd, self._readable, tg)
                try:
                    await loop.create_future()  # until cancelled
                finally:
                    loop.remove_reader(fd)
        finally:
            self.close()

    def _readable(self, tg: asyncio.TaskGroup) -> None:
        """The socket's reader: a bounded number of requests per call."""
        assert self._sock is not None
        for _ in range(MAX_BATCH):
            try:
                data, ancdata, flags, address = self._sock.recvmsg(
                    MAX_REQUEST_BYTES + 1, _CREDENTIALS_SPACE
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("sudo.receive_failed", error=str(exc))
                return
            if not address:
                log.warning("sudo.request_failed", error="no address to answer to")
                continue
            self._received(data, ancdata, flags, address, tg)

    def _received(
        self,
        data: bytes,
        ancdata: list[tuple[int, int, bytes]],
        flags: int,
        address: Address,
        tg: asyncio.TaskGroup,
    ) -> None:
        """Answer a request now if nothing needs waiting for (the caller's name is cached,
        its session registered, or not one of the agent's, and then its name and its
        membership of the fleet group cached and current), else hand it to a task."""
        try:
            if flags & socket.MSG_TRUNC or len(data) > MAX_REQUEST_BYTES:
                raise BadRequest(f"the request is larger than {MAX_REQUEST_BYTES} bytes")
            who = proc.sender(ancdata)
            if who is None:
                raise BadRequest("the request came without its sender's credentials")
            caller = self._callers.cached(*who)
            settled, grant = (False, None) if caller is None else self._settled_grant(caller)
            member: bool | None = False
            if caller is not None and settled and grant is None:
                member = self._callers.cached_member(caller)
            if caller is None or not settled or member is None:
                self._hand_over(data, who, caller, address, tg)
                return
            decided = self._verdict(caller, data, grant, fleet_member=member)
        except Exception as exc:  # noqa: BLE001 - one bad request never stops the server
            self._refuse(address, exc)
            return
        self._answer_with(address, decided)
        if grant is not None:
            self._callers.check_name(caller.uid)  # after the answer: see Callers.cached
            if self._on_decided is not None:
                tg.create_task(self._on_decided(decided), name="sudo-report")

    def _hand_over(
        self,
        data: bytes,
        who: tuple[int, int],
        caller: proc.Caller | None,
        address: Address,
        tg: asyncio.TaskGroup,
    ) -> None:
        if self._answering >= MAX_CLIENTS:
            busy = SudoVerdict(False, "sudo_agent_busy", "too many sudo calls are waiting")
            self._send(address, reply_line(busy))
            return
        self._answering += 1
        tg.create_task(self._answer(data, who, caller, address), name="sudo-client")

    async def _answer(
        self, data: bytes, who: tuple[int, int], caller: proc.Caller | None, address: Address
    ) -> None:
        """Answer a request that had to wait, in its own task."""
        try:
            async with asyncio.timeout(IO_TIMEOUT):
                if caller is None:
                    caller = await self._callers.look_up(*who)
                grant = await self._grant_of(caller)
                member = False
                if grant is None:
                    caller = await self._callers.checked(caller)
                    member = await self._callers.member(caller)
                decided = self._verdict(caller, data, grant, fleet_member=member)
        except Exception as exc:  # noqa: BLE001 - answered; a cancellation goes on
            self._refuse(address, exc)
            return
        finally:
            self._answering -= 1
        self._answer_with(address, decided)
        if grant is not None:
            self._callers.check_name(caller.uid)
            if self._on_decided is not None:
                await self._on_decided(decided)

    def _refuse(self, address: Address, exc: Exception) -> None:
        """Answer a request that could not be decided with a refusal that says why (an
        unexpected error: a refusal, logged with its traceback)."""
        if isinstance(exc, (OSError, TimeoutError, BadRequest)):
            log.warning("sudo.request_failed", error=str(exc) or type(exc).__name__)
            if isinstance(exc, BadRequest):
                verdict = SudoVerdict(False, "sudo_request_invalid", str(exc))
            else:  # the caller is gone, or the account database hangs
                verdict = SudoVerdict(
                    False, "sudo_caller_unknown", "the caller could not be identified"
                )
            self._send(address, reply_line(verdict))
        else:
            log.error("sudo.decision_failed", exc_info=exc)
            self._send(address, _FAILED)

    def _answer_with(self, address: Address, decided: Decided) -> None:
        self._send(address, reply_line(decided.verdict))
        self._record(decided)

    def _send(self, address: Address, reply: bytes) -> None:
        assert self._sock is not None
        try:
            # The plugin's socket holds nothing but this answer: it is never full.
            self._sock.sendto(reply, address)
        except OSError as exc:  # the plugin gave up (sudo interrupted): nobody to answer
            log.warning("sudo.answer_failed", error=str(exc))

    def _settled_grant(self, caller: proc.Caller) -> tuple[bool, SessionGrant | None]:
        """``(settled, grant)``: the grant of the first registered session up the caller's
        ancestry (None: registered without a work session), or no grant when none is
        registered and none is the agent's; not settled while a session whose leader is
        the agent's child is not registered yet."""
        for sid in caller.sids:
            if self.sessions.known(sid):
                return True, self.sessions.lookup(sid)
        ours = any(proc.parent_of(sid) == os.getpid() for sid in caller.sids)
        return not ours, None

    async def _grant_of(self, caller: proc.Caller) -> SessionGrant | None:
        """The grant of the first managed session up the caller's ancestry.

        A session is registered just after its process was spawned; a sudo that wins
        that race (its session leader is our child, not registered yet) waits for the
        registration, briefly.
        """
        deadline = time.monotonic() + REGISTRATION_WAIT
        while True:
            settled, grant = self._settled_grant(caller)
            if settled or time.monotonic() > deadline:
                return grant
            await asyncio.sleep(0.01)

    def _verdict(
        self, caller: proc.Caller, data: bytes, grant: SessionGrant | None, *, fleet_member: bool
    ) -> Decided:
        """Decide the request ``data`` of ``caller``.

        Raises:
            BadRequest: ``data`` is not a request.
        """
        call = parse_request(data, caller_uid=caller.uid, caller_user=caller.user)
        now = time.time()
        verdict = decide(
            grant,
            call,
            now=now,
            unmanaged=self._config.unmanaged,
            fleet_member=fleet_member,
            resolver=self._paths,
        )
        return Decided(call, caller, grant, verdict, now)

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
