"""Chunk ordering/de-duplication (pure) and the stream follower (in-memory transport)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given, strategies as st

from fleetgate.agentctl.client import Client
from fleetgate.agentctl.errors import CliError, ControlPlaneError
from fleetgate.agentctl.stream import (
    ChunkAssembler,
    assemble_output,
    follow_command,
)
from tests.unit.agentctl.agentctl_fakes import BrokenStream, make_command, ndjson


def test_in_order_chunks_pass_straight_through() -> None:
    asm = ChunkAssembler()
    assert asm.add(0, "a") == ["a"]
    assert asm.add(1, "b") == ["b"]
    assert asm.next_seq == 2
    assert not asm.has_gap


def test_duplicates_are_skipped() -> None:
    asm = ChunkAssembler()
    assert asm.add(0, "a") == ["a"]
    assert asm.add(0, "a") == []
    assert asm.add(2, "c") == []
    assert asm.add(2, "c") == []  # already buffered
    assert asm.add(1, "b") == ["b", "c"]
    assert asm.add(1, "b") == []


def test_out_of_order_chunks_wait_for_the_gap() -> None:
    asm = ChunkAssembler()
    assert asm.add(2, "c") == []
    assert asm.add(1, "b") == []
    assert asm.has_gap
    assert asm.add(0, "a") == ["a", "b", "c"]
    assert not asm.has_gap


def test_flush_gives_up_on_gaps_in_seq_order() -> None:
    asm = ChunkAssembler()
    asm.add(0, "a")
    asm.add(4, "e")
    asm.add(2, "c")
    assert asm.flush() == ["c", "e"]
    assert asm.next_seq == 5
    assert asm.add(3, "d") == []  # late: already given up on


@given(
    st.lists(st.text(max_size=5), max_size=12).flatmap(
        lambda contents: st.tuples(
            st.just(contents),
            st.permutations(list(range(len(contents))) * 2),
        )
    )
)
def test_any_order_with_duplicates_yields_the_output_once_in_order(
    case: tuple[list[str], list[int]],
) -> None:
    contents, order = case
    asm = ChunkAssembler()
    printed = [text for seq in order for text in asm.add(seq, contents[seq])]
    assert printed == contents
    assert asm.flush() == []


def test_assemble_output_sorts_and_dedupes() -> None:
    chunks = [
        {"seq": 2, "content": "c"},
        {"seq": 0, "content": "a"},
        {"seq": 1, "content": "b"},
        {"seq": 0, "content": "A"},  # a second copy: the first one wins
    ]
    assert assemble_output(chunks) == "abc"
    assert assemble_output([]) == ""


def _within(delays: list[float], bounds: list[float]) -> bool:
    """Full-jitter delays: each between 0 and its capped exponential bound."""
    return len(delays) == len(bounds) and all(
        0 <= d <= b for d, b in zip(delays, bounds, strict=True)
    )


def _no_sleep(delay: float) -> None:
    pytest.fail(f"unexpected backoff of {delay} s")


def _out(seq: int, content: str) -> dict[str, object]:
    return {"event": "output", "seq": seq, "content": content}


def _finished(**kwargs: Any) -> dict[str, Any]:
    return {"event": "finished", "command": make_command("c-1", **kwargs)}


def _client(*responses: httpx.Response) -> tuple[Client, list[httpx.Request]]:
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/chunks/"):
            return httpx.Response(
                200,
                json={
                    "count": 0,
                    "next": None,
                    "results": [
                        {"seq": 1, "content": "B"},
                        {"seq": 2, "content": "C"},
                    ],
                },
            )
        return queue.pop(0)

    return Client("http://cp.test", "t", transport=httpx.MockTransport(handler)), seen


def test_follow_prints_in_order_skipping_duplicates_and_returns_the_command() -> None:
    body = ndjson(
        _out(0, "a"),
        _out(1, "b"),
        _out(1, "b"),
        {"event": "ping"},
        _out(2, "c"),
        _finished(exit_code=3, text="Failed"),
    )
    client, seen = _client(httpx.Response(200, content=body))
    printed: list[str] = []
    command = follow_command(client, "c-1", printed.append, sleep=_no_sleep)
    assert printed == ["a", "b", "c"]
    assert command["exit_code"] == 3
    assert seen[0].url.params["seq__gte"] == "0"
    assert seen[0].url.path == "/api/events/commands/c-1/stream/"


def test_follow_resumes_from_the_next_seq_after_a_break() -> None:
    first = httpx.Response(200, stream=BrokenStream(ndjson(_out(0, "a"), _out(1, "b"))))
    second = httpx.Response(200, content=ndjson(_out(1, "b"), _out(2, "c"), _finished()))
    client, seen = _client(first, second)
    printed: list[str] = []
    delays: list[float] = []
    command = follow_command(client, "c-1", printed.append, sleep=delays.append)
    assert printed == ["a", "b", "c"]
    assert command["exit_code"] == 0
    assert [r.url.params["seq__gte"] for r in seen] == ["0", "2"]
    assert _within(delays, [0.5])


def test_follow_retries_a_stream_that_ends_early_and_5xx() -> None:
    client, seen = _client(
        httpx.Response(200, content=ndjson(_out(0, "a"))),  # ends without `finished`
        httpx.Response(503, json={"code": "UNAVAILABLE", "detail": "restarting"}),
        httpx.Response(200, content=ndjson(_out(1, "b"), _finished())),
    )
    printed: list[str] = []
    delays: list[float] = []
    follow_command(client, "c-1", printed.append, sleep=delays.append)
    assert printed == ["a", "b"]
    assert _within(delays, [0.5, 1.0])
    assert [r.url.params["seq__gte"] for r in seen] == ["0", "1", "1"]


def test_follow_gives_up_after_max_failures_with_a_hint() -> None:
    client, _ = _client(*[httpx.Response(502, text="bad gateway") for _ in range(4)])
    delays: list[float] = []
    with pytest.raises(CliError, match="agentctl exec logs c-1"):
        follow_command(client, "c-1", lambda _: None, max_failures=3, sleep=delays.append)
    assert _within(delays, [0.5, 1.0, 2.0])


def test_follow_does_not_retry_client_errors() -> None:
    client, _ = _client(httpx.Response(404, json={"code": "COMMAND_NOT_FOUND", "detail": "x"}))
    with pytest.raises(ControlPlaneError) as info:
        follow_command(client, "c-1", lambda _: None, sleep=_no_sleep)
    assert info.value.code == "COMMAND_NOT_FOUND"


def test_follow_fills_a_gap_from_stored_chunks_at_the_end() -> None:
    body = ndjson(_out(0, "A"), _out(2, "C"), _finished())
    client, seen = _client(httpx.Response(200, content=body))
    printed: list[str] = []
    follow_command(client, "c-1", printed.append, sleep=_no_sleep)
    assert printed == ["A", "B", "C"]
    assert seen[-1].url.params["seq__gte"] == "1"


def test_a_quiet_command_reconnects_without_counting_failures() -> None:
    class Quiet(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield ndjson(_out(0, "a"))
            raise httpx.ReadTimeout("idle")

    client, seen = _client(
        *[httpx.Response(200, stream=Quiet()) for _ in range(6)],
        httpx.Response(200, content=ndjson(_finished())),
    )
    printed: list[str] = []
    follow_command(client, "c-1", printed.append, max_failures=1, sleep=_no_sleep)
    assert printed == ["a"]
    assert len(seen) == 7
