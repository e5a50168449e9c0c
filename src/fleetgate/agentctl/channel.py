"""The client's end of a channel: a websocket to the control plane (asyncio).

Terminals, file transfers and tunnel streams each open one with :func:`connect_channel`.
A refused handshake carries the control plane's usual ``{code, detail}`` body and is
raised as the same :class:`ControlPlaneError` an HTTP request would raise, so gate denials get the
seed's diagnostics and exit status 3.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.streams import StreamReader

from fleetgate.agentctl.client import USER_AGENT, error_from_answer, tls_context, unreachable
from fleetgate.agentctl.context import Context
from fleetgate.agentctl.errors import CliError
from fleetgate.shared.files.bulkreads import BulkReadsMixin, use_bulk_reads
from fleetgate.shared.files.bulkwrites import BulkWritesMixin, use_bulk_writes


try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a websockets built without its C speedups
    from websockets.utils import apply_mask


__all__ = ["MAX_FRAME_BYTES", "channel_url", "connect_channel"]

MAX_FRAME_BYTES = 16 * 1024 * 1024
"""Largest frame accepted from the control plane."""


class _BulkStreamReader(BulkReadsMixin, StreamReader):
    """websockets' stream reader with large frames read in one copy (a download's)."""


class _BulkClientProtocol(BulkWritesMixin, ClientProtocol):
    """websockets' client protocol with large frames sent without a copy (an upload's)."""

    masking = True

    @staticmethod
    def mask(data: Any, key: bytes) -> bytes:
        """websockets' own masking (its C version where it is built)."""
        return apply_mask(data, key)


class _Connection(ClientConnection):
    """websockets' client connection, its frames read and written in bulk from the start
    (the handshake included: a download may take the stream over between any two frames,
    which the reader tells, ``agentctl.downsink``)."""

    def __init__(self, protocol: ClientProtocol, **kwargs: Any) -> None:
        use_bulk_reads(protocol.reader, _BulkStreamReader)
        use_bulk_writes(protocol, _BulkClientProtocol)
        super().__init__(protocol, **kwargs)


def channel_url(base: str, path: str, params: Mapping[str, str] | None = None) -> str:
    """The websocket URL of ``path`` on the control plane at ``base`` (http[s]://...)."""
    scheme, rest = base.rstrip("/").split("://", 1)
    query = f"?{urlencode(dict(params))}" if params else ""
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{path}{query}"


def _ssl(ctx: Context, url: str) -> ssl.SSLContext | None:
    """The TLS context of a ``wss://`` URL: the same as the client's HTTP requests'."""
    if not url.startswith("wss://"):
        return None
    return tls_context(ctx.config.ca_file, ctx.config.verify_tls)


async def connect_channel(
    ctx: Context,
    path: str,
    *,
    params: Mapping[str, str] | None = None,
    work_session: str | None = None,
    open_timeout: float = 30.0,
) -> ClientConnection:
    """Open the channel websocket at ``path`` (for example ``/ws/websh/<id>/``).

    Raises:
        ControlPlaneError: the control plane refused (gate denial, unknown server, agent refusal).
        CliError: no control plane configured, not logged in, or it cannot be reached.
    """
    base = ctx.config.url
    if not base or ctx.config.token is None:
        ctx.client()  # raises the precise "not configured" / "not logged in" error
        raise CliError("not logged in", code="NOT_LOGGED_IN")
    url = channel_url(base, path, params)
    headers = {"Authorization": f'token="{ctx.config.token.get_secret_value()}"'}
    if work_session:
        headers["X-Work-Session"] = work_session
    try:
        ws = await connect(
            url,
            additional_headers=headers,
            user_agent_header=USER_AGENT,
            ssl=_ssl(ctx, url),
            open_timeout=open_timeout,
            ping_interval=30,
            ping_timeout=30,
            close_timeout=5,
            max_size=MAX_FRAME_BYTES,
            write_limit=1024 * 1024,
            compression=None,
            create_connection=_Connection,
        )
    except InvalidStatus as exc:
        response = exc.response
        raise error_from_answer(
            response.status_code, bytes(response.body or b""), response.reason_phrase
        ) from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise unreachable(base, exc, ctx.config.ca_file) from None
    sock = ws.transport.get_extra_info("socket")
    if sock is not None:
        # Keystrokes and small tunnel writes go out at once (see client.NODELAY).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ws
