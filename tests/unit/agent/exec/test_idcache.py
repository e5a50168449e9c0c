"""The identity and name caches: reuse only while fresh and the account files unchanged."""

from __future__ import annotations

import os
from pathlib import Path

from fleetgate.agent.exec.idcache import AccountCache, IdentityCache, files_signature
from fleetgate.agent.exec.identity import Identity


ALICE = Identity(
    name="alice", uid=1000, gid=1000, groups=(1000, 27), home="/home/alice", shell="/bin/sh"
)
SIG = ((1, 10, 100), (2, 20, 200), (3, 30, 300))


def test_a_fresh_entry_is_reused() -> None:
    cache = IdentityCache(ttl=2.0)
    cache.put("alice", None, ALICE, "/home/alice", now=10.0, signature=SIG)
    assert cache.get("alice", None, now=11.9, signature=SIG) == (ALICE, "/home/alice")
    assert cache.get("alice", "", now=11.9, signature=SIG) == (ALICE, "/home/alice")


def test_an_entry_expires_after_its_ttl() -> None:
    cache = IdentityCache(ttl=2.0)
    cache.put("alice", None, ALICE, "/", now=10.0, signature=SIG)
    assert cache.get("alice", None, now=12.0, signature=SIG) is None
    assert len(cache) == 0


def test_a_change_of_the_account_files_invalidates_at_once() -> None:
    cache = IdentityCache(ttl=60.0)
    cache.put("alice", None, ALICE, "/", now=10.0, signature=SIG)
    changed = (SIG[0], (2, 21, 201), SIG[2])  # /etc/group rewritten (gpasswd -d)
    assert cache.get("alice", None, now=10.1, signature=changed) is None


def test_the_group_is_part_of_the_key() -> None:
    cache = IdentityCache()
    cache.put("alice", "sudo", ALICE, "/", now=0.0, signature=SIG)
    assert cache.get("alice", None, now=0.1, signature=SIG) is None
    assert cache.get("bob", "sudo", now=0.1, signature=SIG) is None


def test_the_oldest_entry_goes_first_when_full() -> None:
    cache = IdentityCache(max_entries=2)
    for i, name in enumerate(["a", "b", "c"]):
        cache.put(name, None, ALICE, "/", now=float(i), signature=SIG)
    assert len(cache) == 2
    assert cache.get("a", None, now=3.0, signature=SIG) is None
    assert cache.get("c", None, now=3.0, signature=SIG) is not None


def test_names_follow_the_same_rules() -> None:
    names: AccountCache[int, str] = AccountCache(ttl=1.0, max_entries=1)
    names.put(1000, "alice", now=5.0, signature=SIG)
    assert names.get(1000, now=5.5, signature=SIG) == "alice"
    assert names.get(1000, now=5.5, signature=((0, 0, 0), *SIG[1:])) is None
    names.put(1000, "alice", now=5.0, signature=SIG)
    assert names.get(1000, now=6.0, signature=SIG) is None
    names.put(1, "a", now=0.0, signature=SIG)
    names.put(2, "b", now=0.0, signature=SIG)
    assert names.get(1, now=0.1, signature=SIG) is None


def test_a_recent_answer_is_within_the_ttl_whatever_the_files() -> None:
    names: AccountCache[int, str] = AccountCache(ttl=1.0)
    names.put(1000, "alice", now=5.0, signature=SIG)
    assert names.recent(1000, now=5.9) == "alice"  # not checked against the files...
    assert names.recent(1000, now=6.0) is None  # ...but never older than the TTL
    assert names.recent(1001, now=5.0) is None
    assert names.get(1000, now=5.5, signature=((0, 0, 0), *SIG[1:])) is None
    assert names.recent(1000, now=5.5) is None  # get() dropped the out-of-date entry


def test_the_signature_sees_a_rewrite_and_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "group"
    path.write_text("a:x:1:\n")
    missing = str(tmp_path / "absent")
    before = files_signature((str(path), missing))
    assert before[1] == (0, 0, 0)
    path.write_text("a:x:1:bob\n")  # another size, and tools replace the file anyway
    os.utime(path, ns=(1, 1))
    assert files_signature((str(path), missing)) != before
