"""The control plane's tables as one SQLAlchemy Core :data:`metadata`, for SQLite and
PostgreSQL alike.

Timestamps are 64-bit integers of microseconds since the epoch (UTC); flags are integers
0/1 (as the SQLite schema had them, so an existing database needs no data change); JSON
documents are text. Secrets are stored as SHA-256 hex digests (tokens, server keys) or
scrypt hashes (passwords), never in clear. The versioned history of this schema is in
``store/migrations`` (Alembic); a change here comes with a new revision there.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    text,
)


__all__ = [
    "command_chunks",
    "commands",
    "fanout_commands",
    "fanouts",
    "metadata",
    "servers",
    "ssh_connections",
    "terminals",
    "tokens",
    "tunnels",
    "users",
    "work_session_events",
    "work_sessions",
]

Int64 = BigInteger().with_variant(Integer(), "sqlite")
"""BIGINT on PostgreSQL (microsecond timestamps overflow 32 bits); SQLite's INTEGER is
64-bit already, and only ``INTEGER PRIMARY KEY`` is its rowid."""

metadata = MetaData()


def _flag(name: str, default: int = 0) -> Column[int]:
    return Column(name, Int64, nullable=False, server_default=text(str(default)))


users = Table(
    "users",
    metadata,
    Column("id", Int64, primary_key=True, autoincrement=True),
    Column("username", Text, nullable=False, unique=True),
    Column("email", Text, nullable=False, server_default=text("''")),
    Column("password_hash", Text),
    _flag("is_superuser"),
    Column("created_at", Int64, nullable=False),
    Column("server_username", Text),
    _flag("is_active", 1),
    sqlite_autoincrement=True,
)

tokens = Table(
    "tokens",
    metadata,
    Column("id", Text, primary_key=True),
    Column("key_hash", Text, nullable=False, unique=True),
    Column("kind", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("user_id", Int64, ForeignKey("users.id", ondelete="CASCADE")),
    Column("service_name", Text),
    Column("command_acl", Text),
    Column("created_at", Int64, nullable=False),
    Column("expires_at", Int64),
    _flag("gated"),
    Column("acl", Text),
    CheckConstraint("kind IN ('api', 'service', 'login')", name="ck_tokens_kind"),
    Index("ix_tokens_user", "user_id"),
)

servers = Table(
    "servers",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("key_hash", Text, nullable=False),
    Column("hostname", Text, nullable=False, server_default=text("''")),
    Column("platform", Text, nullable=False, server_default=text("''")),
    Column("agent_version", Text),
    _flag("is_connected"),
    Column("registered_at", Int64, nullable=False),
    Column("connected_at", Int64),
    Column("last_seen_at", Int64),
    Column("agent_labels", Text, nullable=False, server_default=text("'{}'")),
    Column("labels", Text, nullable=False, server_default=text("'{}'")),
    Column("ssh_host_key", Text),
)

commands = Table(
    "commands",
    metadata,
    Column("id", Text, primary_key=True),
    Column("server_id", Text, ForeignKey("servers.id", ondelete="CASCADE"), nullable=False),
    Column("shell", Text, nullable=False),
    Column("line", Text, nullable=False),
    Column("username", Text, nullable=False),
    Column("groupname", Text, nullable=False, server_default=text("''")),
    Column("env", Text, nullable=False, server_default=text("'{}'")),
    Column("timeout", Float),
    Column("requested_by", Int64, ForeignKey("users.id", ondelete="SET NULL")),
    Column("added_at", Int64, nullable=False),
    Column("scheduled_at", Int64, nullable=False),
    Column("sent_at", Int64),
    Column("delivered_at", Int64),
    Column("acked_at", Int64),
    Column("handled_at", Int64),
    Column("cancelled_at", Int64),
    Column("elapsed_time", Float),
    Column("exit_code", Int64),
    Column("success", Int64),
    Column("result", Text),
    _flag("truncated"),
    Column("output_bytes", Int64),
    Column("error_phase", Text),
    Column("message", Text),
    Column("work_session_id", Text),
    Column("grant_token", Text),
    _flag("sudo"),
    Column("requested_token", Text),
    Column("error_code", Text),
    Index("ix_commands_scheduled", "scheduled_at", "added_at"),
    Index("ix_commands_added", "added_at"),
    Index("ix_commands_server", "server_id", "scheduled_at"),
    Index("ix_commands_requested_by", "requested_by", "scheduled_at"),
)
_UNSENT = text("sent_at IS NULL AND cancelled_at IS NULL")
_UNDELIVERED = text("delivered_at IS NULL AND cancelled_at IS NULL AND handled_at IS NULL")
Index(
    "ix_commands_unsent",
    commands.c.scheduled_at,
    sqlite_where=_UNSENT,
    postgresql_where=_UNSENT,
)
Index(
    "ix_commands_undelivered",
    commands.c.server_id,
    commands.c.scheduled_at,
    sqlite_where=_UNDELIVERED,
    postgresql_where=_UNDELIVERED,
)

command_chunks = Table(
    "command_chunks",
    metadata,
    Column("command_id", Text, ForeignKey("commands.id", ondelete="CASCADE"), nullable=False),
    Column("seq", Int64, nullable=False),
    Column("content", Text, nullable=False),
    PrimaryKeyConstraint("command_id", "seq"),
    sqlite_with_rowid=False,
)

work_sessions = Table(
    "work_sessions",
    metadata,
    Column("id", Text, primary_key=True),
    Column("description", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("requester_type", Text, nullable=False, server_default=text("'user'")),
    Column("scopes", Text, nullable=False),
    Column("servers", Text, nullable=False),
    Column("sudo_policies", Text, nullable=False, server_default=text("'[]'")),
    Column("created_by", Int64, ForeignKey("users.id", ondelete="SET NULL")),
    Column("assigned_user", Int64, ForeignKey("users.id", ondelete="CASCADE")),
    Column("starts_at", Int64, nullable=False),
    Column("expires_at", Int64, nullable=False),
    Column("started_at", Int64),
    Column("completed_at", Int64),
    Column("added_at", Int64, nullable=False),
    Column("updated_at", Int64, nullable=False),
    Index("ix_work_sessions_assigned", "assigned_user", "added_at"),
)
_LIVE = text("status IN ('pending', 'approved', 'active')")
Index(
    "ix_work_sessions_live",
    work_sessions.c.status,
    work_sessions.c.expires_at,
    sqlite_where=_LIVE,
    postgresql_where=_LIVE,
)

work_session_events = Table(
    "work_session_events",
    metadata,
    Column("id", Int64, primary_key=True, autoincrement=True),
    Column("session_id", Text, ForeignKey("work_sessions.id", ondelete="CASCADE"), nullable=False),
    Column("type", Text, nullable=False),
    Column("timestamp", Int64, nullable=False),
    Column("actor", Int64, ForeignKey("users.id", ondelete="SET NULL")),
    Column("server_id", Text),
    Column("command_id", Text),
    Column("data", Text, nullable=False, server_default=text("'{}'")),
    Index("ix_work_session_events", "session_id", "id"),
    sqlite_autoincrement=True,
)

tunnels = Table(
    "tunnels",
    metadata,
    Column("id", Text, primary_key=True),
    Column("server_id", Text, ForeignKey("servers.id", ondelete="CASCADE"), nullable=False),
    Column("remote_host", Text, nullable=False),
    Column("remote_port", Int64, nullable=False),
    Column("owner_user", Int64, ForeignKey("users.id", ondelete="CASCADE")),
    Column("owner_token", Text, nullable=False),
    Column("work_session_id", Text),
    Column("created_at", Int64, nullable=False),
    Column("closed_at", Int64),
    Column("close_code", Text),
    Column("close_reason", Text),
    Index("ix_tunnels_owner", "owner_user", "created_at"),
)
_OPEN = text("closed_at IS NULL")
Index(
    "ix_tunnels_session",
    tunnels.c.work_session_id,
    sqlite_where=_OPEN,
    postgresql_where=_OPEN,
)

terminals = Table(
    "terminals",
    metadata,
    Column("id", Text, primary_key=True),
    Column("server_id", Text, ForeignKey("servers.id", ondelete="CASCADE"), nullable=False),
    Column("username", Text, nullable=False),
    Column("groupname", Text),
    Column("shell", Text),
    Column("rows", Int64, nullable=False),
    Column("cols", Int64, nullable=False),
    Column("work_session_id", Text),
    Column("owner_user", Int64, ForeignKey("users.id", ondelete="CASCADE")),
    Column("owner_token", Text, nullable=False),
    Column("status", Text, nullable=False),
    Column("channel_id", Text),
    Column("attaches", Int64, nullable=False, server_default=text("0")),
    Column("created_at", Int64, nullable=False),
    Column("closed_at", Int64),
    Column("close_reason", Text),
    Column("recording_size", Int64),
    Column("recording_sha256", Text),
    Column("recorded_at", Int64),
    CheckConstraint("status IN ('created', 'open', 'closed')", name="ck_terminals_status"),
    Index("ix_terminals_session", "work_session_id", "created_at"),
    Index("ix_terminals_owner", "owner_user", "created_at"),
)
_UNRECORDED = text("status = 'closed' AND recorded_at IS NULL")
Index(
    "ix_terminals_unrecorded",
    terminals.c.server_id,
    terminals.c.closed_at,
    sqlite_where=_UNRECORDED,
    postgresql_where=_UNRECORDED,
)

fanouts = Table(
    "fanouts",
    metadata,
    Column("id", Text, primary_key=True),
    Column("line", Text, nullable=False),
    Column("target", Text, nullable=False),
    Column("requested_by", Int64, ForeignKey("users.id", ondelete="SET NULL")),
    Column("created_at", Int64, nullable=False),
    Column("total", Int64, nullable=False),
    Index("ix_fanouts_requested_by", "requested_by", "created_at"),
)

fanout_commands = Table(
    "fanout_commands",
    metadata,
    Column("fanout_id", Text, ForeignKey("fanouts.id", ondelete="CASCADE"), nullable=False),
    Column("command_id", Text, ForeignKey("commands.id", ondelete="CASCADE"), nullable=False),
    PrimaryKeyConstraint("fanout_id", "command_id"),
    Index("ix_fanout_commands_command", "command_id"),
    sqlite_with_rowid=False,
)

ssh_connections = Table(
    "ssh_connections",
    metadata,
    Column("id", Text, primary_key=True),
    Column("server_id", Text, ForeignKey("servers.id", ondelete="CASCADE"), nullable=False),
    Column("username", Text, nullable=False),
    Column("work_session_id", Text),
    Column("owner_user", Int64, ForeignKey("users.id", ondelete="CASCADE")),
    Column("owner_token", Text, nullable=False),
    Column("created_at", Int64, nullable=False),
    Index("ix_ssh_connections_session", "work_session_id", "created_at"),
)
