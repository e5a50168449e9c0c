"""The one atomic write: content, mode, the check hook, exclusive creation, no leftovers."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from fleetgate.shared.atomic import atomic_write


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_replaces_the_file_with_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "agent.toml"
    target.write_text("old")
    atomic_write(target, "new \U0001f680", 0o600)
    assert target.read_text(encoding="utf-8") == "new \U0001f680"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    atomic_write(target, b"\x00bytes", 0o640)
    assert target.read_bytes() == b"\x00bytes"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert _leftovers(tmp_path) == []


def test_a_failing_check_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "sudoers"
    target.write_text("valid")
    seen: list[str] = []

    def refuse(candidate: Path) -> None:
        seen.append(candidate.read_text())
        assert candidate.name.startswith(".")  # sudo skips dot files in sudoers.d
        raise ValueError("visudo says no")

    with pytest.raises(ValueError, match="visudo says no"):
        atomic_write(target, "broken", 0o440, check=refuse)
    assert seen == ["broken"]
    assert target.read_text() == "valid"
    assert _leftovers(tmp_path) == []


def test_exclusive_never_replaces(tmp_path: Path) -> None:
    key = tmp_path / "grant.key"
    atomic_write(key, "first", 0o600, exclusive=True)
    with pytest.raises(FileExistsError):
        atomic_write(key, "second", 0o600, exclusive=True)
    assert key.read_text() == "first"
    assert _leftovers(tmp_path) == []


def test_an_unwritable_directory_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing" / "file", "x")
    assert _leftovers(tmp_path) == []
