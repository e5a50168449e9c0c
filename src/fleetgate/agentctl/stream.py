"""Command output: ordering/de-duplication of chunks and following the NDJSON stream.

`ChunkAssembler` and `assemble_output` are pure. `follow_command` drives the stream of
`GET /api/events/commands/<id>/stream/`, resuming with `seq__gte=<next seq>` when it breaks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from fleetgate.agentctl.client import Client, StreamBroken, StreamIdle, StreamProtocolError
from fleetgate.agentctl.errors import CliError, ControlPlaneError
from fleetgate.shared.backoff import backoff_delays


class ChunkAssembler:
    """Turns chunks that may arrive twice or out of order into in-order text.

    `add` returns the text that became printable: the chunk itself if it is the next one,
    plus any buffered successors; duplicates (already printed or already buffered) yield
    nothing. Seqs are 0-based and contiguous (docs/api.md).
    """

    def __init__(self, next_seq: int = 0) -> None:
        self.next_seq = next_seq
        self._pending: dict[int, str] = {}

    @property
    def has_gap(self) -> bool:
        """True when chunks after a missing one are waiting."""
        return bool(self._pending)

    def add(self, seq: int, content: str) -> list[str]:
        """Accept one chunk; return the contents now ready, in order."""
        if seq < self.next_seq or seq in self._pending:
            return []
        self._pending[seq] = content
        ready: list[str] = []
        while self.next_seq in self._pending:
            ready.append(self._pending.pop(self.next_seq))
            self.next_seq += 1
        return ready

    def flush(self) -> list[str]:
        """Give up on gaps: return what is buffered, in seq order, and move past it."""
        ready = [self._pending[seq] for seq in sorted(self._pending)]
        if self._pending:
            self.next_seq = max(self._pending) + 1
        self._pending.clear()
        return ready


def assemble_output(chunks: Iterable[Mapping[str, Any]]) -> str:
    """Join `{seq, content}` chunks in seq order, keeping the first copy of each seq."""
    by_seq: dict[int, str] = {}
    for chunk in chunks:
        by_seq.setdefault(int(chunk["seq"]), str(chunk.get("content") or ""))
    return "".join(by_seq[seq] for seq in sorted(by_seq))


def fetch_output(client: Client, command: Mapping[str, Any]) -> str:
    """The full output of a command: its chunks, or `result` when it has none."""
    chunks = client.list_all(f"/api/events/commands/{command['id']}/chunks/")
    if chunks:
        return assemble_output(chunks)
    return str(command.get("result") or "")


RESUME_MIN, RESUME_MAX = 0.5, 5.0
"""Bounds of the delay before resuming a broken stream (full jitter, shared.backoff)."""


class _StreamEnded(Exception):
    """The stream closed without its `finished` line."""


def follow_command(
    client: Client,
    command_id: str,
    on_output: Callable[[str], None],
    *,
    max_failures: int = 5,
    sleep: Callable[[float], None] = time.sleep,
    events: Iterator[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Stream a command's output to `on_output` in seq order; return the final command object.

    A broken stream is resumed from the next missing seq. `max_failures` consecutive attempts
    without progress (no new chunk) end with a CliError; an idle timeout on a healthy stream
    (a quiet command) is not a failure. `events`, when given, is an already open stream of
    the command (the answer of a streaming create) read before any new request is made.
    """
    assembler = ChunkAssembler()
    path = f"/api/events/commands/{command_id}/stream/"
    failures = 0
    reason = ""
    delays = backoff_delays(RESUME_MIN, RESUME_MAX)
    while True:
        seen = assembler.next_seq
        try:
            source: AbstractContextManager[Iterator[dict[str, Any]]]
            if events is not None:
                source, events = nullcontext(events), None
            else:
                source = client.stream_ndjson(path, {"seq__gte": assembler.next_seq})
            with source as lines:
                for event in lines:
                    kind = event.get("event")
                    if kind == "output":
                        for text in assembler.add(int(event["seq"]), str(event["content"])):
                            on_output(text)
                    elif kind == "finished":
                        command: dict[str, Any] = event["command"]
                        if assembler.has_gap:
                            _fill_gaps(client, command_id, assembler, on_output)
                        for text in assembler.flush():
                            on_output(text)
                        return command
                    # Unknown events (e.g. a future keep-alive) are ignored on purpose.
            raise _StreamEnded("the stream ended before the command finished")
        except StreamIdle:
            failures = 0  # the server answered; the command is just quiet: resume at once
            continue
        except ControlPlaneError as exc:
            if exc.status < 500:
                raise
            reason = f"{exc.detail} ({exc.code})"
        except CliError as exc:
            if exc.code != "CONNECTION_FAILED":
                raise
            reason = exc.message  # the control plane is restarting: resume when it is back
        except (_StreamEnded, StreamBroken, StreamProtocolError, KeyError, ValueError) as exc:
            reason = str(exc) or type(exc).__name__
        failures = 1 if assembler.next_seq > seen else failures + 1
        if failures > max_failures:
            raise CliError(
                f"lost the output stream of command {command_id}: {reason}; "
                f"see it later with: agentctl exec logs {command_id}"
            )
        if failures == 1:  # progress since the last break: start the schedule again
            delays = backoff_delays(RESUME_MIN, RESUME_MAX)
        sleep(next(delays))


def _fill_gaps(
    client: Client, command_id: str, assembler: ChunkAssembler, on_output: Callable[[str], None]
) -> None:
    """Fetch the stored chunks from the first missing seq (the stream skipped some)."""
    chunks = client.list_all(
        f"/api/events/commands/{command_id}/chunks/", {"seq__gte": assembler.next_seq}
    )
    for chunk in sorted(chunks, key=lambda c: int(c["seq"])):
        for text in assembler.add(int(chunk["seq"]), str(chunk.get("content") or "")):
            on_output(text)
