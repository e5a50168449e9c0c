"""The pure parts of websh: control frames, asciicast encoding, terminal state, quota."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from fleetgate.agent.errors import ChannelRefused
from fleetgate.agent.exec.identity import Identity
from fleetgate.agent.websh.cast import (
    CastEncoder,
    ascii_event_line,
    event_line,
    header_line,
    json_string,
)
from fleetgate.agent.websh.quota import SpoolQuota
from fleetgate.agent.websh.shell import choose_shell, login_argv0, login_environment
from fleetgate.agent.websh.state import Owner, PendingOutput, Phase, TerminalState
from fleetgate.shared.errors import ProtocolViolation
from fleetgate.shared.protocol.websh import (
    Close,
    Exit,
    Ready,
    Resize,
    decode_agent_frame,
    decode_client_frame,
)


OWNER = Owner("deploy", "ws-1", "alice")


# -- control frames ----------------------------------------------------------------------


def test_client_frames_decode() -> None:
    assert decode_client_frame('{"type":"resize","rows":40,"cols":120}') == Resize(
        rows=40, cols=120
    )
    assert decode_client_frame('{"type":"close"}') == Close()


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{", "malformed"),
        ("[1]", "malformed"),
        ('{"type":"exec"}', "unknown_type"),
        ("{}", "unknown_type"),
        ('{"type":"resize","rows":0,"cols":80}', "invalid"),
        ('{"type":"resize","rows":24,"cols":70000}', "invalid"),
        ('{"type":"resize","rows":24}', "invalid"),
        ('{"type":"close","extra":1}', "invalid"),
        ('{"type":"resize","rows":"x","cols":1}', "invalid"),
        (" " * 5000, "too_large"),
    ],
)
def test_bad_client_frames_are_refused_with_a_code(text: str, code: str) -> None:
    with pytest.raises(ProtocolViolation) as refused:
        decode_client_frame(text)
    assert refused.value.code == code


def test_agent_frames_round_trip() -> None:
    tid = uuid.uuid4()
    for frame in (Ready(terminal_id=tid, rows=24, cols=80), Exit(code=130, reason="closed")):
        assert decode_agent_frame(frame.model_dump_json()) == frame


# -- asciicast -------------------------------------------------------------------------


def test_header_and_events_are_asciicast_v2() -> None:
    header = json.loads(header_line(80, 24, 1700000000, {"TERM": "xterm", "SHELL": "/bin/sh"}, "t"))
    assert header == {
        "version": 2,
        "width": 80,
        "height": 24,
        "timestamp": 1700000000,
        "env": {"TERM": "xterm", "SHELL": "/bin/sh"},
        "title": "t",
    }
    assert json.loads(event_line(1.5, "o", 'a"\n\x1b[0m')) == [1.5, "o", 'a"\n\x1b[0m']


def test_split_utf8_is_emitted_whole_and_invalid_bytes_replaced() -> None:
    enc = CastEncoder()
    euro = "€".encode()
    assert enc.output(0.1, b"a" + euro[:1]) == event_line(0.1, "o", "a")
    assert enc.output(0.2, euro[1:2]) == b""
    assert json.loads(enc.output(0.3, euro[2:] + b"\xff"))[2] == "€\ufffd"
    # Input has its own decoder: a pending output byte does not leak into it.
    enc.output(0.4, euro[:1])
    assert json.loads(enc.input(0.5, b"ls\r"))[1:] == ["i", "ls\r"]
    assert json.loads(enc.flush(0.6))[1:] == ["o", "\ufffd"]
    assert json.loads(enc.resize(0.7, 100, 30)) == [0.7, "r", "100x30"]


# -- terminal state --------------------------------------------------------------------


def test_detach_then_reattach_before_the_deadline() -> None:
    state = TerminalState(OWNER, grace=10, now=100)
    assert state.phase is Phase.ATTACHED
    assert state.detach(now=101) == 111
    assert not state.expired(110.9)
    assert state.attach(OWNER, now=110) is False
    assert state.phase is Phase.ATTACHED
    assert state.deadline is None
    assert state.attach(OWNER, now=111) is True  # take-over of a half-open channel


def test_the_deadline_expires_and_close_is_final() -> None:
    state = TerminalState(OWNER, grace=5, now=0)
    state.detach(now=1)
    assert state.expired(6)
    with pytest.raises(ChannelRefused) as late:
        state.attach(OWNER, now=6)
    assert late.value.code == "terminal_closed"
    assert state.close("detach_expired") is True
    assert state.close("closed") is False
    assert state.close_reason == "detach_expired"
    assert state.detach(now=7) is None
    with pytest.raises(ChannelRefused):
        state.check_attach(OWNER)


@pytest.mark.parametrize(
    "other",
    [
        Owner("root", "ws-1", "alice"),
        Owner("deploy", "ws-2", "alice"),
        Owner("deploy", "ws-1", "bob"),
    ],
)
def test_only_the_owner_may_attach(other: Owner) -> None:
    state = TerminalState(OWNER, grace=5, now=0)
    state.detach(now=0)
    with pytest.raises(ChannelRefused) as refused:
        state.attach(other, now=1)
    assert refused.value.code == "forbidden"
    assert state.phase is Phase.DETACHED


def test_pending_output_pauses_and_keeps_a_ring_when_detached() -> None:
    pending = PendingOutput(high=100, ring=10)
    pending.feed(b"x" * 99)
    assert not pending.should_pause()
    pending.feed(b"y")
    assert pending.should_pause()
    assert pending.take(40) == b"x" * 40
    assert not pending.should_resume()
    pending.take(11)
    assert pending.should_resume()
    assert pending.trim() == 39
    assert pending.take(100) == b"x" * 9 + b"y"
    assert pending.dropped == 39
    with pytest.raises(ValueError):
        PendingOutput(0, 1)


def test_quota() -> None:
    small = SpoolQuota(100, used=10)
    assert not small.take(95)
    assert small.full  # a refused write means full, even below the cap
    small.give_back(5)
    assert not small.full
    quota = SpoolQuota(100, used=40)
    assert quota.take(60)
    assert quota.full
    assert not quota.take(1)
    quota.give_back(30)
    assert quota.used == 70
    assert not quota.full
    quota.give_back(1000)
    assert quota.used == 0


# -- shell choice and login environment ---------------------------------------------------


def _identity(shell: str = "/bin/bash") -> Identity:
    return Identity("deploy", 1001, 1001, (1001, 27), "/home/deploy", shell)


def test_the_passwd_shell_or_a_listed_one(tmp_path: Path) -> None:
    shells = tmp_path / "shells"
    shells.write_text("# /etc/shells: valid login shells\n/bin/sh\n/usr/bin/zsh\n")
    assert choose_shell(_identity(), None, shells) == "/bin/bash"
    assert choose_shell(_identity(), "/usr/bin/zsh", shells) == "/usr/bin/zsh"
    for bad in ("/usr/bin/python3", "# /etc/shells: valid login shells", "zsh"):
        with pytest.raises(ChannelRefused) as refused:
            choose_shell(_identity(), bad, shells)
        assert refused.value.code == "invalid_shell"
    with pytest.raises(ChannelRefused):
        choose_shell(_identity(), "/bin/sh", tmp_path / "missing")


def test_login_argv0_and_a_clean_environment() -> None:
    assert login_argv0("/bin/bash") == "-bash"
    assert login_argv0("/usr/bin/zsh") == "-zsh"
    assert login_environment(_identity(), "/bin/bash", "xterm") == {
        "HOME": "/home/deploy",
        "USER": "deploy",
        "LOGNAME": "deploy",
        "SHELL": "/bin/bash",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "TERM": "xterm",
        "LANG": "C.UTF-8",
    }


@given(st.text())
def test_json_string_is_json(text: str) -> None:
    assert json.loads(json_string(text)) == text
    assert json.loads(event_line(1.25, "o", text)) == [1.25, "o", text]


@pytest.mark.parametrize(
    "text", ["", "plain\r\n", 'q"b\\s\tt', "\x1b[1mbold\x1b[0m", "é€\u2028", "\x7f\x00"]
)
def test_json_string_examples(text: str) -> None:
    assert json.loads(json_string(text)) == text


@given(st.binary().map(lambda raw: bytes(b & 0x7F for b in raw)))
def test_ascii_lines_are_the_lines_of_their_text(data: bytes) -> None:
    """The ASCII shortcut writes exactly what decoding and encoding would have."""
    assert ascii_event_line(2.5, "o", data) == event_line(2.5, "o", data.decode("ascii"))
    assert CastEncoder().output(2.5, data) == (event_line(2.5, "o", data.decode()) if data else b"")


def test_ascii_after_a_split_character_goes_through_the_decoder() -> None:
    enc = CastEncoder()
    assert enc.output(0.1, "€".encode()[:2]) == b""
    # The pending bytes are not a character: U+FFFD, then the ASCII text.
    assert json.loads(enc.output(0.2, b"ok\r\n"))[2] == "\ufffdok\r\n"
    assert enc.output(0.3, b"plain") == event_line(0.3, "o", "plain")


def test_pending_output_takes_across_reads_and_trims_inside_one() -> None:
    pending = PendingOutput(high=1000, ring=5)
    for chunk in (b"abc", b"", b"defg", b"hi"):
        pending.feed(chunk)
    assert len(pending) == 9
    assert pending.take(0) == b""
    assert pending.take(2) == b"ab"  # part of a read
    assert pending.take(4) == b"cdef"  # the rest of one and part of the next
    assert pending.take(100) == b"ghi"
    assert len(pending) == 0
    assert pending.take(10) == b""
    pending.feed(b"0123")
    pending.feed(b"456789")
    assert pending.trim() == 5  # the whole first read and one byte of the second
    assert pending.dropped == 5
    assert pending.take(100) == b"56789"
