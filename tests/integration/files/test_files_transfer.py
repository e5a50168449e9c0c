"""agentctl cp and edit through the whole stack: agentctl, control plane, agent, worker.

Every transfer runs on the server as a temporary user (``-u``), so the kernel checks it;
files are real, up to 1 GiB.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from tests.integration.files.conftest import SERVER, FilesStack
from tests.support.controlplane import REPO_ROOT
from tests.support.files import sha256_file, write_random
from tests.support.users import CreatedUser


pytestmark = pytest.mark.root  # creates users, switches uid


GIB = 1 << 30


def owned(path: Path, user: CreatedUser, mode: int = 0o755) -> Path:
    path.mkdir(exist_ok=True)
    os.chown(path, user.uid, user.gid)
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def big_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """One 1 GiB file of random bytes (made once per module) and its SHA-256."""
    path = tmp_path_factory.mktemp("big") / "big.bin"
    digest = write_random(path, GIB)
    yield path, digest
    path.unlink()


def summary(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode == 0, result.stderr
    doc: dict[str, object] = json.loads(result.stdout)
    return doc


def failure(result: subprocess.CompletedProcess[str]) -> dict[str, object]:
    assert result.returncode != 0, result.stdout
    doc: dict[str, object] = json.loads(result.stderr.strip().splitlines()[-1])
    return doc


def test_upload_and_download_a_file(
    stack: FilesStack, area: Path, user: CreatedUser, tmp_path: Path
) -> None:
    home = owned(area / "home", user)
    local = tmp_path / "site.tar.gz"
    digest = write_random(local, 3 << 20)
    doc = summary(stack.cp_(str(local), f"{SERVER}:{home}/", "-u", user.name))
    assert doc["sha256"] == digest
    assert doc["remote_path"] == f"{home}/site.tar.gz"
    remote = home / "site.tar.gz"
    assert sha256_file(remote) == digest
    assert (remote.stat().st_uid, remote.stat().st_mode & 0o777) == (user.uid, 0o644)

    # Without --overwrite nothing is replaced, on either side.
    again = failure(stack.cp_(str(local), f"{SERVER}:{remote}", "-u", user.name))
    assert again["error_code"] == "files_exists"

    back = tmp_path / "back.tar.gz"
    doc = summary(stack.cp_(f"{SERVER}:{remote}", str(back), "-u", user.name))
    assert doc["sha256"] == digest
    assert sha256_file(back) == digest
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    refused = failure(stack.cp_(f"{SERVER}:{remote}", str(back), "-u", user.name))
    assert "exists" in str(refused["reason"])


@pytest.mark.timeout(240)
def test_one_gib_round_trip(
    stack: FilesStack, area: Path, user: CreatedUser, tmp_path: Path, big_file: tuple[Path, str]
) -> None:
    local, digest = big_file
    home = owned(area / "home", user)
    up = summary(stack.cp_(str(local), f"{SERVER}:{home}/big.bin", "-u", user.name))
    assert (up["bytes"], up["sha256"]) == (GIB, digest)
    assert sha256_file(home / "big.bin") == digest
    down = summary(
        stack.cp_(f"{SERVER}:{home}/big.bin", str(tmp_path / "big.bin"), "-u", user.name)
    )
    assert (down["bytes"], down["sha256"]) == (GIB, digest)
    assert sha256_file(tmp_path / "big.bin") == digest


def _kill_when(
    stack: FilesStack, args: tuple[str, ...], directory: Path, suffix: str, size: int
) -> None:
    """Start agentctl; SIGKILL it once a ``*suffix`` file in ``directory`` holds ``size`` bytes."""
    proc = subprocess.Popen(
        stack.argv(*args), env=stack.env, cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        parts = [p for p in directory.iterdir() if p.name.endswith(suffix)]
        if parts and parts[0].stat().st_size >= size:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            return
        if proc.poll() is not None:
            raise AssertionError("the transfer ended before it could be interrupted")
        time.sleep(0.01)
    proc.kill()
    proc.wait(10)
    raise AssertionError("the transfer did not start")


@pytest.mark.timeout(240)
def test_killed_transfers_leave_old_files_and_resume(
    stack: FilesStack, area: Path, user: CreatedUser, tmp_path: Path, big_file: tuple[Path, str]
) -> None:
    local, digest = big_file
    home = owned(area / "home", user)
    target = home / "big.bin"
    target.write_bytes(b"the old version")
    os.chown(target, user.uid, user.gid)
    args = ("cp", str(local), f"{SERVER}:{target}", "-u", user.name, "--overwrite")
    _kill_when(stack, args, home, ".fleet-part", 64 << 20)
    assert target.read_bytes() == b"the old version"
    up = summary(stack.run(*args, "--output", "json"))
    assert int(str(up["resumed_from"])) >= 64 << 20
    assert up["sha256"] == digest
    assert sha256_file(target) == digest
    assert sorted(p.name for p in home.iterdir()) == ["big.bin"]

    local_copy = tmp_path / "copy.bin"
    local_copy.write_bytes(b"old local copy")
    args = ("cp", f"{SERVER}:{target}", str(local_copy), "-u", user.name, "--overwrite")
    _kill_when(stack, args, tmp_path, ".agentctl-part", 64 << 20)
    assert local_copy.read_bytes() == b"old local copy"
    down = summary(stack.run(*args, "--output", "json"))
    assert int(str(down["resumed_from"])) >= 64 << 20
    assert sha256_file(local_copy) == digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy.bin"]


def _tree(root: Path) -> dict[str, object]:
    """A comparable picture of a tree: files' bytes, links' targets, directories."""
    picture: dict[str, object] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            picture[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            picture[rel] = "dir"
        elif path.is_fifo():
            picture[rel] = "fifo"
        else:
            picture[rel] = path.read_bytes()
    return picture


def test_directory_round_trip(
    stack: FilesStack, area: Path, user: CreatedUser, tmp_path: Path
) -> None:
    source = tmp_path / "site"
    (source / "ünïcødé" / "深い").mkdir(parents=True)
    (source / "ünïcødé" / "深い" / "日本語.txt").write_text("こんにちは")
    (source / "empty").mkdir()
    (source / "bin.dat").write_bytes(os.urandom(300_000))
    (source / "link").symlink_to("ünïcødé/深い/日本語.txt")
    (source / "dangling").symlink_to("/nowhere/at/all")
    os.mkfifo(source / "fifo")  # not content: skipped
    home = owned(area / "home", user)
    up = summary(stack.cp_("-r", str(source), f"{SERVER}:{home}/", "-u", user.name))
    assert up["remote_path"] == f"{home}/site"
    remote = home / "site"
    expected = {k: v for k, v in _tree(source).items() if k != "fifo"}
    assert _tree(remote) == expected
    assert all(p.lstat().st_uid == user.uid for p in [remote, *remote.rglob("*")])

    back = tmp_path / "back"
    summary(stack.cp_("-r", f"{SERVER}:{remote}", str(back), "-u", user.name))
    assert _tree(back) == expected


def test_edit_writes_back_only_an_unchanged_file(
    stack: FilesStack, area: Path, user: CreatedUser, tmp_path: Path
) -> None:
    home = owned(area / "home", user)
    conf = home / "app.conf"
    conf.write_text("port = 80\n")
    os.chown(conf, user.uid, user.gid)
    conf.chmod(0o640)
    editor = tmp_path / "editor"
    editor.write_text('#!/bin/sh\necho "workers = 4" >> "$1"\n')
    editor.chmod(0o755)
    done = stack.run("edit", f"{SERVER}:{conf}", "-u", user.name, env={"EDITOR": str(editor)})
    assert done.returncode == 0, done.stderr
    assert conf.read_text() == "port = 80\nworkers = 4\n"
    assert conf.stat().st_mode & 0o777 == 0o640

    unchanged = stack.run("edit", f"{SERVER}:{conf}", "-u", user.name, env={"EDITOR": "true"})
    assert unchanged.returncode == 0
    assert "unchanged" in unchanged.stderr

    # Someone changes the file while the editor is open: nothing is written back.
    racing = tmp_path / "racing"
    racing.write_text(f'#!/bin/sh\necho "port = 8080" > {conf}\necho mine >> "$1"\n')
    racing.chmod(0o755)
    lost = stack.run("edit", f"{SERVER}:{conf}", "-u", user.name, env={"EDITOR": str(racing)})
    assert lost.returncode == 1
    assert "changed on the server" in lost.stderr
    assert conf.read_text() == "port = 8080\n"
    kept = lost.stderr.rsplit("kept at ", 1)[1].split()[0]
    assert Path(kept).read_text().endswith("mine\n")


def test_refusals_are_clear(
    stack: FilesStack, area: Path, user: CreatedUser, tmp_path: Path
) -> None:
    local = tmp_path / "f"
    local.write_bytes(b"x")
    escape = failure(stack.cp_(str(local), f"{SERVER}:/tmp/../etc/evil", "-u", user.name))
    assert escape["error_code"] == "files_escape"
    assert not Path("/etc/evil").exists()

    secret = area / "secret"
    secret.write_bytes(b"root only")
    secret.chmod(0o600)
    denied = failure(stack.cp_(f"{SERVER}:{secret}", str(tmp_path / "s"), "-u", user.name))
    assert denied["error_code"] == "files_permission"
    denied = failure(stack.cp_(str(local), f"{SERVER}:{secret}", "-u", user.name, "--overwrite"))
    assert denied["error_code"] == "files_permission"
    assert secret.read_bytes() == b"root only"

    unknown = failure(stack.cp_(str(local), f"{SERVER}:/tmp/x", "-u", "nosuchuser"))
    assert unknown["error_code"] == "files_unknown_user"
    assert failure(stack.cp_(f"{SERVER}:/dev/null", str(tmp_path / "n")))["error_code"] == (
        "files_special"
    )


def test_a_refused_download_leaves_no_part_file(
    stack: FilesStack, area: Path, user: CreatedUser, tmp_path: Path
) -> None:
    """Issue 14 finding 7: a refused download left a 0-byte ``.agentctl-part`` file."""
    secret = area / "secret"
    secret.write_bytes(b"root only")
    secret.chmod(0o600)
    into = tmp_path / "into"
    into.mkdir()
    refusals = [
        (f"{SERVER}:{secret}", "files_permission"),
        (f"{SERVER}:{area}/missing", "files_not_found"),
        (f"{SERVER}:/dev/null", "files_special"),
    ]
    for remote, code in refusals:
        assert failure(stack.cp_(remote, str(into / "copy"), "-u", user.name))["error_code"] == code
    assert sorted(p.name for p in into.iterdir()) == []


def test_nul_byte_in_path_is_refused_before_the_agent_acts(stack: FilesStack) -> None:
    url = stack.cp.url.replace("http://", "ws://")
    query = f"server={SERVER}&op=upload&path={quote('/tmp/a' + chr(0) + 'b')}&user=root"
    with pytest.raises(InvalidStatus) as refused:
        connect(
            f"{url}/ws/files/?{query}",
            additional_headers={"Authorization": f'token="{stack.cp.admin_token}"'},
        )
    response = refused.value.response
    assert response.status_code == 403
    assert json.loads(response.body or b"{}")["code"] == "files_nul"


def _raw(stack: FilesStack, **params: str) -> ClientConnection:
    url = stack.cp.url.replace("http://", "ws://")
    query = "&".join(f"{k}={quote(v)}" for k, v in {"server": SERVER, **params}.items())
    return connect(
        f"{url}/ws/files/?{query}",
        additional_headers={"Authorization": f'token="{stack.cp.admin_token}"'},
        max_size=None,
    )


def test_malformed_and_oversized_frames_get_clear_errors(stack: FilesStack, area: Path) -> None:
    target = area / "f"
    with _raw(stack, op="upload", path=str(target), size="10", transfer_id="ab" * 16) as ws:
        assert json.loads(ws.recv(10))["type"] == "ready"
        ws.send("this is not json")
        error = json.loads(ws.recv(10))
        assert (error["type"], error["code"]) == ("error", "malformed")
    with _raw(stack, op="upload", path=str(target), size="10", transfer_id="cd" * 16) as ws:
        assert json.loads(ws.recv(10))["type"] == "ready"
        ws.send(json.dumps({"type": "done", "size": 1, "sha256": "0" * 64}))
        assert json.loads(ws.recv(10))["code"] == "malformed"
    with _raw(stack, op="upload", path=str(target), size="100", transfer_id="ef" * 16) as ws:
        assert json.loads(ws.recv(10))["type"] == "ready"
        ws.send(b"x" * 101)  # more than announced
        ws.send(json.dumps({"type": "end", "size": 101, "sha256": "0" * 64}))
        assert json.loads(ws.recv(10))["code"] == "size_mismatch"
    with _raw(stack, op="upload", path=str(target), transfer_id="12" * 16) as ws:
        assert json.loads(ws.recv(10))["type"] == "ready"

        def oversized() -> None:
            ws.send(b"x" * (64 << 20))  # beyond the frame limits: the channel is closed
            ws.recv(10)

        with pytest.raises(ConnectionClosed) as closed:
            oversized()
        # A close frame (1009 too big) when it makes it before the connection drops.
        received = closed.value.rcvd
        assert received is None or received.code in (1009, 1011)
    assert not target.exists()


def test_the_agent_moves_a_handed_over_file_and_checks_it_end_to_end(
    stack: FilesStack, area: Path
) -> None:
    """The agent writes and reads the worker's descriptor itself: every byte is hashed on
    its way, a wrong SHA-256 leaves nothing behind, a download from an offset is whole."""
    import hashlib

    data = os.urandom(3 << 20)
    digest = hashlib.sha256(data).hexdigest()
    target = area / "handed"
    for claimed, tid in (("0" * 64, "a1" * 16), (digest, "b2" * 16)):
        with _raw(stack, op="upload", path=str(target), size=str(len(data)), transfer_id=tid) as ws:
            assert json.loads(ws.recv(10))["type"] == "ready"
            for start in range(0, len(data), 1 << 20):
                ws.send(data[start : start + (1 << 20)])
            ws.send(json.dumps({"type": "end", "size": len(data), "sha256": claimed}))
            final = json.loads(ws.recv(30))
        if claimed != digest:
            assert final["code"] == "checksum"
            assert sorted(p.name for p in area.iterdir()) == []  # no part file either
        else:
            assert (final["type"], final["sha256"]) == ("done", digest)
    assert target.read_bytes() == data
    with _raw(stack, op="download", path=str(target), offset=str(1000)) as ws:
        ready = json.loads(ws.recv(10))
        assert (ready["type"], ready["offset"], ready["size"]) == ("ready", 1000, len(data))
        received = b""
        while isinstance(frame := ws.recv(30), bytes):
            received += frame
        done = json.loads(frame)
    assert received == data[1000:]
    assert (done["type"], done["size"], done["sha256"]) == ("done", len(data), digest)
