"""JSON shapes of the API objects (docs/api.md), as pure functions of store rows."""

from __future__ import annotations

from typing import Any

from fleetgate.controlplane.auth import Principal
from fleetgate.controlplane.command_status import command_status, response_delay
from fleetgate.controlplane.hub.registry import AgentConnection
from fleetgate.controlplane.store.command_rows import CommandRow
from fleetgate.controlplane.store.servers import ServerRow
from fleetgate.controlplane.store.users import TokenRow, UserRow
from fleetgate.controlplane.timeutil import iso, iso_or_none


__all__ = ["command_json", "server_json", "token_json", "user_json", "whoami_json"]


def command_json(row: CommandRow, *, now: int) -> dict[str, Any]:
    """The command object. ``env`` is never included."""
    requested_by = None
    if row.requested_by is not None:
        requested_by = {
            "id": row.requested_by,
            "username": row.requester_username,
            "email": row.requester_email,
        }
    return {
        "id": row.id,
        "shell": row.shell,
        "line": row.line,
        "success": row.success,
        "exit_code": row.exit_code,
        "result": row.result,
        "truncated": row.truncated,
        "status": command_status(row, now=now).as_dict(),
        "response_delay": response_delay(row),
        "elapsed_time": row.elapsed_time,
        "added_at": iso(row.added_at),
        "scheduled_at": iso(row.scheduled_at),
        "delivered_at": iso_or_none(row.delivered_at),
        "acked_at": iso_or_none(row.acked_at),
        "handled_at": iso_or_none(row.handled_at),
        "server": row.server_id,
        "server_name": row.server_name,
        "username": row.username,
        "groupname": row.groupname,
        "requested_by": requested_by,
        "error_phase": row.error_phase,
        "error_code": row.error_code,
        "timeout": row.timeout,
        "sudo": row.sudo,
    }


def server_json(row: ServerRow, conn: AgentConnection | None) -> dict[str, Any]:
    """The server object; live values come from the agent's connection when there is one."""
    last_seen = row.last_seen_at
    if conn is not None:
        last_seen = max(last_seen or 0, conn.last_seen_at)
    return {
        "id": row.id,
        "name": row.name,
        "hostname": conn.hostname if conn is not None and conn.hostname else row.hostname,
        "agent_version": row.agent_version,
        "is_connected": conn is not None,
        "registered_at": iso(row.registered_at),
        "connected_at": iso_or_none(row.connected_at),
        "last_seen_at": iso_or_none(last_seen),
        "features": [] if conn is None else sorted(conn.features),
        "labels": row.labels,
    }


def user_json(user: UserRow) -> dict[str, Any]:
    """A user (no password material)."""
    return {
        "id": user.id,
        "username": user.username,
        "email": user.email,
        "is_superuser": user.is_superuser,
        "server_username": user.server_username,
        "is_active": user.is_active,
    }


def token_json(token: TokenRow) -> dict[str, Any]:
    """A token without its key."""
    return {
        "id": token.id,
        "name": token.name,
        "kind": token.kind,
        "created_at": iso(token.created_at),
        "expires_at": iso_or_none(token.expires_at),
        "command_acl": None if token.command_acl is None else list(token.command_acl),
        "acl": None if token.acl is None else token.acl.model_dump(mode="json"),
        "gated": token.gated or token.kind == "login",
    }


def whoami_json(principal: Principal) -> dict[str, Any]:
    """``GET /api/auth/whoami/``."""
    user = principal.user
    return {
        "id": None if user is None else user.id,
        "username": principal.token.service_name if user is None else user.username,
        "email": "" if user is None else user.email,
        "is_superuser": principal.is_superuser,
        "auth_method": principal.auth_method,
        "work_session_required": principal.gated,
        "gated": principal.gated,
        "server_username": None if user is None else user.server_username,
        "acl": None if principal.acl is None else principal.acl.model_dump(mode="json"),
    }
