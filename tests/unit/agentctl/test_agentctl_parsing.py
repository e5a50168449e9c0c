"""Argument parsing: `--` handling, default `exec` verb, env pairs, usage errors (exit 2)."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from fleetgate.agentctl.commands.exec_cmd import command_words, remote_line
from fleetgate.agentctl.errors import UsageError
from fleetgate.agentctl.main import (
    build_parser,
    insert_default_verb,
    main,
    parse_args,
    split_remote,
)


def parse(*argv: str) -> argparse.Namespace:
    return parse_args(build_parser(), argv)


def run_main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), env={"AGENTCTL_CONFIG": "/nonexistent"}, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_split_remote_at_first_double_dash() -> None:
    assert split_remote(["exec", "a", "--", "echo", "--", "x"]) == (
        ["exec", "a"],
        ["echo", "--", "x"],
    )
    assert split_remote(["exec", "a"]) == (["exec", "a"], None)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["exec", "web", "--", "id"], ["exec", "run", "web", "--", "id"]),
        (["--output", "json", "exec", "web"], ["--output", "json", "exec", "run", "web"]),
        (["--config=x", "exec", "-u", "a", "web"], ["--config=x", "exec", "run", "-u", "a", "web"]),
        (["exec", "logs", "ID"], ["exec", "logs", "ID"]),
        (["exec", "ls"], ["exec", "ls"]),
        (["exec", "history"], ["exec", "history"]),
        (["exec"], ["exec", "run"]),
        (["whoami"], ["whoami"]),
    ],
)
def test_insert_default_verb(argv: list[str], expected: list[str]) -> None:
    assert insert_default_verb(argv) == expected


def test_exec_with_double_dash_keeps_remote_words_verbatim() -> None:
    args = parse("exec", "web-01", "-u", "deploy", "-g", "www", "--", "ls", "-la", "--", "-u")
    assert args.server == "web-01"
    assert args.user == "deploy"
    assert args.group == "www"
    assert args.remote_argv == ["ls", "-la", "--", "-u"]
    assert command_words(args) == ["ls", "-la", "--", "-u"]


def test_exec_options_before_server_and_env_timeout_detach() -> None:
    args = parse(
        "exec", "--env", "A=1", "--env", "B=x=y", "--timeout", "5", "--detach", "web", "--", "true"
    )
    assert args.env == [("A", "1"), ("B", "x=y")]
    assert args.timeout == 5
    assert args.detach is True
    assert args.server == "web"


def test_exec_plain_words_without_double_dash() -> None:
    args = parse("exec", "web", "uptime")
    assert command_words(args) == ["uptime"]


def test_exec_option_like_word_without_double_dash_is_usage_error() -> None:
    with pytest.raises(UsageError, match="after `--`"):
        parse("exec", "web", "uname", "-a")


def test_exec_words_on_both_sides_of_double_dash_is_usage_error() -> None:
    args = parse("exec", "web", "uname", "--", "-a")
    with pytest.raises(UsageError, match="before `--`"):
        command_words(args)


def test_double_dash_on_a_command_without_remote_part_is_usage_error() -> None:
    with pytest.raises(UsageError, match="only valid before a remote command"):
        parse("whoami", "--", "x")


@pytest.mark.parametrize(
    ("words", "line"),
    [
        (["id", "-un"], "id -un"),
        (["sh", "-c", "'exit 7'"], "sh -c 'exit 7'"),
        (["echo hello | tr a-z A-Z"], "echo hello | tr a-z A-Z"),  # one argument: as is
    ],
)
def test_remote_line_joins_with_single_spaces(words: list[str], line: str) -> None:
    assert remote_line(words) == line


def test_remote_line_requires_a_command() -> None:
    with pytest.raises(UsageError, match="remote command is required"):
        remote_line([])
    with pytest.raises(UsageError):
        remote_line(["  "])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["exec", "web", "--env", "NOEQUALS", "--", "true"], "expected K=V"),
        (["exec", "web", "--env", "1BAD=x", "--", "true"], "invalid variable name"),
        (["exec", "web", "--env", "=x", "--", "true"], "invalid variable name"),
        (["exec", "web", "--timeout", "0", "--", "true"], "positive integer"),
        (["exec", "ls", "--tail", "-3"], "positive integer"),
        (["exec", "ls", "-n", "zero"], "positive integer"),
        (["--output", "xml", "whoami"], "invalid choice"),
        (["nosuchcommand"], "invalid choice"),
        (["server"], "required"),
        ([], "required"),
    ],
)
def test_usage_errors_exit_2_with_message_on_stderr(argv: list[str], message: str) -> None:
    code, out, err = run_main(*argv)
    assert code == 2
    assert out == ""
    assert message in err
    assert "usage:" in err


def test_usage_error_with_output_json_is_a_json_diagnostic() -> None:
    code, out, err = run_main("--output", "json", "exec", "web", "--env", "BAD", "--", "true")
    assert code == 2
    assert out == ""
    diag = json.loads(err)
    assert diag["error_code"] == "usage"
    assert "expected K=V" in diag["reason"]
    assert set(diag) >= {"error_code", "reason", "context", "next_actions"}


def test_output_flag_is_accepted_before_and_after_the_subcommand() -> None:
    assert parse("--output", "json", "exec", "ls").output == "json"
    assert parse("exec", "ls", "--output", "json").output == "json"
    assert parse("exec", "ls").output == "table"
    assert parse("--output", "json", "exec", "ls", "--tail", "3").output == "json"


def test_output_json_after_double_dash_belongs_to_the_remote_command() -> None:
    args = parse("exec", "web", "--", "tool", "--output", "json")
    assert args.output == "table"
    assert args.remote_argv == ["tool", "--output", "json"]


def test_exec_verbs_and_aliases() -> None:
    assert parse("exec", "logs", "abc").command_id == "abc"
    ls = parse("exec", "history", "-s", "web", "-n", "5", "--search", "df")
    assert (ls.server, ls.tail, ls.search) == ("web", 5, "df")
    assert parse("exec", "ls").tail == 25
    assert parse("exec", "list").handler is ls.handler


def test_servers_alias_and_server_ls_share_a_handler() -> None:
    assert parse("servers").handler is parse("server", "ls").handler


def test_login_requires_exactly_one_credential_source() -> None:
    assert parse("login", "https://cp", "--token", "t").token == "t"
    assert parse("login", "https://cp", "--token-stdin").token_stdin is True
    assert parse("login", "https://cp", "--username", "bob").username == "bob"
    with pytest.raises(UsageError, match="one of the arguments"):
        parse("login", "https://cp")
    with pytest.raises(UsageError, match="not allowed with"):
        parse("login", "https://cp", "--token", "t", "--username", "bob")


def test_help_and_version_exit_0() -> None:
    code, out, _ = run_main("--help")
    assert code == 0
    assert "exec" in out
    code, out, _ = run_main("exec", "--help")
    assert code == 0
    assert "SERVER [--] CMD..." in out
    code, out, _ = run_main("--version")
    assert code == 0
    assert out.startswith("agentctl ")
