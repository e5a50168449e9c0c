"""Replica settings: what is refused at start, naming the key."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from fleetgate.controlplane.cluster.runtime import libpq_url
from fleetgate.controlplane.config import ControlPlaneSettings


PG = "postgresql+psycopg://fleet:secret@db.internal:5432/fleet"


def test_a_replica_on_postgresql() -> None:
    settings = ControlPlaneSettings(
        cluster=True,
        database_url=PG,
        replica_id="cp-1",
        host="10.0.0.5",
        port=8000,
        trusted_proxies=["10.0.0.1", "192.168.0.0/24"],
    )
    assert settings.replica_url == "http://10.0.0.5:8000"
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.1/32", "192.168.0.0/24"]
    assert libpq_url(PG) == "postgresql://fleet:secret@db.internal:5432/fleet"


def test_internal_url_wins_and_wildcards_need_it() -> None:
    wild = {"cluster": True, "database_url": PG, "host": "0.0.0.0"}
    with pytest.raises(ValidationError, match="internal_url: a replica listening on a wildcard"):
        ControlPlaneSettings(**wild)  # type: ignore[arg-type]
    settings = ControlPlaneSettings(**wild, internal_url="http://cp-1.internal:8000/")  # type: ignore[arg-type]
    assert settings.replica_url == "http://cp-1.internal:8000"


@pytest.mark.parametrize(
    ("fields", "key"),
    [
        ({"cluster": True}, "cluster: replicas share one PostgreSQL database"),
        ({"cluster": True, "database_url": "sqlite:///x.db"}, "cluster: replicas share"),
        ({"replica_id": "a b"}, "replica_id"),
        ({"replica_id": ""}, "replica_id"),
        ({"internal_url": "ftp://x"}, "internal_url"),
        ({"internal_url": "http://x/path"}, "internal_url"),
        ({"trusted_proxies": ["not-an-address"]}, "trusted_proxies"),
        ({"trusted_proxies": ["10.0.0.1/8"]}, "trusted_proxies"),
    ],
)
def test_refused_naming_the_key(fields: dict[str, object], key: str) -> None:
    with pytest.raises(ValidationError, match=key):
        ControlPlaneSettings(**fields)  # type: ignore[arg-type]
