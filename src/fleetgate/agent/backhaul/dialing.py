"""Opening the backhaul's websocket to the control plane, and naming why a connection
failed (every distinct reason, for the log and ``fleetgate-agent status``)."""

from __future__ import annotations

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from fleetgate import __version__
from fleetgate.agent.backhaul.tls import agent_headers, ssl_context
from fleetgate.agent.config import AgentConfig
from fleetgate.agent.errors import AuthRejected, ConnectionLost
from fleetgate.shared.tlserrors import describe_tls_error


__all__ = ["describe", "describe_all", "dial"]


async def dial(config: AgentConfig, key: str, base: str) -> ClientConnection:
    """The backhaul's websocket on the control plane at ``base``, opened.

    Raises:
        AuthRejected: the control plane refused our credentials (HTTP 401 or 403).
        ConnectionLost: it could not be reached, or refused the handshake otherwise.
    """
    cp = config.control_plane
    limits = config.limits
    headers = agent_headers(config, key)
    url = cp.websocket_url("/ws/agent/backhaul/", base)
    try:
        return await connect(
            url,
            additional_headers=headers,
            user_agent_header=f"fleetgate-agent/{__version__}",
            ssl=ssl_context(cp),
            open_timeout=config.backhaul.open_timeout,
            # Application keepalive instead of protocol pings: it also proves the
            # control plane's event loop answers, not just its TCP stack.
            ping_interval=None,
            close_timeout=5,
            # Frames above the application limit still arrive so that they can be
            # answered with an error; beyond twice the limit the link is closed.
            max_size=2 * limits.max_message_bytes,
            compression=None,
        )
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status in (401, 403):
            raise AuthRejected(f"control plane refused our credentials (HTTP {status})") from exc
        raise ConnectionLost(f"handshake refused with HTTP {status}") from exc
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        reason = describe_tls_error(exc, cp.ca_file) or describe(exc)
        raise ConnectionLost(f"cannot connect to {url}: {reason}") from exc


def describe(exc: BaseException) -> str:
    """Why ``exc`` ended a connection, in a few words."""
    if isinstance(exc, ConnectionLost):
        return str(exc)  # already a reason of ours
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def describe_all(group: BaseExceptionGroup[BaseException]) -> str:
    """Every distinct failure of ``group``, in order, ``; ``-separated."""
    reasons: dict[str, None] = {}
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            reasons[describe_all(exc)] = None
        else:
            reasons[describe(exc)] = None
    return "; ".join(reasons)
