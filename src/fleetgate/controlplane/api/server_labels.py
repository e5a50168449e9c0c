"""``/api/servers/servers/<id or name>/labels/``: superusers set a server's labels.

A server's labels are its agent's (from its configuration, sent in every ``hello``)
overridden by the operators' (set here). ``PATCH`` merges: a ``null`` value removes the
operator's label (the agent's one of the same key, if any, shows again).
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict

from fleetgate.controlplane.api.deps import ServicesDep, SuperuserDep
from fleetgate.controlplane.api.serializers import server_json
from fleetgate.controlplane.errors import invalid_request, server_not_found
from fleetgate.controlplane.store import servers as servers_store
from fleetgate.shared.labels import LabelError, check_labels


__all__ = ["router"]

router = APIRouter(prefix="/api/servers/servers")


class LabelsBody(BaseModel):
    """``PATCH .../labels/``: ``{"labels": {"role": "web", "old": null}}``."""

    model_config = ConfigDict(extra="forbid")
    labels: dict[str, str | None]


@router.patch("/{ref}/labels/")
async def patch_labels(
    ref: str, body: LabelsBody, principal: SuperuserDep, services: ServicesDep
) -> JSONResponse:
    """Merge operator labels into a server's; answer with the server (effective labels)."""
    try:
        check_labels({k: v for k, v in body.labels.items() if v is not None})
        check_labels(dict.fromkeys(body.labels, ""))  # keys of removals too
    except LabelError as exc:
        raise invalid_request(str(exc), "labels") from None
    server = await services.db.read(servers_store.get_server, ref)
    if server is None:
        raise server_not_found(ref)
    try:
        updated = await services.db.write(servers_store.update_labels, server.id, body.labels)
    except LabelError as exc:
        raise invalid_request(str(exc), "labels") from None
    if updated is None:
        raise server_not_found(ref)
    fresh = await services.db.read(servers_store.get_server, server.id)
    if fresh is None:
        raise server_not_found(ref)
    return JSONResponse(server_json(fresh, services.hub.connection(fresh.id)))
