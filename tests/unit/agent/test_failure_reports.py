"""Failures of several tasks at once: none of them is dropped from the story."""

from __future__ import annotations

from typing import cast

from structlog.testing import capture_logs

from fleetgate.agent.backhaul.dialing import describe_all
from fleetgate.agent.daemon.lifecycle import _first_of
from fleetgate.agent.errors import (
    AgentError,
    AuthRejected,
    ConfigError,
    ConnectionLost,
    StateDirError,
)


def test_the_daemon_raises_the_first_error_and_logs_the_others() -> None:
    group: ExceptionGroup[Exception] = ExceptionGroup(
        "components",
        [
            StateDirError("disk full"),
            ExceptionGroup("nested", [AuthRejected("key refused")]),
            ConfigError("bad key file"),
        ],
    )
    with capture_logs() as logs:
        # The nested group is what except* hands over when tasks fail in subgroups.
        first = _first_of(cast("ExceptionGroup[AgentError]", group))
    assert isinstance(first, StateDirError)
    assert [(e["event"], e["error"], e["kind"]) for e in logs] == [
        ("agent.component_failed", "key refused", "AuthRejected"),
        ("agent.component_failed", "bad key file", "ConfigError"),
    ]


def test_a_lost_link_names_every_distinct_failure() -> None:
    group = ExceptionGroup(
        "link",
        [
            ConnectionResetError(104, "Connection reset by peer"),
            TimeoutError(),
            ConnectionLost("the control plane closed the connection"),
            ConnectionResetError(104, "Connection reset by peer"),
        ],
    )
    assert describe_all(group) == (
        "ConnectionResetError: [Errno 104] Connection reset by peer; TimeoutError; "
        "the control plane closed the connection"
    )
