"""Helpers to run a command through the Commands API and wait for its result."""

from __future__ import annotations

import json
from typing import Any

import httpx


def run_command(api: httpx.Client, server: str, line: str, **fields: Any) -> dict[str, Any]:
    """Create a command, follow its NDJSON stream to the end, return the final object.

    The returned dict is the command object plus ``streamed``: the output as it arrived on
    the stream, and ``seqs``: the chunk sequence numbers seen.
    """
    response = api.post("/api/events/commands/", json={"server": server, "line": line, **fields})
    assert response.status_code == 201, response.text
    command_id = response.json()["id"]
    return follow(api, command_id)


def follow(api: httpx.Client, command_id: str) -> dict[str, Any]:
    """Read a command's stream until its final line."""
    streamed: list[str] = []
    seqs: list[int] = []
    with api.stream("GET", f"/api/events/commands/{command_id}/stream/") as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if not line:
                continue
            event = json.loads(line)
            if event["event"] == "output":
                seqs.append(event["seq"])
                streamed.append(event["content"])
            elif event["event"] == "finished":
                command: dict[str, Any] = event["command"]
                command["streamed"] = "".join(streamed)
                command["seqs"] = seqs
                return command
    raise AssertionError("the stream ended without a finished line")
