"""Reconnect policy, pure: which errors are worth dialling again after.

The delays themselves come from :mod:`fleetgate.shared.backoff`; the caller resets the
schedule after a connection that stayed up long enough to count as stable.
"""

from __future__ import annotations

from typing import Literal

from fleetgate.agent.errors import AuthRejected, ConfigError


__all__ = ["Verdict", "classify"]

Verdict = Literal["retry", "fatal"]


def classify(exc: BaseException) -> Verdict:
    """Decide whether the reconnect loop should dial again after ``exc``.

    Credentials the control plane refused and configuration errors do not heal by
    retrying; everything else (refused connections, timeouts, resets, 5xx) does.
    """
    if isinstance(exc, (AuthRejected, ConfigError)):
        return "fatal"
    return "retry"
