"""One running terminal: a shell on a PTY, the channel attached to it, its recording.

The terminal's life (:meth:`Terminal.run`) is independent of any channel: a channel is
attached with :meth:`Terminal.attach`, which returns when the channel drops (the terminal
detaches and waits ``detach_grace`` seconds for a reattach) or when the terminal ends.

Data path: the PTY master is read without blocking from the event loop (``add_reader``),
up to :data:`READ_BUDGET` bytes per wake-up, into :class:`PendingOutput`. While attached,
the reader stops when :data:`HIGH_WATER` bytes wait to be sent, so a fast writer (``cat``
of a huge file) blocks in the kernel instead of growing our memory; the sender coalesces
what waits into frames of up to :data:`MAX_FRAME` bytes, so the slower the link, the
fewer and larger the frames. Input is written to the PTY before the next frame is read.
"""

from __future__ import annotations

import asyncio
import errno
import os
import time
from uuid import UUID

import structlog

from fleetgate.agent.config.access import WebshConfig
from fleetgate.agent.errors import ChannelClosed
from fleetgate.agent.websh.attachment import Attachment, Link, first_of
from fleetgate.agent.websh.ptyio import READ_BUDGET, read_buffer, redact_if_secret, write_all
from fleetgate.agent.websh.reaper import end_session, exit_status
from fleetgate.agent.websh.recording import Recorder
from fleetgate.agent.websh.shell import ShellProcess, set_window_size
from fleetgate.agent.websh.state import Owner, PendingOutput, Phase, TerminalState
from fleetgate.shared.errors import ProtocolViolation
from fleetgate.shared.protocol.websh import (
    Close,
    Exit,
    Ready,
    Resize,
    WebshError,
    decode_client_frame,
)


__all__ = ["HIGH_WATER", "MAX_FRAME", "Terminal"]

log = structlog.get_logger(__name__)

READ_SIZE = 64 * 1024
HIGH_WATER = 256 * 1024
"""Output waiting to be sent above which the PTY is not read (attached)."""
MAX_FRAME = 256 * 1024
"""Largest binary frame sent."""
EXIT_FLUSH_TIMEOUT = 5.0
"""Seconds the last output and the exit frame get to reach an attached client."""
DRAIN_LIMIT = 1024 * 1024
"""Bytes read from the PTY after the shell exited, at most (a background writer may go on)."""


