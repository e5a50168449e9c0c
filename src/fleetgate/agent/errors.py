"""The agent's exception hierarchy.

Every error the agent raises on purpose derives from :class:`AgentError` (itself a
:class:`~fleetgate.shared.errors.FleetgateError`), or is one of the shared errors; foreign
exceptions (OSError, websockets, pydantic) are translated where the library is called.

    AgentError
    ├── ConfigError            invalid configuration; the daemon refuses to start
    ├── StateDirError          the state directory is unusable (permissions, full disk)
    ├── AuthRejected           the control plane refused our credentials (fatal)
    ├── ConnectionLost         the backhaul dropped; the reconnect loop handles it
    ├── StatusUnavailable      ``fleetgate-agent status``: no daemon answers on the status socket
    ├── RegistrationError      ``fleetgate-agent register``/``unregister`` failed
    ├── ChannelClosed          a channel websocket ended
    ├── ChannelRefused         the agent will not serve a channel (policy, limits)
    └── CommandError           a command could not be started
        ├── UnknownUser
        ├── UnknownGroup
        └── PrivilegeError     cannot switch to the requested identity
"""

from __future__ import annotations

from fleetgate.shared.errors import FleetgateError


__all__ = [
    "AgentError",
    "AuthRejected",
    "ChannelClosed",
    "ChannelRefused",
    "CommandError",
    "ConfigError",
    "ConnectionLost",
    "PrivilegeError",
    "RegistrationError",
    "StateDirError",
    "StatusUnavailable",
    "UnknownGroup",
    "UnknownUser",
]


class AgentError(FleetgateError):
    """Root of every error the agent raises on purpose."""


class ConfigError(AgentError):
    """The configuration file is missing, unreadable or invalid."""


class StateDirError(AgentError):
    """The state directory cannot be created, written or locked."""


class AuthRejected(AgentError):
    """The control plane refused the server id and key; retrying will not help."""


class ConnectionLost(AgentError):
    """The backhaul connection ended; the reconnect loop will dial again."""


class StatusUnavailable(AgentError):
    """No running daemon answered on the local status socket."""


class RegistrationError(AgentError):
    """Registering or unregistering this server with the control plane failed.

    Attributes:
        exit_status: the sysexits(3) status the command line should exit with.
    """

    def __init__(self, message: str, exit_status: int = 1) -> None:
        super().__init__(message)
        self.exit_status = exit_status


class CommandError(AgentError):
    """A command could not be started; the message is reported to the operator."""


class UnknownUser(CommandError):
    """The requested user does not exist on this server."""


class UnknownGroup(CommandError):
    """The requested group does not exist, or the user is not a member of it."""


class PrivilegeError(CommandError):
    """The agent cannot switch to the requested identity (for example, not root)."""


class ChannelClosed(AgentError):
    """A channel websocket ended (either side closed it, or the link broke).

    Attributes:
        code: the websocket close code (1006 when the link broke without a close).
        reason: the close reason text.
    """

    def __init__(self, code: int, reason: str = "") -> None:
        super().__init__(f"channel closed ({code}{': ' + reason if reason else ''})")
        self.code = code
        self.reason = reason


class ChannelRefused(AgentError):
    """The agent will not serve a channel; ``code`` is a stable machine-readable reason.

    Grant refusals carry the ``work_session_*`` code; kinds use their own (for example
    ``tunnel_port_not_allowed``).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
