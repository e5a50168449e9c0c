"""agentctl cp/edit pure helpers: locations, transfer ids, progress figures, summary; parsing."""

from __future__ import annotations

import pytest

from fleetgate.agentctl.main import build_parser, parse_args
from fleetgate.agentctl.transfers import (
    Local,
    Progress,
    Remote,
    local_part_name,
    parse_location,
    summary,
    transfer_id,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("web-01:/srv/site.tar.gz", Remote("web-01", "/srv/site.tar.gz")),
        ("web-01:/", Remote("web-01", "/")),
        ("./site.tar.gz", Local("./site.tar.gz")),
        ("./a:b", Local("./a:b")),
        ("web-01:relative", Local("web-01:relative")),
        ("C:x", Local("C:x")),
        ("/abs/with:colon", Local("/abs/with:colon")),
        ("", Local("")),
    ],
)
def test_parse_location(text: str, expected: Remote | Local) -> None:
    assert parse_location(text) == expected


def test_remote_name() -> None:
    assert Remote("s", "/srv/site/").name == "site"
    assert Remote("s", "/").name == ""


def test_transfer_id_is_stable_and_sensitive() -> None:
    a = transfer_id("upload", "web-01", "deploy", "/srv/x", 10, 123)
    assert a == transfer_id("upload", "web-01", "deploy", "/srv/x", 10, 123)
    assert a != transfer_id("upload", "web-01", "deploy", "/srv/x", 10, 124)
    assert len(a) == 32
    assert int(a, 16) >= 0


def test_local_part_name() -> None:
    tid = "a" * 32
    assert local_part_name("f.txt", tid) == f".f.txt.{tid}.agentctl-part"
    assert local_part_name("x" * 200, tid) == f".{tid}.{tid}.agentctl-part"


def test_progress_rate_and_eta() -> None:
    progress = Progress(total=1000, start=0.0, window=10.0)
    assert progress.rate() == 0.0
    assert progress.eta() is None
    progress.update(0, 0.0)
    progress.update(100, 1.0)
    progress.update(300, 2.0)
    assert progress.rate() == pytest.approx(150.0)
    assert progress.eta() == pytest.approx(700 / 150)
    unknown = Progress(total=None, start=0.0)
    unknown.update(0, 0.0)
    unknown.update(10, 1.0)
    assert unknown.eta() is None


def test_progress_window_slides() -> None:
    progress = Progress(total=None, start=0.0, window=2.0)
    for second in range(10):
        progress.update(second * (100 if second < 5 else 10), float(second))
    # Only the recent, slow seconds count.
    assert progress.rate() < 100


def test_summary() -> None:
    doc = summary(
        op="upload", server="s", remote="/r", local="/l", size=1000, seconds=2.0,
        sha256="0" * 64, resumed_from=400,
    )  # fmt: skip
    assert doc["bytes"] == 1000
    assert doc["bytes_transferred"] == 600
    assert doc["bytes_per_second"] == 300
    assert summary(op="d", server="s", remote="/r", local="/l", size=0, seconds=0.0,
                   sha256="0" * 64)["bytes_per_second"] is None  # fmt: skip


def test_cp_and_edit_parse() -> None:
    parser = build_parser()
    args = parse_args(parser, ["cp", "-r", "-u", "deploy", "--overwrite", "./d", "web:/srv/"])
    assert (args.src, args.dst, args.recursive, args.user, args.overwrite) == (
        "./d",
        "web:/srv/",
        True,
        "deploy",
        True,
    )
    args = parse_args(parser, ["edit", "web:/etc/app.conf", "-u", "deploy"])
    assert args.target == "web:/etc/app.conf"