class Terminal:
    """A shell on a PTY with at most one attached channel at a time."""

    def __init__(
        self,
        terminal_id: UUID,
        shell: ShellProcess,
        owner: Owner,
        config: WebshConfig,
        *,
        rows: int,
        cols: int,
        recorder: Recorder | None = None,
        refuse_unrecorded: bool = False,
    ) -> None:
        self.terminal_id = terminal_id
        self.shell = shell
        self.rows, self.cols = rows, cols
        self.recorder = recorder
        self.exit_code: int | None = None
        self.state = TerminalState(owner, config.detach_grace, time.monotonic())
        self._config = config
        self._refuse_unrecorded = refuse_unrecorded
        self._pending = PendingOutput(HIGH_WATER, config.replay_bytes)
        self._data = asyncio.Event()
        self._wake = asyncio.Event()
        self._attachment: Attachment | None = None
        self._reading = False
        self._eof = False
        self._exited = False
        self._close_reason: str | None = None
        self._final: Exit | None = None
        self._loop = asyncio.get_running_loop()
        self._pidfd: int | None = None
        self._session_ended = False
        self._expires: float | None = None
        self.finished = asyncio.Event()
        """Set when the session's processes are gone and ``exit_code`` is final."""

    @property
    def pid(self) -> int:
        """The shell's pid (its session id)."""
        return self.shell.pid

    # -- lifetime -----------------------------------------------------------------------

    async def run(self) -> int:
        """Run until the shell exits, the terminal is closed, or a detach expires; then end
        every process of the session and return the shell's exit status."""
        fd = self.shell.master_fd
        self._pidfd = os.pidfd_open(self.pid)
        self._loop.add_reader(self._pidfd, self._on_exit)
        self._resume()
        try:
            reason = await self._wait_for_end()
            self.state.close(reason)
            if not self._exited:
                log.info("websh.hangup", terminal_id=str(self.terminal_id), reason=reason)
            self._pause()
            self._drain()
            code = await end_session(self.shell.process, self._config.hangup_grace)
            self._session_ended = True
            self.exit_code = code
            self._drain()
            await self._say_goodbye(Exit(code=code, reason=reason))
            return code
        finally:
            self._cleanup(fd)
            if not self._session_ended:  # cancelled: the processes must still go
                self.state.close("shutdown")
                self.exit_code = await asyncio.shield(end_session(self.shell.process, 0))
            self.finished.set()

    def expire_at(self, epoch: float | None) -> None:
        """End the terminal at ``epoch`` (wall clock: the grant's work session expiry).

        A reattach with a new grant moves it (the session may have been extended).
        """
        if epoch is None:
            self._expires = None
        else:
            self._expires = time.monotonic() + (epoch - time.time())
        self._wake.set()

    def close(self, reason: str = "closed") -> None:
        """Ask the terminal to end (idempotent; the first reason wins)."""
        if self._close_reason is None:
            self._close_reason = reason
        self._wake.set()

    async def _wait_for_end(self) -> str:
        while True:
            if self._exited:
                return "exited"
            if self._close_reason is not None:
                return self._close_reason
            now = time.monotonic()
            if self.state.expired(now):
                return "detach_expired"
            if self._expires is not None and now >= self._expires:
                return "work_session_expired"
            self._wake.clear()
            due = [self._expires] if self._expires is not None else []
            if self.state.phase is Phase.DETACHED and self.state.deadline is not None:
                due.append(self.state.deadline)
            timeout = max(0.0, min(due) - now) if due else None
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _say_goodbye(self, final: Exit) -> None:
        attachment = self._attachment
        if attachment is None:
            return
        self._final = final
        self._data.set()
        try:
            await asyncio.wait_for(attachment.ended.wait(), EXIT_FLUSH_TIMEOUT)
        except TimeoutError:
            log.info("websh.exit_not_delivered", terminal_id=str(self.terminal_id))

    def _cleanup(self, fd: int) -> None:
        self._pause()
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        try:
            os.close(fd)
        except OSError:
            pass
        if self.recorder is not None:
            self.recorder.close()

    # -- attach ---------------------------------------------------------------------------

    async def attach(self, link: Link, owner: Owner, *, first: bool = False) -> None:
        """Serve ``link`` until it drops (the terminal detaches) or the terminal ends.

        Raises:
            ChannelRefused: not the owner, or the terminal has ended.
        """
        if not first:
            self.state.attach(owner, time.monotonic())
        previous, attachment = self._attachment, Attachment(link)
        self._attachment = attachment
        if previous is not None:
            previous.ended.set()  # its sender stops; its serve() returns
        self._resume()
        self._data.set()
        self._wake.set()
        bound = log.bind(terminal_id=str(self.terminal_id), pid=self.pid)
        bound.info("websh.attached", first=first, replay_bytes=len(self._pending))
        try:
            ready = Ready(
                terminal_id=self.terminal_id, reattached=not first, rows=self.rows, cols=self.cols
            )
            await link.send(ready.model_dump_json())
            await first_of(self._send_loop(attachment), self._recv_loop(attachment))
        except ChannelClosed as exc:
            bound.info("websh.link_lost", code=exc.code)
        finally:
            attachment.ended.set()
            if self._attachment is attachment:
                self._attachment = None
                deadline = self.state.detach(time.monotonic())
                if deadline is not None:
                    bound.info("websh.detached", grace=self._config.detach_grace)
                    self._pending.trim()
                    self._resume()  # keep reading into the ring
                self._wake.set()

    async def _send_loop(self, attachment: Attachment) -> None:
        link = attachment.link
        while not attachment.ended.is_set():
            await self._data.wait()
            if attachment.ended.is_set():
                return
            if self._pending:
                chunk = self._pending.take(MAX_FRAME)
                if not self._reading and not self._eof and self._pending.should_resume():
                    self._resume()
                await link.send(chunk)
                continue
            if self._final is not None:
                await link.send(self._final.model_dump_json())
                await link.close(1000, self._final.reason)
                attachment.ended.set()
                return
            self._data.clear()

    async def _recv_loop(self, attachment: Attachment) -> None:
        link = attachment.link
        while not attachment.ended.is_set():
            message = await link.recv()
            if isinstance(message, bytes):
                if self.state.phase is Phase.CLOSED:
                    continue
                if self.recorder is not None:
                    self.recorder.input(redact_if_secret(self.shell.master_fd, message))
                    self._check_recording()
                await write_all(self._loop, self.shell.master_fd, message)
                continue
            try:
                frame = decode_client_frame(message)
            except ProtocolViolation as exc:
                await link.send(WebshError(code=exc.code, message=exc.message).model_dump_json())
                continue
            if isinstance(frame, Resize):
                self.rows, self.cols = frame.rows, frame.cols
                set_window_size(self.shell.master_fd, frame.rows, frame.cols)
                if self.recorder is not None:
                    self.recorder.resize(frame.cols, frame.rows)
            elif isinstance(frame, Close):
                self.close("closed")

    # -- the PTY reader (event-loop callbacks) --------------------------------------------

    def _resume(self) -> None:
        if not self._reading and not self._eof and self.state.phase is not Phase.CLOSED:
            self._loop.add_reader(self.shell.master_fd, self._on_readable)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.shell.master_fd)
            self._reading = False

    def _on_readable(self) -> None:
        self._read(READ_BUDGET)
        if self._attachment is not None:
            if self._pending.should_pause():
                self._pause()
        else:
            self._pending.trim()

    def _read(self, budget: int) -> None:
        """Read what the PTY has, up to ``budget`` bytes, and hand it on in one piece (one
        recording event and one wake-up of the sender per call, not per 4 KiB read).

        The reads land in one reused buffer (a PTY read returns at most 4 KiB): one copy
        per call instead of an allocation per read and a join."""
        fd = self.shell.master_fd
        scratch = read_buffer()
        view = memoryview(scratch)
        got = 0
        parts: list[bytes] = []
        while budget > 0:
            if got == len(scratch):  # a DRAIN_LIMIT read is larger than the buffer
                parts.append(bytes(view))
                got = 0
            try:
                count = os.readv(fd, [view[got : got + min(READ_SIZE, budget)]])
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno != errno.EIO:
                    log.warning(
                        "websh.read_failed", terminal_id=str(self.terminal_id), error=str(exc)
                    )
                count = 0
            if not count:
                # EIO: every slave descriptor is closed (the shell and its children are gone).
                self._eof = True
                self._pause()
                self._wake.set()
                break
            budget -= count
            got += count
        if got:
            parts.append(bytes(view[:got]))
        view.release()
        if not parts:
            return
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        self._pending.feed(data)
        self._data.set()
        if self.recorder is not None:
            self.recorder.output(data)
            self._check_recording()

    def _drain(self) -> None:
        if not self._eof:
            self._read(DRAIN_LIMIT)
            if self._attachment is None:
                self._pending.trim()

    def _check_recording(self) -> None:
        if self.recorder is not None and self.recorder.stopped and self._refuse_unrecorded:
            self.close("recording_full")

    def _on_exit(self) -> None:
        if self.shell.process.poll() is not None and not self._exited:
            self._exited = True
            self.exit_code = exit_status(self.shell.process.returncode)
            assert self._pidfd is not None
            self._loop.remove_reader(self._pidfd)
            self._wake.set()
