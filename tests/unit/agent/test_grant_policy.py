"""The agent's grant check, pure: signature, command binding, server, window, scope."""

from __future__ import annotations

import base64
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings, strategies as st

from fleetgate.agent.config import parse
from fleetgate.agent.errors import ConfigError
from fleetgate.agent.policy import GrantPolicy, GrantRefused, load_public_key, verify_grant
from fleetgate.agent.policy.grants import VERIFIED_MEMO, PublicKey
from fleetgate.controlplane.grants import GrantSigner
from fleetgate.shared.protocol import Grant, GrantClaims
from fleetgate.shared.protocol.grants import b64url, canonical_json, decode_payload


SIGNER = GrantSigner(Ed25519PrivateKey.generate())
KEY = load_public_key(SIGNER.public_key_b64)
SERVER = uuid.UUID("11111111-1111-4111-8111-111111111111")
COMMAND = uuid.UUID("22222222-2222-4222-8222-222222222222")
NOW = 1_800_000_000.0
SKEW = 30.0
CONTENT = "ab" * 32


def claims(**overrides: object) -> GrantClaims:
    fields: dict[str, object] = {
        "command_id": COMMAND,
        "server_id": SERVER,
        "auth": "work_session",
        "work_session": "ws",
        "scopes": ["command"],
        "servers": [SERVER],
        "not_before": int(NOW) - 60,
        "expires_at": int(NOW) + 60,
        "content": CONTENT,
    }
    fields.update(overrides)
    return GrantClaims.model_validate(fields)


def check(
    grant: Grant | None,
    *,
    scope: str | tuple[str, ...] = "command",
    now: float = NOW,
    key: PublicKey = KEY,
    command_id: uuid.UUID | tuple[uuid.UUID, ...] = COMMAND,
) -> GrantClaims:
    return verify_grant(
        grant,
        key=key,
        command_id=command_id,
        server_id=SERVER,
        scope=scope,
        now=now,
        skew=SKEW,
        content=CONTENT,
    )


def code_of(grant: Grant | None, **kw: object) -> str | None:
    try:
        check(grant, **kw)  # type: ignore[arg-type]
    except GrantRefused as refused:
        return refused.code
    return None


def test_the_payload_is_canonical_json() -> None:
    grant = SIGNER.sign(claims())
    data = decode_payload(grant.payload)
    assert data == canonical_json(claims().model_dump(mode="json"))
    assert b" " not in data
    assert data.index(b'"auth"') < data.index(b'"command_id"') < data.index(b'"v"')
    assert check(grant) == claims()


@given(
    server=st.sampled_from([SERVER, uuid.uuid4()]),
    listed=st.booleans(),
    command=st.sampled_from([COMMAND, uuid.uuid4()]),
    scopes=st.lists(st.sampled_from(["command", "websh", "sudo", "tunnel"]), max_size=4),
    not_before=st.integers(-300, 300),
    length=st.one_of(st.none(), st.integers(0, 600)),
    scope=st.sampled_from(["command", "websh"]),
)
@settings(max_examples=200, deadline=None)
def test_a_grant_is_accepted_exactly_when_every_condition_holds(
    server: uuid.UUID,
    listed: bool,
    command: uuid.UUID,
    scopes: list[str],
    not_before: int,
    length: int | None,
    scope: str,
) -> None:
    start = int(NOW) + not_before
    expires_at = None if length is None else start + length
    grant = SIGNER.sign(
        claims(
            server_id=server,
            servers=[server] if listed else [uuid.uuid4()],
            command_id=command,
            scopes=scopes,
            not_before=start,
            expires_at=expires_at,
        )
    )
    in_window = start - SKEW <= NOW and (expires_at is None or NOW <= expires_at + SKEW)
    allowed = server == SERVER and listed and command == COMMAND and scope in scopes and in_window
    assert (code_of(grant, scope=scope) is None) == allowed


@given(st.data())
@settings(max_examples=200, deadline=None)
def test_any_changed_byte_is_refused(data: st.DataObject) -> None:
    grant = SIGNER.sign(claims())
    payload = bytearray(decode_payload(grant.payload))
    signature = bytearray(base64.b64decode(grant.signature))
    target = data.draw(st.sampled_from(["payload", "signature"]))
    buf = payload if target == "payload" else signature
    index = data.draw(st.integers(0, len(buf) - 1))
    buf[index] ^= data.draw(st.integers(1, 255))
    changed = Grant(payload=b64url(bytes(payload)), signature=base64.b64encode(signature).decode())
    assert code_of(changed) == "work_session_not_usable"


def test_a_forged_grant_is_refused() -> None:
    forger = GrantSigner(Ed25519PrivateKey.generate())
    assert code_of(forger.sign(claims())) == "work_session_not_usable"


