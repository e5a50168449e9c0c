"""Local enforcement: a real in-process agent refuses commands whose grant is forged,
tampered with, expired, not yet valid, for another server, scope or command, or missing,
even though the (scripted) control plane sends them straight to it."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetgate.controlplane.grants import GrantSigner
from fleetgate.shared.protocol import (
    CHANNEL_SCOPES,
    ChannelOpen,
    ChannelSpec,
    CommandAcked,
    CommandFinished,
    CommandRun,
    ErrorMessage,
    FilesSpec,
    Grant,
    GrantClaims,
    TunnelSpec,
    WebshSpec,
    content_digest,
    encode,
)
from fleetgate.shared.protocol.grants import b64url, decode_payload
from tests.integration.backhaul.conftest import MakeAgent
from tests.support.fake_cp import ScriptedControlPlane


SIGNER = GrantSigner(Ed25519PrivateKey.generate())
FORGER = GrantSigner(Ed25519PrivateKey.generate())


def claims(cp: ScriptedControlPlane, command_id: uuid.UUID, **overrides: Any) -> GrantClaims:
    now = int(time.time())
    if "content" not in overrides:  # by default, the content of the command run_with sends
        overrides["content"] = content_digest(command_for(command_id))
    fields: dict[str, Any] = {
        "command_id": command_id,
        "server_id": cp.server_id,
        "auth": "work_session",
        "work_session": str(uuid.uuid4()),
        "assignee": "alice",
        "scopes": ["command"],
        "servers": [cp.server_id],
        "not_before": now - 5,
        "expires_at": now + 3600,
    }
    fields.update(overrides)
    return GrantClaims(**fields)


def tamper(grant: Grant) -> Grant:
    """Re-encode the payload with another scope list, keeping the old signature."""
    data = bytearray(decode_payload(grant.payload))
    data = data.replace(b'"scopes":["command"]', b'"scopes":["command","websh"]')
    return Grant(payload=b64url(bytes(data)), signature=grant.signature)


def flip_signature(grant: Grant) -> Grant:
    raw = bytearray(base64.b64decode(grant.signature))
    raw[0] ^= 1
    return Grant(payload=grant.payload, signature=base64.b64encode(bytes(raw)).decode())


MARKERS: Path | None = None
"""Where the commands of the running test leave their marker (set by ``run_with``)."""


def command_for(command_id: uuid.UUID, **changes: Any) -> CommandRun:
    """The command a test sends (a grant binds its content)."""
    assert MARKERS is not None
    line = f"touch {MARKERS / f'ran-{command_id}'}"
    return CommandRun(command_id=command_id, line=line).model_copy(update=changes)


async def run_with(
    cp: ScriptedControlPlane, make_agent: MakeAgent, tmp_path: Path, grant: Any, **sections: Any
) -> tuple[CommandFinished, bool, uuid.UUID]:
    """Send one command (its grant built by ``grant(command_id)``); return its final report,
    whether it ran, and its id. ``sections["send"]`` changes what is sent (a relay)."""
    global MARKERS  # the helpers above build the same line
    MARKERS = tmp_path
    send = sections.pop("send", {})
    identity = {"control_plane_key": SIGNER.public_key_b64}
    identity.update(sections.pop("identity", {}))
    grants = {"allow_unsigned": False, **sections.pop("grants", {})}
    await make_agent(identity=identity, grants=grants)
    await cp.connections.get()
    command_id = uuid.uuid4()
    marker = tmp_path / f"ran-{command_id}"
    message = command_for(command_id, grant=grant(command_id), **send)
    await cp.send(encode(message))
    acked = False
    while True:
        frame = await cp.next_frame(timeout=30)
        if isinstance(frame, CommandAcked) and frame.command_id == command_id:
            acked = True
        if isinstance(frame, CommandFinished) and frame.command_id == command_id:
            ran = marker.exists()
            assert ran == acked  # a refused command never starts
            return frame, ran, command_id


async def test_a_valid_grant_runs(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, tmp_path: Path
) -> None:
    finished, ran, _ = await run_with(
        scripted_cp, make_agent, tmp_path, lambda cid: SIGNER.sign(claims(scripted_cp, cid))
    )
    assert ran
    assert (finished.exit_code, finished.error_phase) == (0, None)


async def test_the_clock_skew_allowance_applies(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, tmp_path: Path
) -> None:
    def late(cid: uuid.UUID) -> Grant:
        return SIGNER.sign(claims(scripted_cp, cid, expires_at=int(time.time()) - 10))

    _, ran, _ = await run_with(scripted_cp, make_agent, tmp_path, late)
    assert ran


MakeGrant = Callable[[ScriptedControlPlane, uuid.UUID], Grant | None]

CASES: dict[str, tuple[str, MakeGrant]] = {
    "forged": ("work_session_not_usable", lambda cp, cid: FORGER.sign(claims(cp, cid))),
    "tampered": ("work_session_not_usable", lambda cp, cid: tamper(SIGNER.sign(claims(cp, cid)))),
    "bad signature": (
        "work_session_not_usable",
        lambda cp, cid: flip_signature(SIGNER.sign(claims(cp, cid))),
    ),
    "replayed onto another command": (
        "work_session_not_usable",
        lambda cp, cid: SIGNER.sign(claims(cp, uuid.uuid4())),
    ),
    "expired": (
        "work_session_expired",
        lambda cp, cid: SIGNER.sign(
            claims(cp, cid, not_before=int(time.time()) - 7200, expires_at=int(time.time()) - 120)
        ),
    ),
    "not yet valid": (
        "work_session_not_active",
        lambda cp, cid: SIGNER.sign(claims(cp, cid, not_before=int(time.time()) + 600)),
    ),
    "wrong server": (
        "work_session_server_not_allowed",
        lambda cp, cid: SIGNER.sign(
            claims(cp, cid, server_id=(other := uuid.uuid4()), servers=[other])
        ),
    ),
    "server not in the session": (
        "work_session_server_not_allowed",
        lambda cp, cid: SIGNER.sign(claims(cp, cid, servers=[uuid.uuid4()])),
    ),
    "wrong scope": (
        "work_session_scope_not_allowed",
        lambda cp, cid: SIGNER.sign(claims(cp, cid, scopes=["websh", "sudo"])),
    ),
    "missing": ("work_session_required", lambda cp, cid: None),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_refused_grants_never_run(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, tmp_path: Path, case: str
) -> None:
    code, make = CASES[case]
    finished, ran, _ = await run_with(
        scripted_cp, make_agent, tmp_path, lambda cid: make(scripted_cp, cid)
    )
    assert not ran
    assert finished.error_phase == "denied"
    assert finished.exit_code == 126
    assert finished.success is False
    assert finished.message is not None
    assert finished.message.startswith(f"{code}: ")


async def test_without_a_pinned_key_even_a_valid_grant_is_refused(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, tmp_path: Path
) -> None:
    finished, ran, _ = await run_with(
        scripted_cp,
        make_agent,
        tmp_path,
        lambda cid: SIGNER.sign(claims(scripted_cp, cid)),
        identity={"control_plane_key": None},
    )
    assert not ran
    assert finished.error_phase == "denied"
    assert finished.message is not None
    assert "control_plane_key" in finished.message


async def test_allow_unsigned_with_a_pinned_key_still_verifies_a_present_grant(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, tmp_path: Path
) -> None:
    finished, ran, _ = await run_with(
        scripted_cp,
        make_agent,
        tmp_path,
        lambda cid: FORGER.sign(claims(scripted_cp, cid)),
        grants={"allow_unsigned": True},
    )
    assert not ran
    assert finished.error_phase == "denied"


RELAYED: dict[str, dict[str, Any]] = {
    "line swapped": {"line": "id -un"},
    "user swapped": {"username": "nobody"},
    "group swapped": {"groupname": "root"},
    "env added": {"env": {"MODE": "unsafe"}},  # (loader variables are refused anyway)
    "sudo flag set": {"sudo": True},
    "timeout changed": {"timeout": 3600.0},
}


@pytest.mark.parametrize("case", sorted(RELAYED))
async def test_a_relay_cannot_change_what_a_valid_grant_authorizes(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, tmp_path: Path, case: str
) -> None:
    """Issue 14 finding 6: the grant binds the line, user, group, env, sudo flag and
    timeout; a relay that changes any of them under a valid grant is refused."""
    finished, ran, _ = await run_with(
        scripted_cp,
        make_agent,
        tmp_path,
        # Every scope the changed command could need, so only the content differs.
        lambda cid: SIGNER.sign(claims(scripted_cp, cid, scopes=["command", "sudo"])),
        send=RELAYED[case],
    )
    assert not ran
    assert finished.error_phase == "denied"
    assert finished.message is not None
    assert finished.message.startswith("grant_content_mismatch: ")


def _channel_cases() -> dict[str, tuple[ChannelSpec, ChannelSpec]]:
    terminal, tunnel = uuid.uuid4(), uuid.uuid4()
    files = {"op": "download", "username": "nobody", "transfer_id": "ab" * 8}
    return {
        "terminal user": (
            WebshSpec(terminal_id=terminal, username="nobody"),
            WebshSpec(terminal_id=terminal, username="root"),
        ),
        "terminal shell": (
            WebshSpec(terminal_id=terminal, username="nobody"),
            WebshSpec(terminal_id=terminal, username="nobody", shell="/bin/sh"),
        ),
        "file path": (
            FilesSpec(path="/tmp/notes.txt", **files),
            FilesSpec(path="/etc/shadow", **files),
        ),
        "file user": (
            FilesSpec(path="/tmp/notes.txt", **files),
            FilesSpec(path="/tmp/notes.txt", **{**files, "username": "root"}),
        ),
        "file op": (
            FilesSpec(path="/tmp/notes.txt", **files),
            FilesSpec(path="/tmp/notes.txt", **{**files, "op": "upload"}),
        ),
        "file recursive": (
            FilesSpec(path="/tmp", **files),
            FilesSpec(path="/tmp", recursive=True, **files),
        ),
        "tunnel port": (
            TunnelSpec(tunnel_id=tunnel, port=8080),
            TunnelSpec(tunnel_id=tunnel, port=22),
        ),
        "tunnel host": (
            TunnelSpec(tunnel_id=tunnel, port=8080),
            TunnelSpec(tunnel_id=tunnel, port=8080, host="::1"),
        ),
    }


CHANNEL_CASES = sorted(_channel_cases())


@pytest.mark.parametrize("case", CHANNEL_CASES)
async def test_a_relay_cannot_change_what_a_channel_grant_authorizes(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, case: str
) -> None:
    """Issue 14 finding 6, channels: the grant binds the terminal's user and shell, the
    transfer's op, path, user and recursion, the tunnel's host and port."""
    signed, sent = _channel_cases()[case]
    await make_agent(
        identity={"control_plane_key": SIGNER.public_key_b64}, grants={"allow_unsigned": False}
    )
    await scripted_cp.connections.get()
    channel_id = uuid.uuid4()
    scope = CHANNEL_SCOPES[signed.kind]
    grant = SIGNER.sign(
        claims(scripted_cp, channel_id, scopes=[scope], content=content_digest(signed))
    )
    await scripted_cp.send(encode(ChannelOpen(channel_id=channel_id, spec=sent, grant=grant)))
    while True:
        frame = await scripted_cp.next_frame(timeout=30)
        if isinstance(frame, ErrorMessage) and frame.ref == str(channel_id):
            break
    assert frame.code == "grant_content_mismatch"


@pytest.mark.parametrize("named", ["another tunnel", "another channel", "the tunnel"])
async def test_a_tunnel_stream_grant_names_the_stream_or_its_tunnel(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, named: str
) -> None:
    """One grant may serve every stream of a tunnel (the agent says so in its hello);
    one that names another tunnel, or another channel, is refused."""
    await make_agent(
        identity={"control_plane_key": SIGNER.public_key_b64}, grants={"allow_unsigned": False}
    )
    await scripted_cp.connections.get()
    assert scripted_cp.hellos[-1].tunnel_grants
    channel_id, spec = uuid.uuid4(), TunnelSpec(tunnel_id=uuid.uuid4(), port=1000)
    subject = {"another tunnel": uuid.uuid4(), "another channel": uuid.uuid4()}.get(
        named, spec.tunnel_id
    )
    grant = SIGNER.sign(
        claims(scripted_cp, subject, scopes=["tunnel"], content=content_digest(spec))
    )
    await scripted_cp.send(encode(ChannelOpen(channel_id=channel_id, spec=spec, grant=grant)))
    while True:
        frame = await scripted_cp.next_frame(timeout=30)
        if isinstance(frame, ErrorMessage) and frame.ref == str(channel_id):
            break
    # The agent's tunnels are disabled: a grant it accepts meets the tunnel policy next.
    expected = "tunnel_disabled" if named == "the tunnel" else "work_session_not_usable"
    assert frame.code == expected
