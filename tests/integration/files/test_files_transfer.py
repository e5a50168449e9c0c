"""agentctl cp and edit through the whole stack: agentctl, control plane, agent, worker."""

from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import SERVER, FilesStack  # type: ignore[import-not-found]

from tests.support.files import sha256_file, write_random
from tests.support.users import CreatedUser


def owned(path: Path, user: CreatedUser, mode: int = 0o755) -> Path:
    path.mkdir(exist_ok=True)
    os.chown(path, user.uid, user.gid)
    path.chmod(mode)
    return path


def test_upload_and_download_a_file(
    stack: FilesStack, area: Path, user: CreatedUser, tmp_path: Path
) -> None:
    home = owned(area / "home", user)
    local = tmp_path / "site.tar.gz"
    digest = write_random(local, 3 << 20)
    up = stack.cp_(str(local), f"{SERVER}:{home}/", "-u", user.name)
    assert up.returncode == 0, up.stderr
    doc = json.loads(up.stdout)
    assert doc["sha256"] == digest
    assert doc["remote_path"] == f"{home}/site.tar.gz"
    remote = home / "site.tar.gz"
    assert sha256_file(remote) == digest
    assert (remote.stat().st_uid, remote.stat().st_mode & 0o777) == (user.uid, 0o644)

    back = tmp_path / "back.tar.gz"
    down = stack.cp_(f"{SERVER}:{remote}", str(back), "-u", user.name)
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["sha256"] == digest
    assert sha256_file(back) == digest
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
