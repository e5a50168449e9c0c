"""The pure parts of `agentctl exec -s/-l`: line prefixes, exit code, summary."""

from __future__ import annotations

from typing import Any

from fleetgate.agentctl.fanout import LinePrefixer, fanout_exit_code, summary


def _cmd(name: str, exit_code: int | None, *, error_phase: str | None = None) -> dict[str, Any]:
    return {
        "server_name": name,
        "exit_code": exit_code,
        "success": exit_code == 0 and error_phase is None,
        "error_phase": error_phase,
        "status": {"text": "Failed" if exit_code else "Success", "message": ""},
    }


def test_prefixer_prints_whole_lines_per_server() -> None:
    p = LinePrefixer(width=6)
    assert p.feed("web-01", "a\nb") == "web-01: a\n"
    assert p.feed("db", "x\n") == "db    : x\n"
    assert p.feed("web-01", "c\nd\n") == "web-01: bc\nweb-01: d\n"
    assert p.feed("db", "tail") == ""
    assert p.flush("db") == "db    : tail\n"
    assert p.flush("db") == ""
    assert p.flush("web-01") == ""


def test_exit_code_is_zero_only_when_all_succeeded() -> None:
    assert fanout_exit_code([_cmd("a", 0), _cmd("b", 0)]) == 0
    assert fanout_exit_code([_cmd("a", 0), _cmd("b", 3), _cmd("c", 2)]) == 3
    assert fanout_exit_code([_cmd("a", 0), _cmd("b", None, error_phase="cancelled")]) == 1
    assert fanout_exit_code([]) == 0


def test_summary_names_the_failed_servers() -> None:
    text = summary([_cmd("web-02", 3), _cmd("web-01", 0)], 2)
    assert text == "2 servers: 1 succeeded, 1 failed (web-02: exit 3)"
    many = [_cmd(f"s{i:02}", 1) for i in range(12)]
    text = summary(many, 13)
    assert text.startswith("13 servers: 0 succeeded, 12 failed, 1 without a result (s00: exit 1")
    assert text.endswith("and 2 more)")
    assert summary([_cmd("a", 0)], 1) == "1 server: 1 succeeded, 0 failed"
