"""The reconnect schedule and the retry classification."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, strategies as st

from fleetgate.agent.backhaul.retry import classify
from fleetgate.agent.errors import AuthRejected, ConfigError, ConnectionLost
from fleetgate.shared.backoff import Backoff, backoff_delays


@given(
    st.floats(min_value=0.01, max_value=5),
    st.floats(min_value=1, max_value=20),
    st.integers(min_value=0, max_value=2**32),
)
def test_delays_stay_within_the_capped_exponential_bound(
    low: float, factor: float, seed: int
) -> None:
    """Each delay lies in [0, min(max, min * 2**n)]."""
    high = low * factor
    delays = list(itertools.islice(backoff_delays(low, high, rng=random.Random(seed)), 30))
    for n, delay in enumerate(delays):
        assert 0 <= delay <= min(high, low * 2**n) + 1e-9


def test_delays_are_jittered_not_synchronized() -> None:
    """Two agents with different random sources do not wait the same times."""
    a = list(itertools.islice(backoff_delays(1, 60, rng=random.Random(1)), 10))
    b = list(itertools.islice(backoff_delays(1, 60, rng=random.Random(2)), 10))
    assert a != b


def test_delays_reach_the_cap() -> None:
    """After enough failures the bound is the cap; the mean of draws approaches cap/2."""
    delays = list(itertools.islice(backoff_delays(0.5, 8, rng=random.Random(3)), 400))
    tail = delays[100:]
    assert max(tail) <= 8
    assert 3 < sum(tail) / len(tail) < 5


class _Ceiling(random.Random):
    """A random source whose uniform() always returns the upper bound: shows the bound."""

    def uniform(self, a: float, b: float) -> float:
        return b


def test_backoff_climbs_while_connections_are_short() -> None:
    """Connections that never come up, or drop before stable_after, keep the bound rising."""
    backoff = Backoff(1, 8, stable_after=30, rng=_Ceiling())
    bounds = [backoff.next_delay(uptime) for uptime in (0, 0, 29.9, 5, 0, 0)]
    assert bounds == [1, 2, 4, 8, 8, 8]


def test_backoff_resets_after_a_stable_connection() -> None:
    """A connection that stayed up stable_after seconds starts the schedule again."""
    backoff = Backoff(1, 8, stable_after=30, rng=_Ceiling())
    for _ in range(5):
        backoff.next_delay(0)
    assert backoff.next_delay(30) == 1
    assert backoff.next_delay(0) == 2
    assert backoff.next_delay(3600) == 1


def test_backoff_with_zero_stable_after_resets_after_any_connection() -> None:
    """stable_after = 0: every connection that came up at all resets the schedule."""
    backoff = Backoff(1, 8, stable_after=0, rng=_Ceiling())
    assert [backoff.next_delay(0) for _ in range(3)] == [1, 2, 4]
    assert backoff.next_delay(0.001) == 1


@pytest.mark.parametrize(("low", "high"), [(0, 1), (-1, 1), (2, 1)])
def test_bad_bounds_are_refused(low: float, high: float) -> None:
    """A schedule that could never wait, or whose cap is below its floor, is a bug."""
    with pytest.raises(ValueError):
        next(backoff_delays(low, high))


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (AuthRejected("401"), "fatal"),
        (ConfigError("bad"), "fatal"),
        (ConnectionLost("reset"), "retry"),
        (OSError("refused"), "retry"),
        (TimeoutError(), "retry"),
        (RuntimeError("bug"), "retry"),
    ],
)
def test_classification(exc: BaseException, verdict: str) -> None:
    """Only refused credentials and bad configuration stop the reconnect loop."""
    assert classify(exc) == verdict
