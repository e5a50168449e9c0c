"""Each command end to end through main(), against the in-memory FakeApi (no sockets)."""

from __future__ import annotations

import io
import json
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from fleetgate.agentctl import config as cfg
from fleetgate.agentctl.main import main
from tests.unit.agentctl.agentctl_fakes import (
    SERVER_ID,
    TOKEN,
    URL,
    FakeApi,
    StreamScript,
    make_command,
    ndjson,
    run,
)


def _stream(*events: dict[str, Any]) -> StreamScript:
    return lambda request: httpx.Response(200, content=ndjson(*events))


def _finished(**kwargs: Any) -> dict[str, Any]:
    return {"event": "finished", "command": make_command("c-1", **kwargs)}


def test_exec_streams_output_and_exits_with_the_remote_code() -> None:
    api = FakeApi()
    api.streams.append(
        _stream(
            {"event": "output", "seq": 0, "content": "hello\n"},
            {"event": "output", "seq": 0, "content": "hello\n"},
            {"event": "output", "seq": 1, "content": "world\n"},
            _finished(exit_code=7, text="Failed"),
        )
    )
    code, out, err = run(
        api,
        "exec",
        "web-01",
        "-u",
        "deploy",
        "--env",
        "A=1",
        "--timeout",
        "9",
        "--",
        "sh",
        "-c",
        "'exit 7'",
    )
    assert (code, out, err) == (7, "hello\nworld\n", "")
    (body,) = api.posted("/api/events/commands/")
    assert body == {
        "server": "web-01",
        "line": "sh -c 'exit 7'",
        "shell": "system",
        "username": "deploy",
        "groupname": "",
        "env": {"A": "1"},
        "scheduled_at": None,
        "timeout": 9,
    }


def test_exec_error_phase_goes_to_stderr() -> None:
    api = FakeApi()
    api.streams.append(
        _stream(
            _finished(
                exit_code=None, text="Error", error_phase="start", message="no such user: zz"
            ),
        )
    )
    code, out, err = run(api, "exec", "web-01", "-u", "zz", "--", "true")
    assert (code, out) == (1, "")
    assert err == "agentctl: Error: no such user: zz\n"


def test_exec_output_json_prints_one_document() -> None:
    api = FakeApi()
    api.streams.append(
        _stream(
            {"event": "output", "seq": 0, "content": "root\n"},
            _finished(exit_code=0),
        )
    )
    code, out, err = run(api, "--output", "json", "exec", "web-01", "--", "id", "-un")
    assert (code, err) == (0, "")
    doc = json.loads(out)
    assert doc["id"] == "c-1"
    assert doc["output"] == "root\n"
    assert doc["status"] == "Success"
    assert {
        "exit_code",
        "success",
        "elapsed_time",
        "delivered_at",
        "acked_at",
        "handled_at",
        "response_delay",
    } <= set(doc)


def test_exec_detach_prints_the_id() -> None:
    api = FakeApi()
    code, out, err = run(api, "exec", "--detach", "web-01", "--", "sleep", "60")
    assert (code, out) == (0, "c-1\n")
    assert "agentctl exec logs c-1" in err
    code, out, _ = run(api, "exec", "--detach", "web-01", "--output", "json", "--", "sleep", "1")
    assert (code, json.loads(out)) == (0, {"id": "c-1"})


