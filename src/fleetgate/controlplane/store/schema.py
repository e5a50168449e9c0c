"""The SQLite schema's history before Alembic (``PRAGMA user_version`` 1 to 9).

Kept as it was, only to bring an existing SQLite database to version 9, which is
Alembic's baseline revision ``0001`` (:mod:`fleetgate.controlplane.store.migrate`). The
schema itself is :mod:`fleetgate.controlplane.store.tables`; a change goes there and into
a new revision in ``store/migrations/versions``, never here.
"""

from __future__ import annotations

import sqlite3


__all__ = ["SCHEMA_VERSION", "migrate"]

SCHEMA_VERSION = 9

_V1 = """
CREATE TABLE users (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT NOT NULL DEFAULT '',
    password_hash TEXT,
    is_superuser  INTEGER NOT NULL DEFAULT 0,
    created_at    INTEGER NOT NULL
);

CREATE TABLE tokens (
    id           TEXT PRIMARY KEY,
    key_hash     TEXT NOT NULL UNIQUE,
    kind         TEXT NOT NULL CHECK (kind IN ('api', 'service', 'login')),
    name         TEXT NOT NULL,
    user_id      INTEGER REFERENCES users(id) ON DELETE CASCADE,
    service_name TEXT,
    command_acl  TEXT,
    created_at   INTEGER NOT NULL,
    expires_at   INTEGER
);
CREATE INDEX ix_tokens_user ON tokens(user_id);

CREATE TABLE servers (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL UNIQUE,
    key_hash      TEXT NOT NULL,
    hostname      TEXT NOT NULL DEFAULT '',
    platform      TEXT NOT NULL DEFAULT '',
    agent_version TEXT,
    is_connected  INTEGER NOT NULL DEFAULT 0,
    registered_at INTEGER NOT NULL,
    connected_at  INTEGER,
    last_seen_at  INTEGER
);

CREATE TABLE commands (
    id           TEXT PRIMARY KEY,
    server_id    TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    shell        TEXT NOT NULL,
    line         TEXT NOT NULL,
    username     TEXT NOT NULL,
    groupname    TEXT NOT NULL DEFAULT '',
    env          TEXT NOT NULL DEFAULT '{}',
    timeout      REAL,
    requested_by INTEGER REFERENCES users(id) ON DELETE SET NULL,
    added_at     INTEGER NOT NULL,
    scheduled_at INTEGER NOT NULL,
    sent_at      INTEGER,
    delivered_at INTEGER,
    acked_at     INTEGER,
    handled_at   INTEGER,
    cancelled_at INTEGER,
    elapsed_time REAL,
    exit_code    INTEGER,
    success      INTEGER,
    result       TEXT,
    truncated    INTEGER NOT NULL DEFAULT 0,
    output_bytes INTEGER,
    error_phase  TEXT,
    message      TEXT
);
CREATE INDEX ix_commands_scheduled ON commands(scheduled_at, added_at);
CREATE INDEX ix_commands_added ON commands(added_at);
CREATE INDEX ix_commands_server ON commands(server_id, scheduled_at);
CREATE INDEX ix_commands_requested_by ON commands(requested_by, scheduled_at);
CREATE INDEX ix_commands_unsent ON commands(scheduled_at)
    WHERE sent_at IS NULL AND cancelled_at IS NULL;
CREATE INDEX ix_commands_undelivered ON commands(server_id, scheduled_at)
    WHERE delivered_at IS NULL AND cancelled_at IS NULL AND handled_at IS NULL;

CREATE TABLE command_chunks (
    command_id TEXT NOT NULL REFERENCES commands(id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    content    TEXT NOT NULL,
    PRIMARY KEY (command_id, seq)
) WITHOUT ROWID;
"""

_V2 = """
CREATE TABLE work_sessions (
    id             TEXT PRIMARY KEY,
    description    TEXT NOT NULL,
    status         TEXT NOT NULL,
    requester_type TEXT NOT NULL DEFAULT 'user',
    scopes         TEXT NOT NULL,
    servers        TEXT NOT NULL,
    sudo_policies  TEXT NOT NULL DEFAULT '[]',
    created_by     INTEGER REFERENCES users(id) ON DELETE SET NULL,
    assigned_user  INTEGER REFERENCES users(id) ON DELETE CASCADE,
    starts_at      INTEGER NOT NULL,
    expires_at     INTEGER NOT NULL,
    started_at     INTEGER,
    completed_at   INTEGER,
    added_at       INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);
CREATE INDEX ix_work_sessions_assigned ON work_sessions(assigned_user, added_at);
CREATE INDEX ix_work_sessions_live ON work_sessions(status, expires_at)
    WHERE status IN ('pending', 'approved', 'active');

CREATE TABLE work_session_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES work_sessions(id) ON DELETE CASCADE,
    type       TEXT NOT NULL,
    timestamp  INTEGER NOT NULL,
    actor      INTEGER REFERENCES users(id) ON DELETE SET NULL,
    server_id  TEXT,
    command_id TEXT,
    data       TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX ix_work_session_events ON work_session_events(session_id, id);

ALTER TABLE commands ADD COLUMN work_session_id TEXT;
ALTER TABLE commands ADD COLUMN grant_token TEXT
"""

_V3 = """
ALTER TABLE commands ADD COLUMN sudo INTEGER NOT NULL DEFAULT 0
"""