@pytest.mark.parametrize(
    ("grant", "code"),
    [
        (None, "work_session_required"),
        (Grant(payload="!!", signature="AA=="), "work_session_not_usable"),
        (Grant(payload="e30", signature="not base64!"), "work_session_not_usable"),
    ],
)
def test_missing_or_malformed(grant: Grant | None, code: str) -> None:
    assert code_of(grant) == code


def test_signed_garbage_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    key_b64 = GrantSigner(key).public_key_b64
    data = b'{"not":"claims"}'
    grant = Grant(payload=b64url(data), signature=base64.b64encode(key.sign(data)).decode())
    with pytest.raises(GrantRefused) as info:
        verify_grant(
            grant,
            key=load_public_key(key_b64),
            command_id=COMMAND,
            server_id=SERVER,
            scope="command",
            now=NOW,
            skew=SKEW,
            content=CONTENT,
        )
    assert info.value.code == "work_session_not_usable"


def test_policy_defaults_are_safe() -> None:
    grant = SIGNER.sign(claims())
    unpinned = GrantPolicy(server_id=SERVER, key=None)
    with pytest.raises(GrantRefused):
        unpinned.check(grant, command_id=COMMAND, scope="command", now=NOW, content=CONTENT)
    assert unpinned.warning is not None
    pinned = GrantPolicy(server_id=SERVER, key=KEY, skew=SKEW)
    pinned.check(grant, command_id=COMMAND, scope="command", now=NOW, content=CONTENT)
    assert pinned.warning is None
    with pytest.raises(GrantRefused):
        pinned.check(None, command_id=COMMAND, scope="command", now=NOW, content=CONTENT)
    dev = GrantPolicy(server_id=SERVER, key=None, allow_unsigned=True)
    dev.check(None, command_id=COMMAND, scope="command", now=NOW, content=CONTENT)
    assert dev.warning is not None


def _config(**identity: object) -> dict[str, object]:
    return {
        "control_plane": {"url": "https://cp.example"},
        "identity": {"server_id": str(SERVER), "key_file": "/k", **identity},
    }


def test_config_pins_the_key_and_rejects_bad_ones() -> None:
    config = parse(_config(control_plane_key=SIGNER.public_key_b64))
    assert GrantPolicy.from_config(config).key is not None
    assert config.grants.allow_unsigned is False
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(ConfigError, match="control_plane_key"):
            parse(_config(control_plane_key=bad))


def test_a_tuple_of_scopes_needs_any_one_of_them() -> None:
    """An ``ssh`` channel opens with any SSH scope; its requests are checked one by one."""
    grant = SIGNER.sign(claims(scopes=["webftp"]))
    assert check(grant, scope=("websh", "command", "webftp", "tunnel")).scopes == ["webftp"]
    with pytest.raises(GrantRefused, match="'websh' or 'command'") as refused:
        check(grant, scope=("websh", "command"))
    assert refused.value.code == "work_session_scope_not_allowed"


def test_a_tuple_of_ids_needs_the_grant_to_name_one_of_them() -> None:
    """A tunnel stream's grant may name the stream or its tunnel, nothing else."""
    tunnel = uuid.uuid4()
    accepted = (COMMAND, tunnel)
    for named in accepted:
        grant = SIGNER.sign(claims(command_id=named))
        assert check(grant, command_id=accepted).command_id == named
    other = SIGNER.sign(claims(command_id=uuid.uuid4()))
    assert code_of(other, command_id=accepted) == "work_session_not_usable"


def test_a_remembered_signature_vouches_only_for_its_exact_bytes() -> None:
    """A grant verified once is taken at once when it comes again; a forged signature
    over the same claims, or the same signature over other claims, is still refused."""
    key = load_public_key(SIGNER.public_key_b64)  # a fresh memo
    grant = SIGNER.sign(claims())
    for _ in range(3):
        assert check(grant, key=key) == claims()
    forger = GrantSigner(Ed25519PrivateKey.generate())
    forged = Grant(payload=grant.payload, signature=forger.sign(claims()).signature)
    other = Grant(payload=SIGNER.sign(claims(scopes=["sudo"])).payload, signature=grant.signature)
    for bad in (forged, other):
        assert code_of(bad, key=key) == "work_session_not_usable"


def test_a_remembered_grant_still_expires() -> None:
    """Only the signature is remembered: the window is checked on every use."""
    key = load_public_key(SIGNER.public_key_b64)
    grant = SIGNER.sign(claims())
    check(grant, key=key)
    assert code_of(grant, key=key, now=NOW + 60 + SKEW + 1) == "work_session_expired"


def test_the_memo_of_verified_signatures_is_bounded() -> None:
    key = load_public_key(SIGNER.public_key_b64)
    grants = [SIGNER.sign(claims(command_id=uuid.uuid4())) for _ in range(VERIFIED_MEMO + 10)]
    for grant in grants:
        key.verify(base64.b64decode(grant.signature), decode_payload(grant.payload))
    assert len(key._verified) == VERIFIED_MEMO
