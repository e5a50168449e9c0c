"""scp, sftp and rsync through the agent's SSH server: real files, owned by the user,
each SFTP transfer on the timeline."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.ssh.conftest import SSH_TIMEOUT, SshStack


pytestmark = pytest.mark.root

SIZE = 100 * 1024 * 1024
"""100 MiB each way, as the issue asks."""


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def run(*argv: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        argv, capture_output=True, timeout=SSH_TIMEOUT, check=False, stdin=subprocess.DEVNULL
    )


def test_scp_both_ways_keeps_every_byte(sstack: SshStack, tmp_path: Path) -> None:
    session = sstack.session(("webftp",))
    config = sstack.configure("scp", session)
    source = tmp_path / "up.bin"
    source.write_bytes(os.urandom(SIZE))
    remote = f"{sstack.user.home}/up.bin"
    up = run("scp", "-F", str(config), str(source), f"{sstack.server}:{remote}")
    assert up.returncode == 0, up.stderr
    on_server = Path(remote)
    assert sha256(on_server) == sha256(source)
    assert on_server.stat().st_uid == sstack.user.uid  # written by the user, not the agent
    back = tmp_path / "down.bin"
    down = run("scp", "-F", str(config), f"{sstack.server}:{remote}", str(back))
    assert down.returncode == 0, down.stderr
    assert sha256(back) == sha256(source)
    # Each transfer is on the timeline (webftp), with its size.
    events = sstack.events(session, lambda es: sum(e["type"] == "webftp" for e in es) >= 2)
    moved = [e for e in events if e["type"] == "webftp" and e.get("via") == "ssh"]
    assert {(e["path"], e["bytes_written"], e["bytes_read"]) for e in moved} >= {
        (remote, SIZE, 0),
        (remote, 0, SIZE),
    }
    # And in the agent's audit log.
    lines = (sstack.agent.logs_dir / "audit.log").read_text(encoding="utf-8").splitlines()
    audit = [json.loads(line) for line in lines]
    sftp = [a for a in audit if a["event"] == "ssh.sftp" and a["path"] == remote]
    assert {(a["bytes_written"], a["bytes_read"], a["user"]) for a in sftp} >= {
        (SIZE, 0, sstack.user.name),
        (0, SIZE, sstack.user.name),
    }


def test_sftp_batch(sstack: SshStack, tmp_path: Path) -> None:
    session = sstack.session(("webftp",))
    config = sstack.configure("sftp", session)
    local = tmp_path / "note.txt"
    local.write_text("über sftp\n", encoding="utf-8")
    batch = tmp_path / "batch"
    batch.write_text(
        "mkdir batchdir\ncd batchdir\nput note.txt\nls -l\nget note.txt copy.txt\n"
        "rename note.txt kept.txt\n",
        encoding="utf-8",
    )
    done = subprocess.run(
        ["sftp", "-F", str(config), "-b", str(batch), sstack.server],
        cwd=tmp_path,
        capture_output=True,
        timeout=SSH_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert b"note.txt" in done.stdout
    kept = Path(sstack.user.home) / "batchdir" / "kept.txt"
    assert kept.read_text(encoding="utf-8") == "über sftp\n"
    assert kept.stat().st_uid == sstack.user.uid
    assert (tmp_path / "copy.txt").read_text(encoding="utf-8") == "über sftp\n"


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_rsync_tree_with_unicode_names_both_ways(sstack: SshStack, tmp_path: Path) -> None:
    session = sstack.session(("command",))  # rsync runs `rsync --server` as an exec
    config = sstack.configure("rsync", session)
    tree = tmp_path / "tree"
    for rel, data in {
        "a.txt": b"alpha\n",
        "ünïcödé/日本語.txt": "こんにちは\n".encode(),
        "ünïcödé/deep/ëmoji-🚀.bin": os.urandom(100_000),
        "space name/x y.txt": b"spaces\n",
    }.items():
        path = tree / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    ssh_cmd = f"ssh -F {config}"
    remote = f"{sstack.server}:{sstack.user.home}/synced/"
    up = run("rsync", "-a", "-e", ssh_cmd, f"{tree}/", remote)
    assert up.returncode == 0, up.stderr
    assert _tree(Path(sstack.user.home) / "synced") == _tree(tree)
    back = tmp_path / "back"
    down = run("rsync", "-a", "-e", ssh_cmd, remote, f"{back}/")
    assert down.returncode == 0, down.stderr
    assert _tree(back) == _tree(tree)
