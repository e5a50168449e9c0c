"""The agent refuses loader and interpreter variables in a command's env (issue 14,
finding 2), whatever the control plane let through, unless its ``exec.allowed_env``
allows the name: a real in-process agent, a scripted control plane sending the command
with a valid grant, and a marker file that shows whether anything ran."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetgate.controlplane.grants import GrantSigner
from fleetgate.shared.protocol import (
    CommandAcked,
    CommandFinished,
    CommandRun,
    GrantClaims,
    content_digest,
    encode,
)
from tests.integration.backhaul.conftest import MakeAgent
from tests.support.fake_cp import ScriptedControlPlane


SIGNER = GrantSigner(Ed25519PrivateKey.generate())


async def run_with_env(
    cp: ScriptedControlPlane,
    make_agent: MakeAgent,
    tmp_path: Path,
    env: dict[str, str],
    **sections: Any,
) -> tuple[CommandFinished, bool]:
    """Send one granted command with ``env``; its final report and whether it ran."""
    await make_agent(
        identity={"control_plane_key": SIGNER.public_key_b64},
        grants={"allow_unsigned": False},
        **sections,
    )
    await cp.connections.get()
    command_id = uuid.uuid4()
    now = int(time.time())
    marker = tmp_path / f"ran-{command_id}"
    message = CommandRun(
        command_id=command_id,
        line=f'touch {marker} && test "$PATH" = "{env.get("PATH", "$PATH")}"',
        env=env,
    )
    claims = GrantClaims(
        command_id=command_id,
        server_id=cp.server_id,
        auth="token",
        assignee="ops",
        scopes=["command"],
        servers=[cp.server_id],
        not_before=now - 5,
        content=content_digest(message),
    )
    message = message.model_copy(update={"grant": SIGNER.sign(claims)})
    await cp.send(encode(message))
    acked = False
    while True:
        frame = await cp.next_frame(timeout=30)
        if isinstance(frame, CommandAcked) and frame.command_id == command_id:
            acked = True
        if isinstance(frame, CommandFinished) and frame.command_id == command_id:
            assert marker.exists() == acked  # a refused command never starts
            return frame, marker.exists()


@pytest.mark.parametrize("name", ["PATH", "LD_PRELOAD", "PYTHONPATH", "BASH_ENV"])
async def test_the_agent_refuses_loader_variables(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, tmp_path: Path, name: str
) -> None:
    finished, ran = await run_with_env(scripted_cp, make_agent, tmp_path, {name: "/tmp/x"})
    assert not ran
    assert finished.error_phase == "denied"
    assert finished.message is not None
    assert "env_not_allowed" in finished.message
    assert name in finished.message


async def test_an_allowed_name_and_harmless_names_pass(
    scripted_cp: ScriptedControlPlane, make_agent: MakeAgent, tmp_path: Path
) -> None:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    finished, ran = await run_with_env(
        scripted_cp, make_agent, tmp_path, env, exec={"allowed_env": ["PATH"]}
    )
    assert ran
    assert (finished.exit_code, finished.error_phase) == (0, None)
