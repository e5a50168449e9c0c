"""Label sets and selectors (pure)."""

from __future__ import annotations

import pytest

from fleetgate.shared.labels import MAX_LABELS, LabelError, check_labels, parse_selector


@pytest.mark.parametrize(
    ("selector", "labels", "expected"),
    [
        ("role=web", {"role": "web"}, True),
        ("role=web", {"role": "db"}, False),
        ("role==web", {"role": "web"}, True),
        ("role=web,env=prod", {"role": "web", "env": "prod"}, True),
        ("role=web,env=prod", {"role": "web"}, False),
        ("env!=prod", {}, True),
        ("env!=prod", {"env": "prod"}, False),
        ("gpu", {"gpu": ""}, True),
        ("gpu", {}, False),
        ("!legacy", {}, True),
        ("!legacy", {"legacy": "yes"}, False),
        (" role = web , gpu ", {"role": "web", "gpu": "a100"}, True),
        ("team/app=api", {"team/app": "api"}, True),
        ("role=", {"role": ""}, True),
    ],
)
def test_selector_matching(selector: str, labels: dict[str, str], expected: bool) -> None:
    assert parse_selector(selector).matches(labels) is expected


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("", "empty term"),
        ("role=web,", "empty term"),
        ("=web", "invalid label key"),
        ("ro le=web", "invalid label key"),
        ("role=we b", "invalid label value"),
        ("role=-web", "invalid label value"),
        (",".join(f"k{i}" for i in range(17)), "at most 16 terms"),
    ],
)
def test_bad_selectors_say_why(selector: str, message: str) -> None:
    with pytest.raises(LabelError, match=message):
        parse_selector(selector)


def test_selector_round_trips_to_text() -> None:
    assert str(parse_selector("role=web, env!=prod,gpu,!old")) == "role=web,env!=prod,gpu,!old"


def test_label_sets() -> None:
    assert check_labels({"role": "web", "empty": ""}) == {"role": "web", "empty": ""}
    with pytest.raises(LabelError, match="label key"):
        check_labels({"-x": "y"})
    with pytest.raises(LabelError, match="value"):
        check_labels({"x": "a" * 64})
    with pytest.raises(LabelError, match=f"at most {MAX_LABELS}"):
        check_labels({f"k{i}": "v" for i in range(MAX_LABELS + 1)})
