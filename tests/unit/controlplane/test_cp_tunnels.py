"""Parts of the control plane's tunnels: close reasons, and what a tunnel's streams share
(their spec, a token's grant)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fleetgate.controlplane.grants import GrantSigner, operation_claims
from fleetgate.controlplane.hub.channelregistry import ChannelRegistry
from fleetgate.controlplane.hub.tunnels import TunnelStreams, stream_spec
from fleetgate.controlplane.store import Database
from fleetgate.controlplane.store.tunnels import TunnelRow
from fleetgate.shared.protocol import GrantClaims, content_digest
from fleetgate.shared.protocol.channels import refusal_reason
from fleetgate.shared.protocol.grants import decode_payload, parse_claims


def test_close_reason_fits_a_close_frame() -> None:
    short = refusal_reason("work_session_expired", "work session x has expired")
    assert json.loads(short) == {
        "code": "work_session_expired",
        "detail": "work session x has expired",
    }
    long = refusal_reason("work_session_expired", "y" * 500)
    assert len(long.encode()) <= 123
    assert json.loads(long)["code"] == "work_session_expired"
    assert json.loads(long)["detail"].endswith("...")


def _row(tunnel_id: str) -> TunnelRow:
    return TunnelRow(
        id=tunnel_id,
        server_id=str(uuid.uuid4()),
        server_name="web-01",
        remote_host="127.0.0.1",
        remote_port=8080,
        owner_user=None,
        owner_name=None,
        owner_token="tok",
        work_session_id=None,
        created_at=1,
        closed_at=None,
        close_code=None,
        close_reason=None,
    )


def _claims(row: TunnelRow, digest: str, second: int) -> GrantClaims:
    return operation_claims(
        operation_id=row.id,
        scope="tunnel",
        server_id=row.server_id,
        now_us=second * 1_000_000,
        principal_name="svc",
        session=None,
        content=digest,
    )


async def test_a_tunnels_spec_and_token_grant_are_made_once_per_key(tmp_path: Path) -> None:
    db = Database(tmp_path / "cp.db")
    await db.open()
    try:
        streams = TunnelStreams(db, ChannelRegistry())
        signer = GrantSigner(Ed25519PrivateKey.generate())
        row = _row(str(uuid.uuid4()))
        spec, digest = streams.spec(row, probe=False)
        assert streams.spec(row, probe=False) == (spec, digest)
        assert digest == content_digest(stream_spec(row.id, "127.0.0.1", 8080))
        probe_spec, _ = streams.spec(row, probe=True)
        assert probe_spec.probe
        assert not spec.probe

        made: list[int] = []

        def claims(second: int) -> GrantClaims:
            made.append(second)
            return _claims(row, digest, second)

        first = streams.token_grant(row.id, ("svc", 100), lambda: claims(100), signer)
        again = streams.token_grant(row.id, ("svc", 100), lambda: claims(100), signer)
        assert again is first
        assert made == [100]  # the same key: the claims were not built again
        later = streams.token_grant(row.id, ("svc", 101), lambda: claims(101), signer)
        assert made == [100, 101]
        assert later.payload != first.payload  # not_before moved with the second
        assert parse_claims(decode_payload(later.payload)).not_before == 101

        await streams.close(row, "TUNNEL_CLOSED", "closed")
        streams.token_grant(row.id, ("svc", 101), lambda: claims(101), signer)
        assert made == [100, 101, 101]  # a closed tunnel's grants are forgotten
    finally:
        await db.close()
