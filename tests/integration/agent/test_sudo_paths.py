"""Where the commands of a sudo decision are, on the real file system: every link of a
resolution must be root's, a pattern's command is reused for a short while, the call's
never (``fleetgate.agent.sudo.proc``, ``fleetgate.agent.sudo.commands``)."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetgate.agent.sudo.commands import CommandPaths
from fleetgate.agent.sudo.proc import MAX_LINKS, trusted_realpath
from tests.support.users import require_root


pytestmark = pytest.mark.root

ID = os.path.realpath("/usr/bin/id")


@pytest.fixture
def root_dir() -> Iterator[Path]:
    """A directory only root can change (/tmp is anyone's: nothing under it is trusted)."""
    require_root()
    path = Path(f"/run/fleetgate-test-{uuid.uuid4().hex}")
    path.mkdir(mode=0o755)
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


def test_every_link_of_a_chain_must_be_roots(root_dir: Path) -> None:
    (root_dir / "a").symlink_to(root_dir / "b")
    (root_dir / "b").symlink_to("/usr/bin/../bin/id")
    assert trusted_realpath(str(root_dir / "a")) == ID
    # A link in the middle of the chain that someone else could point elsewhere: the path
    # as written and the real path are root's, and still the path cannot be trusted.
    users = root_dir / "users"
    users.mkdir(mode=0o755)
    os.chown(users, 65534, 65534)
    (users / "c").symlink_to("/usr/bin/id")
    (root_dir / "d").symlink_to(users / "c")
    assert trusted_realpath(str(root_dir / "d")) is None
    os.chown(users, 0, 0)
    assert trusted_realpath(str(root_dir / "d")) == ID
    os.chmod(users, 0o775)  # group writable
    assert trusted_realpath(str(root_dir / "d")) is None


def test_relative_links_dots_and_loops(root_dir: Path) -> None:
    (root_dir / "bin").mkdir(mode=0o755)
    (root_dir / "bin" / "up").symlink_to("../bin/../bin/up2")
    (root_dir / "bin" / "up2").symlink_to("/usr/bin/id")
    assert trusted_realpath(f"{root_dir}/bin/./up") == ID
    assert trusted_realpath(f"{root_dir}/bin/up/../id") is None  # id is not a directory
    (root_dir / "loop").symlink_to(root_dir / "loop")
    assert trusted_realpath(str(root_dir / "loop")) is None
    previous = "/usr/bin/id"
    for i in range(MAX_LINKS + 1):
        (root_dir / f"l{i}").symlink_to(previous)
        previous = str(root_dir / f"l{i}")
    assert trusted_realpath(str(root_dir / f"l{MAX_LINKS - 1}")) == ID
    assert trusted_realpath(str(root_dir / f"l{MAX_LINKS}")) is None
    assert trusted_realpath(str(root_dir)) == str(root_dir)
    assert trusted_realpath("/") == "/"
    assert trusted_realpath("/usr/bin/i\0d") is None
    assert trusted_realpath("/usr/bin/" + "x" * 5000) is None


def test_a_patterns_command_is_reused_for_a_while_the_calls_never(root_dir: Path) -> None:
    now = [0.0]
    paths = CommandPaths(f"{root_dir}:/usr/bin", ttl=2.0, clock=lambda: now[0])
    assert paths.resolve("id") == ID
    tool = root_dir / "id"
    shutil.copy("/usr/bin/id", tool)
    os.chmod(tool, 0o755)
    assert paths.resolve("id") == ID  # root's own change: seen within the TTL
    now[0] = 2.0
    assert paths.resolve("id") == str(tool)
    # The call's command is checked at every call: a directory that became anyone's
    # makes it untrusted at once.
    assert paths.realpath(str(tool)) == str(tool)
    os.chmod(root_dir, 0o777)
    assert paths.realpath(str(tool)) is None
    assert paths.resolve("id") == str(tool)  # the cached pattern cannot make it match


def test_the_pattern_cache_is_bounded() -> None:
    paths = CommandPaths("/usr/bin", max_entries=2)
    for word in ("id", "true", "false", "/usr/bin/id"):
        paths.resolve(word)
    assert len(paths) == 2
    assert paths.resolve("../bin/id", "/usr/bin") == ID  # a relative path: never cached
    assert len(paths) == 2
