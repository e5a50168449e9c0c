"""JSON schema of the backhaul protocol, generated from the pydantic models.

``python -m fleetgate.shared.protocol.schema > docs/protocol.schema.json`` regenerates the published
file; a test fails when the file and the models disagree.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pydantic import TypeAdapter

from fleetgate.shared.protocol.messages import PROTOCOL_VERSION, AgentMessage, ServerMessage


__all__ = ["protocol_schema", "render"]


def protocol_schema() -> dict[str, Any]:
    """Both directions of the protocol as one JSON schema document."""
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": f"Agent backhaul protocol v{PROTOCOL_VERSION}",
        "x-protocol-version": PROTOCOL_VERSION,
        "properties": {
            "agent_to_control_plane": TypeAdapter(AgentMessage).json_schema(),
            "control_plane_to_agent": TypeAdapter(ServerMessage).json_schema(),
        },
    }


def render() -> str:
    """The schema as stable, indented JSON text with a trailing newline."""
    return json.dumps(protocol_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
