"""`agentctl exec -s ...` and `exec -l ...` as a real subprocess against a real control
plane with three real agents: prefixed and grouped output, the summary, JSON lines and
the exit code with one failing server."""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.fanout.conftest import DB, WEB, Fleet
from tests.support.agentctl import AgentctlRunner


def _cli(fleet: Fleet) -> AgentctlRunner:
    return AgentctlRunner(fleet.cp, fleet.agentctl_env)


def test_exec_on_a_list_prefixes_each_line_with_its_server(fleet: Fleet) -> None:
    result = _cli(fleet).run("exec", "-s", ",".join(WEB), "--", "printf 'one\\ntwo\\n'")
    assert result.returncode == 0, result.stderr
    lines = sorted(result.stdout.splitlines())
    assert lines == sorted(f"{name}: {word}" for name in WEB for word in ("one", "two"))
    assert "2 servers: 2 succeeded, 0 failed" in result.stderr


def test_exec_by_label_grouped(fleet: Fleet) -> None:
    result = _cli(fleet).run("exec", "-l", "role=web", "--grouped", "--", "echo grouped")
    assert result.returncode == 0, result.stderr
    blocks = result.stdout.split("=== ")[1:]
    assert sorted(blocks) == sorted(f"{name} ===\ngrouped\n" for name in WEB)
    assert DB not in result.stdout


def test_exit_code_is_the_highest_remote_one_with_one_failing_server(
    fleet: Fleet, tmp_path: Path
) -> None:
    marker = tmp_path / "first"  # mkdir is atomic: exactly one server wins
    line = f"mkdir {marker} 2>/dev/null && echo won || {{ echo lost; exit 7; }}"
    result = _cli(fleet).run("exec", "-s", ",".join(WEB), "--", line)
    assert result.returncode == 7, result.stderr
    assert "2 servers: 1 succeeded, 1 failed" in result.stderr
    assert "exit 7" in result.stderr
    assert sorted(line.split(": ", 1)[1] for line in result.stdout.splitlines()) == [
        "lost",
        "won",
    ]


def test_json_output_is_one_object_per_server(fleet: Fleet) -> None:
    result = _cli(fleet).run("exec", "-l", "role", "--output", "json", "--", "echo j; exit 0")
    assert result.returncode == 0, result.stderr
    docs = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(d["server_name"] for d in docs) == sorted([*WEB, DB])
    assert all(d["output"] == "j\n" and d["exit_code"] == 0 for d in docs)


def test_bad_targets_fail_before_anything_runs(fleet: Fleet) -> None:
    before = fleet.command_count()
    result = _cli(fleet).run("exec", "-s", "web-01,ghost", "--output", "json", "--", "true")
    assert result.returncode == 1
    assert "ghost" in result.stderr
    assert "SERVER_NOT_FOUND" in result.stderr or "server_not_found" in result.stderr.lower()
    usage = _cli(fleet).run("exec", "-s", "web-01", "-l", "role=web", "--", "true")
    assert usage.returncode == 2
    assert fleet.command_count() == before
