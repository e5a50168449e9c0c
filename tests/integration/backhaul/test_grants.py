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
    CommandAcked,
    CommandFinished,
    CommandRun,
    Grant,
    GrantClaims,
    encode,
)
from fleetgate.shared.protocol.grants import b64url, decode_payload
from tests.integration.backhaul.conftest import MakeAgent
from tests.support.fake_cp import ScriptedControlPlane


SIGNER = GrantSigner(Ed25519PrivateKey.generate())
FORGER = GrantSigner(Ed25519PrivateKey.generate())


def claims(cp: ScriptedControlPlane, command_id: uuid.UUID, **overrides: Any) -> GrantClaims:
    now = int(time.time())
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


async def run_with(
    cp: ScriptedControlPlane, make_agent: MakeAgent, tmp_path: Path, grant: Any, **sections: Any
) -> tuple[CommandFinished, bool, uuid.UUID]:
    """Send one command (its grant built by ``grant(command_id)``); return its final report,
    whether it ran, and its id."""
    identity = {"control_plane_key": SIGNER.public_key_b64}
    identity.update(sections.pop("identity", {}))
    grants = {"allow_unsigned": False, **sections.pop("grants", {})}
    await make_agent(identity=identity, grants=grants)
    await cp.connections.get()
    command_id = uuid.uuid4()
    marker = tmp_path / f"ran-{command_id}"
    message = CommandRun(command_id=command_id, line=f"touch {marker}", grant=grant(command_id))
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
