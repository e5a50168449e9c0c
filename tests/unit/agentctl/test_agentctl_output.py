"""Table formatting, cell helpers and the rows of each listing."""

from __future__ import annotations

from datetime import UTC, timedelta, timezone

from fleetgate.agentctl.commands.auth import whoami_rows
from fleetgate.agentctl.commands.exec_history import history_rows
from fleetgate.agentctl.commands.servers import server_rows
from fleetgate.agentctl.output import (
    clean_cell,
    format_seconds,
    format_timestamp,
    render_table,
    truncate,
)
from fleetgate.agentctl.results import is_finished, outcome, result_document
from tests.unit.agentctl.agentctl_fakes import make_command


def test_render_table_aligns_columns_without_trailing_spaces() -> None:
    text = render_table(("NAME", "ID"), [("web-01", "1"), ("db", "22222")])
    assert text == "NAME    ID\nweb-01  1\ndb      22222\n"


def test_render_table_empty_has_headers_only() -> None:
    assert render_table(("A", "B"), []) == "A  B\n"


def test_cells_lose_newlines_and_control_characters() -> None:
    assert clean_cell("a\nb\tc\x1b[31mred\x07") == "a b c[31mred"
    assert clean_cell(None) == ""
    assert clean_cell(3) == "3"


def test_truncate_marks_the_cut() -> None:
    assert truncate("abcdef", 6) == "abcdef"
    assert truncate("abcdefg", 6) == "abcde…"
    assert len(truncate("x" * 100, 60)) == 60


def test_format_seconds() -> None:
    assert format_seconds(None) == ""
    assert format_seconds(0.00042) == "0.4ms"
    assert format_seconds(0.023) == "0.023s"
    assert format_seconds(12.53) == "12.5s"
    assert format_seconds(185) == "3m05s"
    assert format_seconds(7260) == "2h01m"


def test_format_timestamp_converts_to_the_given_zone() -> None:
    assert format_timestamp("2024-01-15T10:30:44Z", UTC) == "2024-01-15 10:30:44"
    plus2 = timezone(timedelta(hours=2))
    assert format_timestamp("2024-01-15T10:30:44.5+00:00", plus2) == "2024-01-15 12:30:44"
    assert format_timestamp(None) == ""
    assert format_timestamp("garbage") == "garbage"


def test_history_rows_cut_the_command_to_60() -> None:
    long_line = "echo " + "x" * 100
    rows = history_rows([make_command(line=long_line, exit_code=2, text="Failed")])
    server, command, user, status, exit_code, elapsed, _ = rows[0]
    assert (server, user, status, exit_code, elapsed) == ("web-01", "root", "Failed", "2", "0.023s")
    assert len(command) == 60
    assert command.endswith("…")
    table = render_table(("SERVER", "COMMAND"), [r[:2] for r in rows])
    assert "\n" not in table.rstrip("\n").split("\n", 1)[1]


def test_history_rows_running_command_has_no_exit_code() -> None:
    rows = history_rows([make_command(exit_code=None, text="Running")])
    assert rows[0][4] == ""


def test_server_rows() -> None:
    rows = server_rows(
        [
            {
                "id": "u-1",
                "name": "web-01",
                "is_connected": False,
                "agent_version": None,
                "last_seen_at": None,
            }
        ]
    )
    assert rows == [["web-01", "u-1", "no", "", ""]]


def test_whoami_rows_skip_empty_values() -> None:
    rows = dict(
        whoami_rows(
            {
                "username": "bob",
                "is_superuser": False,
                "auth_method": "login",
                "work_session_required": True,
                "email": "",
            }
        )
    )
    assert rows["User"] == "bob"
    assert rows["Superuser"] == "no"
    assert rows["Auth"] == "login"
    assert rows["WS required"].startswith("yes")
    assert "Email" not in rows
    assert "ACL" not in rows


def test_whoami_rows_show_the_server_account_and_the_acl() -> None:
    me = {
        "username": "ci",
        "server_username": "deploy",
        "acl": {"command": ["uptime"], "env": [], "websh": False, "tunnel": None},
    }
    rows = dict(whoami_rows(me))
    assert rows["Server user"] == "deploy"
    assert rows["ACL"] == "restricted: command"
    assert dict(whoami_rows({**me, "acl": {"command": None}}))["ACL"] == "restricted: nothing"


def test_outcome_passes_the_remote_exit_code_through() -> None:
    assert outcome(make_command(exit_code=0)) == (0, None)
    assert outcome(make_command(exit_code=7, text="Failed")) == (7, None)


def test_outcome_explains_error_phases() -> None:
    code, line = outcome(
        make_command(
            exit_code=124, text="Timed out", error_phase="timeout", message="timed out after 5 s"
        )
    )
    assert (code, line) == (124, "agentctl: Timed out: timed out after 5 s")
    code, line = outcome(
        make_command(
            exit_code=None, text="Error", error_phase="start", message="no such user: nobody2"
        )
    )
    assert (code, line) == (1, "agentctl: Error: no such user: nobody2")
    code, line = outcome(make_command(exit_code=None, text="Cancelled", message="cancelled"))
    assert code == 1
    assert line == "agentctl: Cancelled: cancelled"


def test_is_finished() -> None:
    assert is_finished(make_command(text="Success"))
    assert is_finished(make_command(text="Timed out"))
    assert not is_finished(make_command(text="Running"))
    assert not is_finished({"status": "queued"})


def test_result_document_shape() -> None:
    doc = result_document(make_command("c-9", exit_code=0), "out\n")
    assert list(doc) == [
        "id",
        "exit_code",
        "success",
        "status",
        "elapsed_time",
        "delivered_at",
        "acked_at",
        "handled_at",
        "response_delay",
        "error_phase",
        "output",
    ]
    assert doc["status"] == "Success"
    assert doc["output"] == "out\n"
