"""The pure parts of file transfer: paths, pipe framing, requests, the ledger, frames."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, strategies as st
from pydantic import ValidationError

from fleetgate.shared.errors import TransferError
from fleetgate.shared.files.framing import (
    DATA,
    MAX_FRAME_BYTES,
    TEXT,
    decode_header,
    decode_text,
    encode_header,
    encode_text,
)
from fleetgate.shared.files.paths import (
    check_member,
    normalise,
    split,
    temp_name,
    within_roots,
)
from fleetgate.shared.files.transfer import Ledger, final_mode, parse_request, resume_offset
from fleetgate.shared.protocol.files import (
    FileDone,
    FileEnd,
    FileError,
    FileReady,
    decode_file_frame,
)


def code_of(call: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(TransferError) as info:
        call(*args, **kwargs)  # type: ignore[operator]
    return info.value.code


# -- paths ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("/", "/"), ("//a/./b/", "/a/b"), ("/srv/site.tar.gz", "/srv/site.tar.gz"), ("/ü/ß", "/ü/ß")],
)
def test_normalise(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("relative/path", "relative"),
        ("", "relative"),
        ("/a/../etc/passwd", "escape"),
        ("/..", "escape"),
        ("/a/b\0c", "nul"),
        ("/" + "x" * 256, "too_long"),
        ("/a" * 2100, "too_long"),
    ],
)
def test_normalise_refuses(raw: str, code: str) -> None:
    assert code_of(normalise, raw) == code


@given(st.lists(st.text(st.characters(blacklist_characters="/\0"), min_size=1, max_size=20)))
def test_normalise_never_escapes(parts: list[str]) -> None:
    raw = "/" + "/".join(parts)
    try:
        result = normalise(raw)
    except TransferError as exc:
        code = exc.code
    else:
        code = "ok"
    assert code in {"escape", "too_long", "invalid", "ok"}
    if code != "ok":
        return
    assert result.startswith("/")
    assert ".." not in result.split("/")
    assert normalise(result) == result


def test_members_are_relative_and_contained() -> None:
    assert check_member("./a/b") == ["a", "b"]
    assert check_member(".") == []
    assert code_of(check_member, "/etc/passwd") == "escape"
    assert code_of(check_member, "a/../../x") == "escape"
    assert code_of(check_member, "a\0") == "nul"


def test_split_and_roots() -> None:
    assert split("/srv/a") == ("/srv", "a")
    assert split("/a") == ("/", "a")
    assert split("/") == ("/", "")
    assert within_roots("/srv/a", ())
    assert within_roots("/srv/a", ("/srv",))
    assert within_roots("/srv", ("/srv",))
    assert not within_roots("/srvx/a", ("/srv",))
    assert within_roots("/anything", ("/",))


def test_temp_name_is_deterministic_hidden_and_bounded() -> None:
    tid = "ab" * 16
    assert temp_name("site.tar.gz", tid) == temp_name("site.tar.gz", tid)
    assert temp_name("site.tar.gz", tid).startswith(".site.tar.gz.")
    assert temp_name("a", tid) != temp_name("a", "cd" * 16)
    long_name = "é" * 127
    assert len(temp_name(long_name, "f" * 64).encode()) <= 255


# -- framing ----------------------------------------------------------------------------


def test_frame_headers_round_trip() -> None:
    assert decode_header(encode_header(DATA, 1 << 20)) == (DATA, 1 << 20)
    frame = encode_text({"type": "end", "size": 3})
    kind, length = decode_header(frame[:5])
    assert kind == TEXT
    assert decode_text(frame[5 : 5 + length]) == {"type": "end", "size": 3}


def test_frame_errors() -> None:
    assert code_of(decode_header, b"X\0\0\0\1") == "malformed"
    assert code_of(decode_header, b"D" + (MAX_FRAME_BYTES + 1).to_bytes(4, "big")) == "too_large"
    assert code_of(decode_header, b"T" + (1 << 20).to_bytes(4, "big")) == "too_large"
    assert code_of(encode_header, DATA, MAX_FRAME_BYTES + 1) == "too_large"
    assert code_of(decode_text, b"not json") == "malformed"
    assert code_of(decode_text, b"[1]") == "malformed"
    assert code_of(decode_text, b'{"type": 3}') == "malformed"
    assert code_of(decode_text, b"\xff") == "malformed"


# -- requests ---------------------------------------------------------------------------


def test_request_defaults_and_normalised_path() -> None:
    request = parse_request({"op": "upload", "path": "//srv/./x", "transfer_id": "a" * 32})
    assert request.path == "/srv/x"
    assert (request.offset, request.size, request.overwrite, request.recursive) == (
        0,
        None,
        False,
        False,
    )
    assert request.handover is False  # the worker streams unless the agent asks
    assert parse_request({"op": "download", "path": "/x", "handover": True}).handover


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"op": "delete"}, "invalid"),
        ({"path": 3}, "invalid"),
        ({"path": "/a/../b"}, "escape"),
        ({"name": "a/b"}, "invalid"),
        ({"name": ".."}, "invalid"),
        ({"transfer_id": "XYZ"}, "invalid"),
        ({"expect_sha256": "abc"}, "invalid"),
        ({"offset": -1}, "invalid"),
        ({"offset": True}, "invalid"),
        ({"size": "10"}, "invalid"),
        ({"overwrite": "yes"}, "invalid"),
        ({"handover": 1}, "invalid"),
        ({"allowed_roots": "/srv"}, "invalid"),
        ({"allowed_roots": ["srv"]}, "relative"),
        ({"chunk_bytes": 10}, "invalid"),
    ],
)
def test_request_refusals(fields: dict[str, object], code: str) -> None:
    obj: dict[str, object] = {"op": "upload", "path": "/srv/x", "transfer_id": "a" * 32}
    obj.update(fields)
    assert code_of(parse_request, obj) == code


# -- ledger and resume ------------------------------------------------------------------


def test_resume_offset() -> None:
    assert resume_offset(100, 1000) == 100
    assert resume_offset(100, None) == 100
    assert resume_offset(2000, 1000) == 0  # not a prefix of this upload


def test_final_mode() -> None:
    assert final_mode(None) == 0o644
    assert final_mode(None, 0o077) == 0o600
    assert final_mode(0o100750) == 0o750
    assert final_mode(0o104755) == 0o755  # set-id bits are not carried over


def test_ledger_limits_and_end_check() -> None:
    assert code_of(Ledger, 0, 11, 10) == "too_large"
    ledger = Ledger(4, 10, 100)
    ledger.add(6)
    assert code_of(ledger.add, 1) == "size_mismatch"
    unlimited = Ledger(0, None, 5)
    assert code_of(unlimited.add, 6) == "too_large"
    good = Ledger(0, 3, 10)
    good.add(3)
    digest = hashlib.sha256(b"abc").hexdigest()
    good.finish(3, digest, digest)
    assert code_of(good.finish, 4, digest, digest) == "size_mismatch"
    assert code_of(good.finish, "3", digest, digest) == "size_mismatch"
    assert code_of(good.finish, 3, "0" * 64, digest) == "checksum"


# -- control frames ---------------------------------------------------------------------


def test_control_frames_parse() -> None:
    digest = "0" * 64
    assert decode_file_frame('{"type":"ready","offset":5,"path":"/a"}') == FileReady(
        offset=5, path="/a"
    )
    assert isinstance(decode_file_frame(FileEnd(size=1, sha256=digest).model_dump_json()), FileEnd)
    assert isinstance(
        decode_file_frame(FileDone(size=1, sha256=digest).model_dump_json()), FileDone
    )
    assert decode_file_frame('{"type":"error","code":"exists","message":"m"}') == FileError(
        code="exists", message="m"
    )
    for bad in ('{"type":"end","size":1,"sha256":"xyz"}', '{"type":"nope"}', "[]", "{"):
        with pytest.raises(ValidationError):
            decode_file_frame(bad)