def test_exec_ctrl_c_prints_how_to_find_the_command() -> None:
    class Interrupting(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            raise KeyboardInterrupt
            yield b""  # a generator: the interrupt comes while reading the stream

    def interrupt(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Interrupting())

    api = FakeApi()
    api.streams.append(interrupt)
    code, out, err = run(api, "exec", "web-01", "--", "sleep", "100")
    assert (code, out) == (130, "")
    assert "c-1" in err
    assert "agentctl exec logs c-1" in err


def test_exec_unknown_server_exits_1_with_json_diagnostic() -> None:
    code, out, err = run(FakeApi(), "--output", "json", "exec", "nope", "--", "true")
    assert (code, out) == (1, "")
    diag = json.loads(err)
    assert diag["error_code"] == "SERVER_NOT_FOUND"
    assert diag["context"]["server"] == "nope"
    assert diag["next_actions"] == [
        {
            "command": "agentctl server ls",
            "description": "list servers and whether they are connected",
        }
    ]


def test_exec_gate_denial_exits_3() -> None:
    api = FakeApi()
    api.errors[("POST", "/api/events/commands/")] = httpx.Response(
        403,
        json={
            "code": "work_session_required",
            "source": "command",
            "detail": "WorkSession required",
        },
    )
    code, _, err = run(api, "exec", "web-01", "--", "true")
    assert code == 3
    assert "no work session selected for this shell" in err
    code, _, err = run(api, "exec", "web-01", "--output", "json", "--", "true")
    assert code == 3
    diag = json.loads(err)
    assert diag["error_code"] == "work_session_required"
    assert diag["context"]["target_servers"] == ["web-01"]


def test_bad_token_hints_at_login() -> None:
    code, out, err = run(FakeApi(), "whoami", env={"AGENTCTL_TOKEN": "wrong"})
    assert (code, out) == (1, "")
    assert "bad token (AUTHENTICATION_FAILED)" in err
    assert f"agentctl login {URL}" in err


def test_unreachable_control_plane() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    api = FakeApi()
    api.handle = refuse  # type: ignore[method-assign]
    code, _, err = run(api, "whoami")
    assert code == 1
    assert err == f"agentctl: cannot reach {URL}: [Errno 111] Connection refused\n"


def test_not_logged_in() -> None:
    code, _, err = run(FakeApi(), "whoami", env={"AGENTCTL_TOKEN": ""})
    assert code == 1
    assert "not logged in" in err
    assert TOKEN not in err


def test_exec_logs_rebuilds_output_and_exits_with_its_code() -> None:
    api = FakeApi(commands={"c-1": make_command(exit_code=3, text="Failed", result="legacy")})
    api.chunks["c-1"] = [{"seq": 1, "content": "b"}, {"seq": 0, "content": "a"}]
    assert run(api, "exec", "logs", "c-1") == (3, "ab", "")
    api.chunks.clear()  # no chunk: fall back to `result`
    assert run(api, "exec", "logs", "c-1") == (3, "legacy", "")
    code, out, _ = run(api, "exec", "logs", "c-1", "--output", "json")
    assert (code, json.loads(out)["output"]) == (3, "legacy")


def test_exec_logs_of_a_running_command_exits_0_with_a_hint() -> None:
    api = FakeApi(commands={"c-1": make_command(exit_code=None, text="Running")})
    api.chunks["c-1"] = [{"seq": 0, "content": "partial"}]
    code, out, err = run(api, "exec", "logs", "c-1")
    assert (code, out) == (0, "partial")
    assert "Running" in err


def test_exec_logs_unknown_id() -> None:
    code, _, err = run(FakeApi(), "exec", "logs", "zzz")
    assert code == 1
    assert "(COMMAND_NOT_FOUND)" in err


def test_exec_ls_table_and_filters() -> None:
    api = FakeApi(commands={"c-1": make_command(line="df -h")})
    code, out, _ = run(api, "exec", "ls", "-s", "web-01", "-n", "5", "--search", "df")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == [
        "SERVER",
        "COMMAND",
        "USER",
        "STATUS",
        "EXIT",
        "ELAPSED",
        "REQUESTED",
        "AT",
    ]
    assert lines[1].startswith("web-01  df -h")
    listing = next(r for r in api.requests if r.url.path == "/api/events/commands/")
    assert listing.url.params["server"] == SERVER_ID
    assert listing.url.params["search"] == "df"
    assert listing.url.params["ordering"] == "-added_at"
    assert listing.url.params["page_size"] == "5"


def test_exec_history_json_is_the_list() -> None:
    api = FakeApi(commands={"c-1": make_command()})
    code, out, _ = run(api, "exec", "history", "--output", "json")
    assert code == 0
    assert [c["id"] for c in json.loads(out)] == ["c-1"]


def test_server_ls_and_whoami() -> None:
    code, out, _ = run(FakeApi(), "servers")
    assert code == 0
    assert out.splitlines()[0].split() == ["NAME", "ID", "CONNECTED", "AGENT", "LAST", "SEEN"]
    assert out.splitlines()[1].split() == ["web-01", SERVER_ID, "yes", "0.1.0"]
    code, out, _ = run(FakeApi(), "server", "ls", "--output", "json")
    assert json.loads(out)[0]["name"] == "web-01"
    code, out, _ = run(FakeApi(), "whoami")
    assert code == 0
    assert "User:" in out
    assert "admin" in out
    code, out, _ = run(FakeApi(), "--output", "json", "whoami")
    assert json.loads(out)["work_session_required"] is False


def _main_with_config(api: FakeApi, path: Path, *argv: str, stdin: str = "") -> tuple[int, str]:
    err = io.StringIO()
    code = main(
        list(argv),
        env={"AGENTCTL_CONFIG": str(path)},
        stdin=io.StringIO(stdin),
        stdout=io.StringIO(),
        stderr=err,
        transport=api.transport(),
    )
    return code, err.getvalue()


def test_login_with_token_validates_then_saves_0600(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "config.toml"
    api = FakeApi()
    code, err = _main_with_config(api, path, "login", URL, "--token", "wrong")
    assert code == 1
    assert not path.exists()
    code, err = _main_with_config(
        api, path, "login", URL + "/", "--token-stdin", stdin=TOKEN + "\n"
    )
    assert code == 0
    assert "admin" in err
    assert TOKEN not in err
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    saved = cfg.load_file(path)
    assert saved.url == URL
    assert saved.token is not None
    assert saved.token.get_secret_value() == TOKEN
    # logout keeps the URL, drops the token
    code, err = _main_with_config(api, path, "logout")
    assert code == 0
    assert cfg.load_file(path).token is None
    assert cfg.load_file(path).url == URL


def test_login_with_username_reads_the_password_from_stdin(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    api = FakeApi()
    code, _ = _main_with_config(api, path, "login", URL, "--username", "admin", stdin="pw\n")
    assert code == 0
    assert api.posted("/api/auth/login/") == [{"username": "admin", "password": "pw"}]
    token = cfg.load_file(path).token
    assert token is not None
    assert token.get_secret_value() == TOKEN


def test_json_mode_keeps_stderr_machine_readable() -> None:
    api = FakeApi()
    api.streams.append(_stream(_finished(exit_code=124, text="Timed out", error_phase="timeout")))
    code, out, err = run(api, "--output", "json", "exec", "web-01", "--", "sleep", "9")
    assert (code, err) == (124, "")
    assert json.loads(out)["error_phase"] == "timeout"

    class Interrupting(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            raise KeyboardInterrupt
            yield b""  # a generator: the interrupt comes while reading the stream

    def interrupt(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Interrupting())

    api.streams.append(interrupt)
    code, out, err = run(api, "--output", "json", "exec", "web-01", "--", "sleep", "9")
    assert (code, out) == (130, "")
    diag = json.loads(err)
    assert diag["error_code"] == "interrupted"
    assert diag["next_actions"][0]["command"] == "agentctl exec logs c-1"


def test_whether_a_token_is_gated_is_asked_once_and_kept(tmp_path: Path) -> None:
    """An API token's gating depends on who made it: agentctl asks `whoami` the first time
    a session is selected with it, keeps the answer beside the selection, and with an
    ungated token says the session is not used (and does not send it)."""
    api = FakeApi()
    api.me["gated"] = False
    env = {"AGENTCTL_CONFIG": str(tmp_path / "config.toml")}
    for _ in range(2):
        api.streams.append(_stream(_finished()))
        code, out, err = run(api, "exec", "--work-session", "ws-1", "web-01", "--", "id", env=env)
        assert (code, out) == (0, ""), err
        assert err.startswith("agentctl: note: this token is not gated by work sessions")
        assert "ws-1 (from --work-session) is not used" in err
    whoamis = [r for r in api.requests if r.url.path == "/api/auth/whoami/"]
    assert len(whoamis) == 1  # the second run used the kept answer
    assert all("work_session" not in body for body in api.posted("/api/events/commands/"))
    kept = tmp_path / "config.sessions.json"
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert TOKEN not in kept.read_text()  # a fingerprint of the token, never the token


def test_a_gated_api_token_sends_its_session_without_a_note(tmp_path: Path) -> None:
    api = FakeApi()
    api.me["gated"] = True
    api.streams.append(_stream(_finished()))
    env = {"AGENTCTL_CONFIG": str(tmp_path / "config.toml")}
    code, _, err = run(api, "exec", "--work-session", "ws-1", "web-01", "--", "id", env=env)
    assert (code, err) == (0, "")
    (body,) = api.posted("/api/events/commands/")
    assert body["work_session"] == "ws-1"
