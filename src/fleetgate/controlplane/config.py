"""Control-plane settings, from ``CONTROLPLANE_*`` environment variables and CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Self

from pydantic import Field, IPvAnyNetwork, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fleetgate.controlplane.store.engine import (
    InvalidDatabaseUrl,
    backend_of,
    parse_url,
    sqlite_url,
)
from fleetgate.shared.protocol import DEFAULT_MAX_MESSAGE_BYTES


__all__ = ["ControlPlaneSettings"]


class ControlPlaneSettings(BaseSettings):
    """Everything the control plane needs to run; each field is ``CONTROLPLANE_<NAME>``."""

    model_config = SettingsConfigDict(
        env_prefix="CONTROLPLANE_",
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,  # database_url may hold a password
    )

    db_path: Path = Path("controlplane.db")
    """The SQLite database file (created on first start) when ``database_url`` is not
    set; the grant-signing and SSH CA keys live beside it (``<db_path>.signing-key``)
    whichever database is used."""
    database_url: str | None = None
    """The database, as a SQLAlchemy URL: ``sqlite:///path`` (the embedded default) or
    ``postgresql+psycopg://user:password@host:port/database`` (``docs/database.md``).
    Checked at start; its password is never logged."""
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    public_url: str | None = None
    """Base URL used for absolute ``next``/``previous`` links; default: from the request."""
    max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, ge=64 * 1024)
    """Largest backhaul frame accepted; the transport allows twice this so that an
    oversized frame can be answered with an ``error`` message."""
    agent_idle_timeout: float = Field(default=60.0, gt=0)
    """Seconds without any frame from an agent before the hub closes its connection."""
    confirm_batch: int = Field(default=500, ge=1)
    """Reports stored per transaction (and confirmed at once) at most."""
    backhaul_compression: bool = False
    """permessage-deflate on the control plane's websockets. Off by default: compression
    state costs tens of KB per idle agent connection and CPU on every frame, for small
    JSON frames on a fast network."""
    report_batch: int = Field(default=5000, ge=1)
    """Reports of all agents stored per transaction at most (the shared report writer)."""
    login_token_ttl: float = Field(default=12 * 3600, gt=0)
    """Lifetime of the token returned by ``POST /api/auth/login/``, in seconds."""
    work_session_max_duration: float = Field(default=4 * 3600, gt=0)
    """Longest a work session may last (seconds from its start, or from now on extend)."""
    allowed_env: frozenset[str] = frozenset()
    """Env names a command request may set although ``shared.envpolicy`` denies them
    (``PATH``, ``LD_*``, ...); the agent must allow them too (``exec.allowed_env``).
    JSON list in ``CONTROLPLANE_ALLOWED_ENV``."""
    tls_cert: Path | None = None
    """PEM certificate (chain) to serve HTTPS and ``wss://`` with; needs ``tls_key``."""
    tls_key: Path | None = None
    """PEM private key of ``tls_cert``; must not be readable by group or others."""
    cluster: bool = False
    """This process is one replica of several on the same ``database_url`` (PostgreSQL):
    agents may be linked to any replica and what is submitted to one reaches them
    (``docs/replicas.md``)."""
    replica_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,64}$")
    """This replica's name among the others (default: a random one per start)."""
    internal_url: str | None = Field(default=None, pattern=r"^https?://[^\s/]+/?$")
    """Where the other replicas reach this one (``http://10.0.0.5:8000``), for relaying
    channels; default: the listen address, which must then not be a wildcard."""
    trusted_proxies: tuple[IPvAnyNetwork, ...] = ()
    """Addresses of the load balancers in front (JSON list of addresses or networks):
    only their ``X-Forwarded-For``/``X-Forwarded-Proto`` are believed."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"

    @model_validator(mode="after")
    def _tls_pair(self) -> Self:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both or neither")
        return self

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        try:
            parse_url(value)
        except InvalidDatabaseUrl as exc:
            raise ValueError(str(exc)) from None
        return value

    @property
    def database(self) -> str:
        """The database URL in use: ``database_url``, or the SQLite file ``db_path``."""
        return self.database_url or sqlite_url(self.db_path)

    @model_validator(mode="after")
    def _replica(self) -> Self:
        if not self.cluster:
            return self
        if self.database_url is None or backend_of(parse_url(self.database_url)) != "postgresql":
            raise ValueError(
                "cluster: replicas share one PostgreSQL database: set database_url to a "
                "postgresql+psycopg:// URL"
            )
        if self.internal_url is None and self.host in {"0.0.0.0", "::", ""}:
            raise ValueError(
                "internal_url: a replica listening on a wildcard address must say where "
                "the other replicas reach it"
            )
        return self

    @property
    def replica_url(self) -> str:
        """Where the other replicas reach this one (``internal_url`` or the listen address)."""
        if self.internal_url is not None:
            return self.internal_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def tls(self) -> bool:
        """Whether the control plane serves TLS (``https://``, ``wss://``)."""
        return self.tls_cert is not None

    @property
    def ws_max_size(self) -> int:
        """Transport-level websocket message limit (twice the application limit)."""
        return 2 * self.max_message_bytes
