"""The configuration of the link to the control plane: where the agent dials, the
credentials it holds, how it checks grants, and the backhaul's keepalive and reconnects."""

from __future__ import annotations

import base64
import binascii
from pathlib import Path
from uuid import UUID

from pydantic import Field, field_validator, model_validator

# pydantic_core's URL type, which pydantic's AnyUrl wraps: the same parsing and errors,
# without pydantic.networks, a module the agent would load for this type alone (0.2-0.3 MB
# of an idle agent's memory, which is held to 40 MB).
from pydantic_core import Url as AnyUrl

from fleetgate.agent.config.section import Section


__all__ = ["BackhaulConfig", "ControlPlaneConfig", "GrantsConfig", "IdentityConfig"]


class ControlPlaneConfig(Section):
    """Where the agent dials and how it checks who answers.

    ``url`` names one control plane (or the load balancer in front of its replicas);
    ``urls`` names several replicas, tried in turn: a failed dial or a lost link moves
    the agent to the next one (with the same backoff as one URL). Either key, or both
    (``url`` is then tried first).
    """

    url: AnyUrl
    """Base URL of the control plane, ``https://…`` (``http://`` only for loopback)."""
    urls: tuple[AnyUrl, ...] = ()
    """Every replica's base URL, in the order they are tried (``url`` first when given)."""
    verify_tls: bool = True
    """Verify the control plane's certificate. Turning this off is logged at every start."""
    ca_file: Path | None = None
    """PEM bundle to verify against instead of the system trust store."""

    @model_validator(mode="before")
    @classmethod
    def _url_from_urls(cls, data: object) -> object:
        # ``urls`` alone: the first is ``url`` (the URL shown in the status, used first).
        if isinstance(data, dict) and "url" not in data:
            urls = data.get("urls")
            if isinstance(urls, list | tuple) and urls:
                return {**data, "url": urls[0]}
        return data

    @field_validator("url")
    @classmethod
    def _http_or_https(cls, url: AnyUrl) -> AnyUrl:
        if url.scheme not in {"http", "https"}:
            raise ValueError("must be an http:// or https:// URL")
        return url

    @field_validator("urls")
    @classmethod
    def _all_http_or_https(cls, urls: tuple[AnyUrl, ...]) -> tuple[AnyUrl, ...]:
        for url in urls:
            cls._http_or_https(url)
        return urls

    @model_validator(mode="after")
    def _one_scheme(self) -> ControlPlaneConfig:
        # One TLS context serves every replica: mixing http and https would silently
        # send credentials in clear to some of them.
        schemes = {url.scheme for url in (self.url, *self.urls)}
        if len(schemes) > 1:
            raise ValueError("url and urls must all be http:// or all https://")
        return self

    @property
    def all_urls(self) -> tuple[str, ...]:
        """Every base URL (no trailing slash), ``url`` first, each once."""
        ordered = [str(self.url).rstrip("/"), *(str(u).rstrip("/") for u in self.urls)]
        return tuple(dict.fromkeys(ordered))

    @property
    def backhaul_url(self) -> str:
        """The websocket URL of the backhaul endpoint (on ``url``)."""
        return self.websocket_url("/ws/agent/backhaul/")

    def websocket_url(self, path: str, base: str | None = None) -> str:
        """The websocket URL of ``path`` (absolute, starting with ``/``) on the control
        plane at ``base`` (default ``url``)."""
        base = (base or str(self.url)).rstrip("/")
        scheme, rest = base.split("://", 1)
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{path}"


class IdentityConfig(Section):
    """The credentials issued at registration."""

    server_id: UUID
    key_file: Path
    """File holding the server key (mode 0600, owned by root)."""
    control_plane_key: str | None = None
    """The control plane's Ed25519 public key (base64 of 32 bytes), from registration's
    ``signing_public_key``. Without it gated operations are refused (see ``grants``)."""

    ssh_ca_key: str | None = None
    """The control plane's SSH certificate authority (OpenSSH public key line), from
    registration's ``ssh_ca_public_key``. Without it ``ssh`` channels are refused."""

    @field_validator("ssh_ca_key")
    @classmethod
    def _openssh_public_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = value.split()
        if len(parts) < 2 or parts[0] != "ssh-ed25519":
            raise ValueError("must be an OpenSSH ssh-ed25519 public key line")
        try:
            base64.b64decode(parts[1], validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the key is not base64") from None
        return f"{parts[0]} {parts[1]}"

    @field_validator("control_plane_key")
    @classmethod
    def _ed25519_public_key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            raw = base64.b64decode(value.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("must be base64") from None
        if len(raw) != 32:
            raise ValueError(f"must be a 32-byte Ed25519 public key, got {len(raw)} bytes")
        return value.strip()


class GrantsConfig(Section):
    """How the agent checks the grants of gated operations."""

    allow_unsigned: bool = False
    """Development only: run commands that carry no grant (and, without a pinned key,
    run them unchecked). Logged as a warning at every start."""
    clock_skew: float = Field(default=60.0, ge=0, le=3600)
    """Seconds of clock difference tolerated at both ends of a grant's time window."""


class BackhaulConfig(Section):
    """Keepalive and reconnect timing, in seconds."""

    keepalive_interval: float = Field(default=15.0, gt=0)
    """How often an application ping is sent when the link is otherwise idle."""
    keepalive_timeout: float = Field(default=20.0, gt=0)
    """A pong later than this declares the peer dead (so detection takes < 60 s)."""
    open_timeout: float = Field(default=10.0, gt=0)
    reconnect_min_delay: float = Field(default=0.5, gt=0)
    reconnect_max_delay: float = Field(default=60.0, gt=0)
    stable_after: float = Field(default=30.0, ge=0)
    """A connection that lived this long resets the backoff schedule."""
