"""The file worker as a user: the kernel's permissions, the path rules, symlinks, resume.

The worker is driven directly over its pipes (``tests.support.files.Worker``), started
through setpriv exactly as the agent starts it; the full stack is covered in
``test_files_transfer.py``.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import tarfile
from pathlib import Path

import pytest

from fleetgate.agent.exec.identity import resolve_identity
from fleetgate.agent.exec.spawn import find_setpriv, privilege_argv
from tests.support.files import Worker, request, tar_bytes, upload_bytes
from tests.support.users import CreatedUser


pytestmark = pytest.mark.root  # creates users, switches uid


def as_user(user: str, *argv: str, stdin: bytes = b"") -> int:
    """Exit status of ``argv`` run as ``user`` (the cat/tee oracle)."""
    setpriv = find_setpriv()
    assert setpriv is not None
    wrapped = privilege_argv(setpriv, resolve_identity(user, None), list(argv))
    return subprocess.run(wrapped, input=stdin, capture_output=True, check=False).returncode


def download(path: str, user: str | None, **fields: object) -> tuple[dict, bytes, dict]:  # type: ignore[type-arg]
    worker = Worker(request("download", path, **fields), user)
    result = worker.download()
    worker.wait()
    return result


def owned_dir(path: Path, user: CreatedUser, mode: int = 0o755) -> Path:
    path.mkdir()
    os.chown(path, user.uid, user.gid)
    path.chmod(mode)
    return path


# -- the kernel decides, as for cat and tee ---------------------------------------------


def test_reads_and_writes_match_cat_and_tee(area: Path, user: CreatedUser) -> None:
    secret = area / "secret"
    secret.write_bytes(b"root only")
    secret.chmod(0o600)
    shared = area / "shared"
    shared.write_bytes(b"for the group")
    os.chown(shared, 0, user.group_gid)
    shared.chmod(0o640)
    locked = area / "locked"
    locked.mkdir(mode=0o755)

    assert as_user(user.name, "cat", str(secret)) != 0
    assert download(str(secret), user.name)[0]["code"] == "permission"

    assert as_user(user.name, "cat", str(shared)) == 0
    assert download(str(shared), user.name)[1] == b"for the group"

    assert as_user(user.name, "tee", str(locked / "x"), stdin=b"x") != 0
    ready, _ = upload_bytes(b"data", str(locked / "y"), user.name)
    assert ready["code"] == "permission"
    assert not (locked / "y").exists()

    assert as_user(user.name, "tee", str(secret), stdin=b"x") != 0
    ready, _ = upload_bytes(b"data", str(secret), user.name, overwrite=True)
    assert ready["code"] == "permission"
    assert secret.read_bytes() == b"root only"


def test_new_file_is_the_users_existing_file_keeps_its_mode(area: Path, user: CreatedUser) -> None:
    home = owned_dir(area / "home", user)
    _ready, done = upload_bytes(b"hello", str(home / "new.txt"), user.name)
    assert done["type"] == "done", done
    st = (home / "new.txt").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o7777) == (user.uid, user.gid, 0o644)

    kept = home / "kept.sh"
    kept.write_bytes(b"old")
    os.chown(kept, user.uid, user.gid)
    kept.chmod(0o750)
    assert upload_bytes(b"new", str(kept), user.name)[0]["code"] == "exists"
    assert upload_bytes(b"new", str(kept), user.name, overwrite=True)[1]["type"] == "done"
    assert kept.read_bytes() == b"new"
    assert kept.stat().st_mode & 0o7777 == 0o750
    assert not [p for p in home.iterdir() if p.name.startswith(".")]  # no temp file left


# -- path rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "code"),
    [("/tmp/../etc/shadow", "escape"), ("/tmp/a\0b", "nul"), ("tmp/x", "relative")],
)
def test_bad_paths_are_refused(path: str, code: str, user: CreatedUser) -> None:
    assert upload_bytes(b"x", path, user.name)[0]["code"] == code
    assert download(path, user.name)[0]["code"] == code


def test_special_files_are_refused(area: Path, user: CreatedUser) -> None:
    os.mkfifo(area / "fifo")
    assert download(str(area / "fifo"), user.name)[0]["code"] == "special"
    assert download("/dev/null", user.name)[0]["code"] == "special"
    assert upload_bytes(b"x", "/dev/null", user.name, overwrite=True)[0]["code"] == "special"


def test_limits_and_roots(area: Path, user: CreatedUser) -> None:
    home = owned_dir(area / "home", user)
    (home / "big").write_bytes(b"x" * 100)
    assert download(str(home / "big"), user.name, max_file_bytes=99)[0]["code"] == "too_large"
    assert (
        upload_bytes(b"x" * 100, str(home / "b2"), user.name, max_file_bytes=99)[0]["code"]
        == "too_large"
    )
    roots = {"allowed_roots": [str(home)]}
    assert download(str(home / "big"), user.name, **roots)[1] == b"x" * 100
    assert download("/etc/hostname", user.name, **roots)[0]["code"] == "outside_roots"
    # A symlink inside the root leading out of it does not widen the roots.
    os.symlink("/etc", home / "out")
    os.lchown(home / "out", user.uid, user.gid)
    assert download(str(home / "out/hostname"), user.name, **roots)[0]["code"] == "outside_roots"


# -- symlinks ---------------------------------------------------------------------------


def test_symlinks_of_other_users_are_not_followed(
    area: Path, user: CreatedUser, other_user: CreatedUser
) -> None:
    protected = area / "protected"
    protected.mkdir(mode=0o755)
    # Another user plants links in the shared sticky directory.
    planted_dir, planted_file = area / "planted", area / "planted-file"
    os.symlink(protected, planted_dir)
    os.symlink(protected / "target", planted_file)
    for link in (planted_dir, planted_file):
        os.lchown(link, other_user.uid, other_user.gid)
    # Even root, writing through them, is refused: the links are not root's or its own.
    assert upload_bytes(b"x", str(planted_dir / "x"), None)[0]["code"] == "symlink"
    assert upload_bytes(b"x", str(planted_file), None, overwrite=True)[0]["code"] == "symlink"
    assert list(protected.iterdir()) == []
    # The user's own link into a root-owned directory: the kernel refuses the write.
    own = area / "own"
    os.symlink(protected, own)
    os.lchown(own, user.uid, user.gid)
    assert upload_bytes(b"x", str(own / "x"), user.name)[0]["code"] == "permission"
    # A final symlink is never replaced by an upload.
    assert upload_bytes(b"x", str(own), user.name, overwrite=True)[0]["code"] == "symlink"
    assert list(protected.iterdir()) == []


def test_directory_swapped_for_a_symlink_during_upload(area: Path, user: CreatedUser) -> None:
    protected = area / "protected"
    protected.mkdir(mode=0o755)
    work = owned_dir(area / "work", user)
    data = os.urandom(1 << 20)
    worker = Worker(request("upload", str(work / "f"), size=len(data)), user.name)
    assert worker.read_text()["type"] == "ready"
    worker.send_data(data[: 1 << 19])
    # The path now leads elsewhere (root's own link, which the walk would follow).
    work.rename(area / "work.old")
    os.symlink(protected, work)
    worker.send_data(data[1 << 19 :])
    worker.send({"type": "end", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    assert worker.read_text()["code"] == "changed"
    worker.wait()
    assert list(protected.iterdir()) == []
    assert list((area / "work.old").iterdir()) == []


def test_file_swapped_for_a_symlink_during_download(area: Path, user: CreatedUser) -> None:
    work = owned_dir(area / "work", user)
    data = os.urandom(4 << 20)
    (work / "f").write_bytes(data)
    worker = Worker(request("download", str(work / "f"), chunk_bytes=65536), user.name)
    assert worker.read_text()["type"] == "ready"
    (work / "f").unlink()
    os.symlink("/etc/hostname", work / "f")
    received = bytearray()
    while True:
        kind, payload = worker.read()
        if kind != b"D":
            break
        received += payload
    worker.wait()
    assert bytes(received) == data  # the file that was opened, never the new link


# -- resume and edit --------------------------------------------------------------------


def test_killed_upload_keeps_the_old_file_and_resumes(area: Path, user: CreatedUser) -> None:
    work = owned_dir(area / "work", user)
    target = work / "f"
    target.write_bytes(b"old content")
    os.chown(target, user.uid, user.gid)
    data = os.urandom(3 << 20)
    tid = os.urandom(16).hex()
    fields = {"size": len(data), "overwrite": True, "transfer_id": tid}
    worker = Worker(request("upload", str(target), **fields), user.name)
    assert worker.read_text()["offset"] == 0
    worker.send_data(data[: 1 << 20])
    worker.send_data(data[1 << 20 : 2 << 20])
    worker.proc.stdin.flush()  # type: ignore[union-attr]
    # The agent closes the pipe when the client goes away: the worker keeps the prefix.
    worker.close_input()
    assert worker.wait() == 2
    assert target.read_bytes() == b"old content"

    ready, done = upload_bytes(data, str(target), user.name, **fields)
    assert ready["offset"] == 2 << 20
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert target.read_bytes() == data
    assert sorted(p.name for p in work.iterdir()) == ["f"]

    # A killed worker (SIGKILL) leaves the same state: old file intact.
    worker = Worker(
        request("upload", str(target), **{**fields, "transfer_id": "e" * 32}), user.name
    )
    worker.read_text()
    worker.send_data(data[: 1 << 20])
    worker.proc.stdin.flush()  # type: ignore[union-attr]
    worker.proc.send_signal(signal.SIGKILL)
    worker.wait()
    assert target.read_bytes() == data


def test_expect_sha256_refuses_a_concurrent_change(area: Path, user: CreatedUser) -> None:
    work = owned_dir(area / "work", user)
    target = work / "conf"
    target.write_bytes(b"v1")
    os.chown(target, user.uid, user.gid)
    v1 = hashlib.sha256(b"v1").hexdigest()
    target.write_bytes(b"v1 changed by someone else")
    _ready, final = upload_bytes(b"v2", str(target), user.name, overwrite=True, expect_sha256=v1)
    assert final["code"] == "changed"
    assert target.read_bytes() == b"v1 changed by someone else"
    current = hashlib.sha256(target.read_bytes()).hexdigest()
    _, final = upload_bytes(b"v2", str(target), user.name, overwrite=True, expect_sha256=current)
    assert final["type"] == "done"
    assert target.read_bytes() == b"v2"


def test_checksum_mismatch_puts_nothing_in_place(area: Path, user: CreatedUser) -> None:
    work = owned_dir(area / "work", user)
    worker = Worker(request("upload", str(work / "f"), size=3), user.name)
    worker.read_text()
    worker.send_data(b"abc")
    worker.send({"type": "end", "size": 3, "sha256": "0" * 64})
    assert worker.read_text()["code"] == "checksum"
    assert worker.wait() == 1
    assert list(work.iterdir()) == []


# -- trees ------------------------------------------------------------------------------


def test_tree_round_trip_unicode_empty_dirs_symlinks(area: Path, user: CreatedUser) -> None:
    work = owned_dir(area / "work", user)
    archive = tar_bytes(
        {
            ".": None,
            "ünïcødé": None,
            "ünïcødé/日本.txt": b"konnichiwa",
            "empty": None,
            "link": "ünïcødé/日本.txt",
            "dangling": "/nonexistent/target",
        }
    )
    _ready, done = upload_bytes(archive, str(work / "tree"), user.name, recursive=True)
    assert done["type"] == "done", done
    tree = work / "tree"
    assert (tree / "ünïcødé/日本.txt").read_bytes() == b"konnichiwa"
    assert (tree / "empty").is_dir()
    assert os.readlink(tree / "link") == "ünïcødé/日本.txt"
    assert os.readlink(tree / "dangling") == "/nonexistent/target"
    assert tree.stat().st_uid == user.uid

    _, stream, final = download(str(tree), user.name, recursive=True)
    assert final["sha256"] == hashlib.sha256(stream).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        names = {m.name: m for m in tar.getmembers()}
    assert set(names) == {".", "./ünïcødé", "./ünïcødé/日本.txt", "./empty", "./link", "./dangling"}
    assert names["./link"].issym()

    # Without overwrite an existing tree stays; with it, the tree is replaced whole.
    assert upload_bytes(archive, str(tree), user.name, recursive=True)[0]["code"] == "exists"
    smaller = tar_bytes({".": None, "only": b"1"})
    assert (
        upload_bytes(smaller, str(tree), user.name, recursive=True, overwrite=True)[1]["type"]
        == "done"
    )
    assert sorted(p.name for p in tree.iterdir()) == ["only"]
    assert sorted(p.name for p in work.iterdir()) == ["tree"]


@pytest.mark.parametrize(
    ("entries", "code"),
    [
        ({"../evil": b"x"}, "escape"),
        ({"/abs": b"x"}, "escape"),
        ({"l": "/etc", "l/evil": b"x"}, "escape"),
    ],
)
def test_tree_members_that_escape_are_refused(
    area: Path, user: CreatedUser, entries: dict[str, bytes | str | None], code: str
) -> None:
    work = owned_dir(area / "work", user)
    _, final = upload_bytes(tar_bytes(entries), str(work / "t"), user.name, recursive=True)
    assert final["code"] == code
    assert list(work.iterdir()) == []


def test_tree_device_members_are_refused(area: Path, user: CreatedUser) -> None:
    work = owned_dir(area / "work", user)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        info = tarfile.TarInfo("dev")
        info.type, info.devmajor, info.devminor = tarfile.CHRTYPE, 1, 3
        tar.addfile(info)
    _, final = upload_bytes(out.getvalue(), str(work / "t"), user.name, recursive=True)
    assert final["code"] == "special"
    assert list(work.iterdir()) == []
