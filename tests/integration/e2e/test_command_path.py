"""The command path end to end: API → control plane → agent → process → reports → API."""

from __future__ import annotations

import os
import time
import uuid
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.integration.e2e.commands import run_command
from tests.support.agent import SENTINEL_ENV, AgentProcess
from tests.support.controlplane import ControlPlaneProcess
from tests.support.users import require_root, temporary_user


def process_gone(pid: int, timeout: float = 10.0) -> bool:
    """Whether ``pid`` is gone (or a zombie awaiting its reaper) within ``timeout``.

    An orphan killed by SIGKILL is reaped by init asynchronously, so poll for a bounded time.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in {"Z", "X"}:
            return True
        time.sleep(0.02)
    return False


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value)


@pytest.mark.root
def test_id_un_prints_root(api: httpx.Client, server: str) -> None:
    """The acceptance example: `id -un` runs as root by default."""
    require_root()
    command = run_command(api, server, "id -un")
    assert command["streamed"] == "root\n"
    assert command["result"] == "root\n"
    assert (command["exit_code"], command["success"]) == (0, True)
    assert command["status"]["text"] == "Success"


def test_timestamps_are_ordered_and_elapsed_matches(api: httpx.Client, server: str) -> None:
    """delivered <= acked <= handled, and elapsed_time agrees with handled - acked."""
    command = run_command(api, server, "sleep 0.3")
    delivered, acked, handled = (
        ts(command["delivered_at"]),
        ts(command["acked_at"]),
        ts(command["handled_at"]),
    )
    added = ts(command["added_at"])
    assert added <= delivered <= acked <= handled
    # The clock starts once spawn returns, a moment after the child began sleeping.
    assert command["elapsed_time"] >= 0.25
    assert abs((handled - acked).total_seconds() - command["elapsed_time"]) < 0.25
    assert command["response_delay"] == pytest.approx(
        (acked - ts(command["scheduled_at"])).total_seconds(), abs=0.01
    )


def test_the_daemon_environment_never_reaches_a_command(api: httpx.Client, server: str) -> None:
    """A variable of the agent's own environment is absent; the command's env is present."""
    command = run_command(api, server, "env", env={"GREETING": "hi there"})
    variables = dict(line.split("=", 1) for line in command["result"].splitlines() if "=" in line)
    assert SENTINEL_ENV[0] not in variables
    assert variables["GREETING"] == "hi there"
    assert variables["LANG"] == "C.UTF-8"
    assert {"PATH", "HOME", "USER", "LOGNAME", "SHELL"} <= variables.keys()


def test_five_mebibytes_arrive_complete_and_the_result_is_capped(
    api: httpx.Client, server: str
) -> None:
    """All 5 MiB stream through in ordered chunks; the stored result is head+tail 1 MiB."""
    size = 5 * 1024 * 1024
    # Lines of varying digits, so a reordered or missing chunk changes the text.
    line = (
        "python3 -c \"import sys; sys.stdout.write(''.join('%09d\\n' % i for i in range(524288)))\""
    )
    command = run_command(api, server, line)
    expected = "".join(f"{i:09d}\n" for i in range(524288))
    assert len(expected) == size
    assert command["streamed"] == expected
    assert command["seqs"] == list(range(len(command["seqs"])))
    assert len(command["seqs"]) >= size // 4096 // 2
    assert command["truncated"] is True
    half = 512 * 1024
    assert command["result"].startswith(expected[:half])
    assert command["result"].endswith(expected[-half:])
    assert "bytes truncated" in command["result"]
    assert len(command["result"].encode()) < 1024 * 1024 + 200


def test_a_timeout_kills_the_whole_tree_and_reports_124(
    api: httpx.Client, server: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """SIGTERM then SIGKILL reach a backgrounded grandchild too; exit code 124."""
    pid_file = tmp_path_factory.mktemp("tree") / "grandchild.pid"
    os.chmod(pid_file.parent, 0o777)
    started = time.monotonic()
    command = run_command(
        api,
        server,
        f"sh -c 'trap \"\" TERM; sleep 300' & echo $! > {pid_file}; sleep 300",
        timeout=1,
    )
    assert time.monotonic() - started < 30
    assert command["exit_code"] == 124
    assert command["error_phase"] == "timeout"
    assert command["status"]["text"] == "Timed out"
    assert process_gone(int(pid_file.read_text()))


def test_a_missing_binary_and_an_unknown_user_still_finish(api: httpx.Client, server: str) -> None:
    """Commands that cannot run get one final result with a clear message."""
    missing = run_command(api, server, "no-such-binary-here")
    assert missing["exit_code"] == 127
    assert "not found" in missing["result"]
    unknown = run_command(api, server, "id", username="no-such-user-x")
    assert unknown["success"] is False
    assert unknown["error_phase"] == "start"
    assert "no-such-user-x" in unknown["status"]["message"]
    assert unknown["status"]["text"] == "Error"


@pytest.mark.root
def test_a_command_runs_with_exactly_the_users_identity(api: httpx.Client, server: str) -> None:
    """uid, gid, supplementary groups, HOME and cwd are the requested user's, no more."""
    with temporary_user() as user:
        command = run_command(
            api, server, "id -u; id -g; id -G; pwd; echo $HOME $USER", username=user.name
        )
        uid, gid, groups, cwd, env = command["result"].splitlines()
        assert (int(uid), int(gid)) == (user.uid, user.gid)
        assert sorted(int(g) for g in groups.split()) == sorted(user.groups)
        assert cwd == user.home
        assert env == f"{user.home} {user.name}"
        assert command["username"] == user.name

        as_group = run_command(api, server, "id -g", username=user.name, groupname=user.group_name)
        assert as_group["result"] == f"{user.group_gid}\n"

        refused = run_command(api, server, "id", username=user.name, groupname="root")
        assert refused["error_phase"] == "start"
        assert refused["result"] == ""


def _database_files(db: Path) -> list[Path]:
    return [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]


def test_a_commands_env_is_erased_from_both_databases_when_it_finishes(
    stack: tuple[ControlPlaneProcess, AgentProcess], api: httpx.Client, server: str
) -> None:
    """Issue 14 finding 5/7: env values stayed in the SQLite ``-wal`` files (and in free
    pages) until some later checkpoint; now no byte of them is left once it finished."""
    cp, agent = stack
    secret = f"s3cret-{uuid.uuid4().hex}"
    command = run_command(
        api,
        server,
        'test "$TOKEN" = ' + secret[:7] + '"$REST"',
        env={"TOKEN": secret, "REST": secret[7:]},
    )
    assert command["exit_code"] == 0  # the env reached the command
    files = _database_files(cp.db_path) + _database_files(agent.workdir / "state" / "spool.db")
    assert cp.db_path.exists()
    assert (agent.workdir / "state" / "spool.db").exists()
    for path in files:
        if path.exists():
            assert secret.encode() not in path.read_bytes(), path
            assert secret[7:].encode() not in path.read_bytes(), path
