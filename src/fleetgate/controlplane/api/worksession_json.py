"""JSON shapes of work sessions and timeline items (docs/api.md)."""

from __future__ import annotations

import json
from typing import Any

from fleetgate.controlplane.store.worksessions import WorkSessionRow
from fleetgate.controlplane.timeutil import iso, iso_or_none


__all__ = ["event_json", "session_json"]


def _person(user_id: int | None, name: str | None, email: str | None) -> dict[str, Any] | None:
    return None if user_id is None else {"id": user_id, "name": name or "", "email": email or ""}


def session_json(row: WorkSessionRow, servers: list[dict[str, Any]]) -> dict[str, Any]:
    """The WorkSession object."""
    return {
        "id": row.id,
        "description": row.description,
        "status": row.status.value,
        "requester_type": row.requester_type,
        "scopes": list(row.scopes),
        "servers": servers,
        "created_by": _person(row.created_by, row.created_by_name, row.created_by_email),
        "assigned_user": _person(row.assigned_user, row.assigned_name, row.assigned_email),
        "starts_at": iso(row.starts_at),
        "expires_at": iso(row.expires_at),
        "started_at": iso_or_none(row.started_at),
        "completed_at": iso_or_none(row.completed_at),
        "added_at": iso(row.added_at),
        "updated_at": iso(row.updated_at),
        "sudo_policies": [dict(p) for p in row.sudo_policies],
    }


def event_json(event: dict[str, Any]) -> dict[str, Any]:
    """One timeline item: ``status_change``, ``command``, ``extend``, ``update``, ..."""
    data = json.loads(event["data"])
    out: dict[str, Any] = {
        "id": event["id"],
        "type": event["type"],
        "timestamp": iso(event["timestamp"]),
        "server_id": event["server_id"],
        "actor": event["actor_name"],
    }
    if event["type"] == "command":
        success = event["success"]
        out.update(
            {
                "command_id": event["command_id"],
                "shell": event["shell"],
                "line": event["line"],
                "success": None if success is None else bool(success),
                "exit_code": event["exit_code"],
                "elapsed_time": event["elapsed_time"],
                "denied": bool(data.get("denied", False)),
            }
        )
        if event["command_id"] is not None:
            out["sudo"] = bool(event["sudo"])
            out["requested_token"] = event["requested_token"]
        if event["error_phase"] == "denied":
            # Refused by the agent (a sudo line no pattern allows...): why, as a code.
            out["denied"] = True
            out["code"] = event["error_code"]
        if data.get("code"):
            out["code"] = data["code"]
            out["line"] = data.get("line", out["line"])
        if data.get("via") == "ssh":  # an exec over SSH: reported by the agent, no command row
            code = data.get("exit_code")
            out.update(
                via="ssh",
                connection=data.get("connection"),
                line=data.get("line"),
                exit_code=code,
                success=None if code is None else code == 0,
            )
    else:
        if event["type"] == "sudo":
            out["command_id"] = event["command_id"]
        for key, value in data.items():
            out[key] = iso(value) if key in ("from", "to") and isinstance(value, int) else value
    return out
