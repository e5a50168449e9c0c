"""The content digest a grant binds: exactly what the operation is allowed to do.

The control plane puts ``content_digest(operation)`` in the grant's claims (``content``)
when it signs; the agent recomputes it from the ``command.run`` or ``channel.open`` it
received and refuses a mismatch (``grant_content_mismatch``). So a relay that holds a
valid grant cannot change the line, the account, the environment, the path or the port
under it. Defined here once, used by both ends. Pure: no I/O.

The digest is the lowercase hex SHA-256 of the canonical JSON (``canonical_json``: keys
sorted, no spaces, UTF-8) of an object ``{"kind": ..., <fields>}`` whose fields are, per
kind (``None`` stays ``null``, a timeout is a float):

- ``command``: ``shell``, ``line``, ``username``, ``groupname``, ``env``, ``sudo``,
  ``timeout``;
- ``websh``: ``terminal_id``, ``username``, ``groupname``, ``shell``;
- ``files``: ``op``, ``path``, ``name``, ``username``, ``groupname``, ``recursive``,
  ``overwrite``;
- ``tunnel``: ``tunnel_id``, ``host``, ``port``;
- ``ssh``: ``username`` (the login; what runs is then decided per SSH request).

Fields that only shape the session (a terminal's size, a transfer's resume offset, a
stream's ``probe``) are left out: changing them gives no more than the grant allows.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any
from uuid import UUID

from fleetgate.shared.protocol.channels import (
    ChannelSpec,
    FilesSpec,
    SshSpec,
    TunnelSpec,
    WebshSpec,
)
from fleetgate.shared.protocol.grants import canonical_json
from fleetgate.shared.protocol.messages import CommandRun


__all__ = ["channel_content", "command_content", "content_digest"]

TUNNEL_DIGESTS = 256
"""Tunnels whose content digest is remembered (the most recently used)."""


def command_content(run: CommandRun) -> dict[str, Any]:
    """What a command's grant binds."""
    return {
        "kind": "command",
        "shell": run.shell,
        "line": run.line,
        "username": run.username,
        "groupname": run.groupname,
        "env": dict(run.env),
        "sudo": run.sudo,
        "timeout": None if run.timeout is None else float(run.timeout),
    }


def channel_content(spec: ChannelSpec) -> dict[str, Any]:
    """What a channel's grant binds, by kind."""
    if isinstance(spec, WebshSpec):
        return {
            "kind": "websh",
            "terminal_id": str(spec.terminal_id),
            "username": spec.username,
            "groupname": spec.groupname,
            "shell": spec.shell,
        }
    if isinstance(spec, FilesSpec):
        return {
            "kind": "files",
            "op": spec.op,
            "path": spec.path,
            "name": spec.name,
            "username": spec.username,
            "groupname": spec.groupname,
            "recursive": spec.recursive,
            "overwrite": spec.overwrite,
        }
    if isinstance(spec, TunnelSpec):
        return _tunnel_content(spec.tunnel_id, spec.host, spec.port)
    assert isinstance(spec, SshSpec)
    return {"kind": "ssh", "username": spec.username}


def _tunnel_content(tunnel_id: UUID, host: str | None, port: int) -> dict[str, Any]:
    return {"kind": "tunnel", "tunnel_id": str(tunnel_id), "host": host, "port": port}


@functools.lru_cache(maxsize=TUNNEL_DIGESTS)
def _tunnel_digest(tunnel_id: UUID, host: str | None, port: int) -> str:
    return hashlib.sha256(canonical_json(_tunnel_content(tunnel_id, host, port))).hexdigest()


def content_digest(operation: CommandRun | ChannelSpec) -> str:
    """The hex SHA-256 of the canonical JSON of what ``operation`` does."""
    if isinstance(operation, TunnelSpec):
        # Every stream of a tunnel has the same content, and the agent checks it for each
        # one (a quarter of the stream's checks): computed once per tunnel.
        return _tunnel_digest(operation.tunnel_id, operation.host, operation.port)
    if isinstance(operation, CommandRun):
        content = command_content(operation)
    else:
        content = channel_content(operation)
    return hashlib.sha256(canonical_json(content)).hexdigest()