_V4 = """
CREATE TABLE tunnels (
    id              TEXT PRIMARY KEY,
    server_id       TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    remote_host     TEXT NOT NULL,
    remote_port     INTEGER NOT NULL,
    owner_user      INTEGER REFERENCES users(id) ON DELETE CASCADE,
    owner_token     TEXT NOT NULL,
    work_session_id TEXT,
    created_at      INTEGER NOT NULL,
    closed_at       INTEGER,
    close_code      TEXT,
    close_reason    TEXT
);
CREATE INDEX ix_tunnels_owner ON tunnels(owner_user, created_at);
CREATE INDEX ix_tunnels_session ON tunnels(work_session_id) WHERE closed_at IS NULL
"""

_V5 = """
CREATE TABLE terminals (
    id               TEXT PRIMARY KEY,
    server_id        TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    username         TEXT NOT NULL,
    groupname        TEXT,
    shell            TEXT,
    rows             INTEGER NOT NULL,
    cols             INTEGER NOT NULL,
    work_session_id  TEXT,
    owner_user       INTEGER REFERENCES users(id) ON DELETE CASCADE,
    owner_token      TEXT NOT NULL,
    status           TEXT NOT NULL CHECK (status IN ('created', 'open', 'closed')),
    channel_id       TEXT,
    attaches         INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    closed_at        INTEGER,
    close_reason     TEXT,
    recording_size   INTEGER,
    recording_sha256 TEXT,
    recorded_at      INTEGER
);
CREATE INDEX ix_terminals_session ON terminals(work_session_id, created_at);
CREATE INDEX ix_terminals_owner ON terminals(owner_user, created_at)
"""

_V6 = """
ALTER TABLE users ADD COLUMN server_username TEXT;
ALTER TABLE tokens ADD COLUMN gated INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN acl TEXT;
UPDATE tokens SET gated = 1 WHERE kind = 'login' OR (kind = 'api' AND user_id IN
    (SELECT id FROM users WHERE is_superuser = 0));
UPDATE tokens SET acl = json_object('command', json(command_acl)) WHERE command_acl IS NOT NULL
"""
"""Issue 14: the authorization model. A user's mapped ``server_username``; a token's
``gated`` flag (API tokens of non-superusers made before this version become gated: they
were the approval bypass) and its per-operation ``acl`` (an old ``command_acl`` becomes
``{"command": [...]}``)."""

_V7 = """
ALTER TABLE servers ADD COLUMN agent_labels TEXT NOT NULL DEFAULT '{}';
ALTER TABLE servers ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';

CREATE TABLE fanouts (
    id           TEXT PRIMARY KEY,
    line         TEXT NOT NULL,
    target       TEXT NOT NULL,
    requested_by INTEGER REFERENCES users(id) ON DELETE SET NULL,
    created_at   INTEGER NOT NULL,
    total        INTEGER NOT NULL
);
CREATE INDEX ix_fanouts_requested_by ON fanouts(requested_by, created_at);

CREATE TABLE fanout_commands (
    fanout_id  TEXT NOT NULL REFERENCES fanouts(id) ON DELETE CASCADE,
    command_id TEXT NOT NULL REFERENCES commands(id) ON DELETE CASCADE,
    PRIMARY KEY (fanout_id, command_id)
) WITHOUT ROWID;
CREATE INDEX ix_fanout_commands_command ON fanout_commands(command_id)
"""
"""Issue 18: server labels (the agent's and a superuser's) and fan-outs."""

_V8 = """
ALTER TABLE users ADD COLUMN is_active INTEGER NOT NULL DEFAULT 1;
ALTER TABLE commands ADD COLUMN requested_token TEXT;
ALTER TABLE commands ADD COLUMN error_code TEXT;
CREATE INDEX ix_terminals_unrecorded ON terminals(server_id, closed_at)
    WHERE status = 'closed' AND recorded_at IS NULL
"""
"""Issue 14, part C: disabled users (``is_active``), who asked for a command
(``requested_token``) and why the agent refused it (``error_code``); the index of the
closed terminals whose shell may still run on a returning agent."""

_V9 = """
ALTER TABLE servers ADD COLUMN ssh_host_key TEXT;
CREATE TABLE ssh_connections (
    id               TEXT PRIMARY KEY,
    server_id        TEXT NOT NULL REFERENCES servers(id) ON DELETE CASCADE,
    username         TEXT NOT NULL,
    work_session_id  TEXT,
    owner_user       INTEGER REFERENCES users(id) ON DELETE CASCADE,
    owner_token      TEXT NOT NULL,
    created_at       INTEGER NOT NULL
);
CREATE INDEX ix_ssh_connections_session ON ssh_connections(work_session_id, created_at)
"""
"""Issue 16: the agents' SSH host keys and the SSH connections opened through channels."""

_MIGRATIONS = {1: _V1, 2: _V2, 3: _V3, 4: _V4, 5: _V5, 6: _V6, 7: _V7, 8: _V8, 9: _V9}


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a pre-Alembic database to :data:`SCHEMA_VERSION`, one transaction per step
    (``conn`` in autocommit mode: the driver's ``isolation_level=None``)."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"database schema version {version} is newer than this control plane ({SCHEMA_VERSION})"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _MIGRATIONS[target].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
