"""File transfer: ``/ws/files/`` opens a ``files`` channel and relays it.

The client names the transfer in the query string (``server``, ``op``, ``path``, ``user``
and the optional fields of :class:`fleetgate.shared.protocol.FilesSpec`); the route authenticates
the caller, passes the work-session gate with scope ``webftp`` (which records the
transfer on the session's timeline: ``upload /srv/site.tar.gz as deploy``), asks the
agent for the channel and relays it untouched. The bytes never touch the control plane's
disk, and it never parses them.
"""

from __future__ import annotations

import posixpath
import uuid

from fastapi import APIRouter
from pydantic import ValidationError
from starlette.websockets import WebSocket

from fleetgate.controlplane.acl import AclRefusal
from fleetgate.controlplane.api.channels import (
    authorize,
    deny,
    owner_of,
    serve_channel,
    services_of,
    websocket_principal,
)
from fleetgate.controlplane.authz import require_session_named, server_account
from fleetgate.controlplane.errors import APIError
from fleetgate.controlplane.hub.channelregistry import OpenChannel
from fleetgate.shared.protocol import ChannelOpen, FilesSpec, content_digest


__all__ = ["FILES_PATH", "router"]

FILES_PATH = "/ws/files/"

router = APIRouter()

_FLAGS = ("recursive", "overwrite")
_FIELDS = ("op", "path", "name", "transfer_id", "offset", "size", "expect_sha256")


def spec_from_query(query: dict[str, str], account: str | None = None) -> FilesSpec:
    """The transfer a client asked for, as ``account`` (default: ``user``, else root).

    Raises:
        ValidationError: a field is missing or not valid.
    """
    fields: dict[str, object] = {k: query[k] for k in _FIELDS if query.get(k)}
    fields["username"] = account or query.get("user") or "root"
    if query.get("group"):
        fields["groupname"] = query["group"]
    for flag in _FLAGS:
        fields[flag] = query.get(flag, "false").lower() in ("1", "true", "yes")
    fields.setdefault("transfer_id", uuid.uuid4().hex)
    return FilesSpec.model_validate(fields)


def describe(spec: FilesSpec) -> str:
    """The timeline's words for a transfer."""
    what = "directory " if spec.recursive else ""
    return f"{spec.op} {what}{spec.path} as {spec.username}"


@router.websocket(FILES_PATH)
async def files_channel(websocket: WebSocket) -> None:
    """Open a file transfer on a server and relay it (docs/api.md, "File transfer")."""
    services = services_of(websocket)
    principal = await websocket_principal(websocket)
    if principal is None:
        return
    query = dict(websocket.query_params)
    server = query.get("server")
    if not server:
        await deny(websocket, 400, "invalid", "the server query parameter is required")
        return
    requested = query.get("work_session") or websocket.headers.get("x-work-session")
    try:
        require_session_named(principal, requested, "webftp")
        account = server_account(
            principal, query.get("user") or None, query.get("group") or None, what="a transfer"
        )
        spec = spec_from_query(query, account)
        if principal.acl is not None:
            principal.acl.check_path(spec.path, account)
            if spec.name is not None:  # an upload into a directory writes path/name
                principal.acl.check_path(posixpath.join(spec.path, spec.name), account)
    except APIError as exc:
        await deny(websocket, exc.status, exc.code, exc.detail)
        return
    except AclRefusal as exc:
        await deny(websocket, 403, "API_TOKEN_ACL_NOT_ALLOWED", exc.detail)
        return
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        await deny(websocket, 400, "invalid", problems[:1000])
        return
    channel_id = uuid.uuid4()
    try:
        authorized = await authorize(
            services,
            principal,
            server=server,
            scope="webftp",
            work_session=requested,
            operation_id=str(channel_id),
            description=describe(spec),
            content=content_digest(spec),
        )
    except APIError as exc:
        await deny(websocket, exc.status, exc.code, exc.detail)
        return
    message = ChannelOpen(channel_id=channel_id, spec=spec, grant=authorized.grant)
    owner = owner_of(principal, authorized.work_session_id)
    channel = OpenChannel(channel_id, "files", authorized.server_id, owner)
    await serve_channel(websocket, services, message, channel)
