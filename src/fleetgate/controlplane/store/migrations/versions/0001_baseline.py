"""baseline: the SQLite schema version 9

Revision ID: 0001
Revises:
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade the schema."""

    op.create_table(
        "servers",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("hostname", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("platform", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("agent_version", sa.Text(), nullable=True),
        sa.Column(
            "is_connected",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default=sa.text("0"),
            nullable=False,
        ),
        sa.Column(
            "registered_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "connected_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "last_seen_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("agent_labels", sa.Text(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("labels", sa.Text(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("ssh_host_key", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "users",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=True),
        sa.Column(
            "is_superuser",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default=sa.text("0"),
            nullable=False,
        ),
        sa.Column(
            "created_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("server_username", sa.Text(), nullable=True),
        sa.Column(
            "is_active",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default=sa.text("1"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username"),
        sqlite_autoincrement=True,
    )
    op.create_table(
        "commands",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("server_id", sa.Text(), nullable=False),
        sa.Column("shell", sa.Text(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("groupname", sa.Text(), server_default=sa.text("''"), nullable=False),
        sa.Column("env", sa.Text(), server_default=sa.text("'{}'"), nullable=False),
        sa.Column("timeout", sa.Float(), nullable=True),
        sa.Column(
            "requested_by", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("added_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "scheduled_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("sent_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column(
            "delivered_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("acked_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column(
            "handled_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "cancelled_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("elapsed_time", sa.Float(), nullable=True),
        sa.Column("exit_code", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("success", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("result", sa.Text(), nullable=True),
        sa.Column(
            "truncated",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default=sa.text("0"),
            nullable=False,
        ),
        sa.Column(
            "output_bytes", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("error_phase", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("work_session_id", sa.Text(), nullable=True),
        sa.Column("grant_token", sa.Text(), nullable=True),
        sa.Column(
            "sudo",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default=sa.text("0"),
            nullable=False,
        ),
        sa.Column("requested_token", sa.Text(), nullable=True),
        sa.Column("error_code", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["requested_by"], ["users.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["server_id"], ["servers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.create_index("ix_commands_added", ["added_at"], unique=False)
        batch_op.create_index(
            "ix_commands_requested_by", ["requested_by", "scheduled_at"], unique=False
        )
        batch_op.create_index("ix_commands_scheduled", ["scheduled_at", "added_at"], unique=False)
        batch_op.create_index("ix_commands_server", ["server_id", "scheduled_at"], unique=False)
        batch_op.create_index(
            "ix_commands_undelivered",
            ["server_id", "scheduled_at"],
            unique=False,
            sqlite_where=sa.text(
                "delivered_at IS NULL AND cancelled_at IS NULL AND handled_at IS NULL"
            ),
            postgresql_where=sa.text(
                "delivered_at IS NULL AND cancelled_at IS NULL AND handled_at IS NULL"
            ),
        )
        batch_op.create_index(
            "ix_commands_unsent",
            ["scheduled_at"],
            unique=False,
            sqlite_where=sa.text("sent_at IS NULL AND cancelled_at IS NULL"),
            postgresql_where=sa.text("sent_at IS NULL AND cancelled_at IS NULL"),
        )

    op.create_table(
        "fanouts",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column(
            "requested_by", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "created_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("total", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.ForeignKeyConstraint(["requested_by"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("fanouts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_fanouts_requested_by", ["requested_by", "created_at"], unique=False
        )

    op.create_table(
        "ssh_connections",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("server_id", sa.Text(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("work_session_id", sa.Text(), nullable=True),
        sa.Column(
            "owner_user", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("owner_token", sa.Text(), nullable=False),
        sa.Column(
            "created_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.ForeignKeyConstraint(["owner_user"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["server_id"], ["servers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("ssh_connections", schema=None) as batch_op:
        batch_op.create_index(
            "ix_ssh_connections_session", ["work_session_id", "created_at"], unique=False
        )

    op.create_table(
        "terminals",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("server_id", sa.Text(), nullable=False),
        sa.Column("username", sa.Text(), nullable=False),
        sa.Column("groupname", sa.Text(), nullable=True),
        sa.Column("shell", sa.Text(), nullable=True),
        sa.Column("rows", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("cols", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("work_session_id", sa.Text(), nullable=True),
        sa.Column(
            "owner_user", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("owner_token", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("channel_id", sa.Text(), nullable=True),
        sa.Column(
            "attaches",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default=sa.text("0"),
            nullable=False,
        ),
        sa.Column(
            "created_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("closed_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("close_reason", sa.Text(), nullable=True),
        sa.Column(
            "recording_size", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("recording_sha256", sa.Text(), nullable=True),
        sa.Column(
            "recorded_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.CheckConstraint("status IN ('created', 'open', 'closed')", name="ck_terminals_status"),
        sa.ForeignKeyConstraint(["owner_user"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["server_id"], ["servers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("terminals", schema=None) as batch_op:
        batch_op.create_index("ix_terminals_owner", ["owner_user", "created_at"], unique=False)
        batch_op.create_index(
            "ix_terminals_session", ["work_session_id", "created_at"], unique=False
        )
        batch_op.create_index(
            "ix_terminals_unrecorded",
            ["server_id", "closed_at"],
            unique=False,
            sqlite_where=sa.text("status = 'closed' AND recorded_at IS NULL"),
            postgresql_where=sa.text("status = 'closed' AND recorded_at IS NULL"),
        )

    op.create_table(
        "tokens",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("user_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("service_name", sa.Text(), nullable=True),
        sa.Column("command_acl", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "expires_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "gated",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            server_default=sa.text("0"),
            nullable=False,
        ),
        sa.Column("acl", sa.Text(), nullable=True),
        sa.CheckConstraint("kind IN ('api', 'service', 'login')", name="ck_tokens_kind"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key_hash"),
    )
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.create_index("ix_tokens_user", ["user_id"], unique=False)

    op.create_table(
        "tunnels",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("server_id", sa.Text(), nullable=False),
        sa.Column("remote_host", sa.Text(), nullable=False),
        sa.Column(
            "remote_port", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "owner_user", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("owner_token", sa.Text(), nullable=False),
        sa.Column("work_session_id", sa.Text(), nullable=True),
        sa.Column(
            "created_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("closed_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("close_code", sa.Text(), nullable=True),
        sa.Column("close_reason", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(["owner_user"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["server_id"], ["servers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("tunnels", schema=None) as batch_op:
        batch_op.create_index("ix_tunnels_owner", ["owner_user", "created_at"], unique=False)
        batch_op.create_index(
            "ix_tunnels_session",
            ["work_session_id"],
            unique=False,
            sqlite_where=sa.text("closed_at IS NULL"),
            postgresql_where=sa.text("closed_at IS NULL"),
        )

    op.create_table(
        "work_sessions",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("requester_type", sa.Text(), server_default=sa.text("'user'"), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("servers", sa.Text(), nullable=False),
        sa.Column("sudo_policies", sa.Text(), server_default=sa.text("'[]'"), nullable=False),
        sa.Column(
            "created_by", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "assigned_user", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "starts_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "expires_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column(
            "started_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column(
            "completed_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True
        ),
        sa.Column("added_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column(
            "updated_at", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.ForeignKeyConstraint(["assigned_user"], ["users.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["created_by"], ["users.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("work_sessions", schema=None) as batch_op:
        batch_op.create_index(
            "ix_work_sessions_assigned", ["assigned_user", "added_at"], unique=False
        )
        batch_op.create_index(
            "ix_work_sessions_live",
            ["status", "expires_at"],
            unique=False,
            sqlite_where=sa.text("status IN ('pending', 'approved', 'active')"),
            postgresql_where=sa.text("status IN ('pending', 'approved', 'active')"),
        )

    op.create_table(
        "command_chunks",
        sa.Column("command_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["command_id"], ["commands.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("command_id", "seq"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "fanout_commands",
        sa.Column("fanout_id", sa.Text(), nullable=False),
        sa.Column("command_id", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["command_id"], ["commands.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["fanout_id"], ["fanouts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("fanout_id", "command_id"),
        sqlite_with_rowid=False,
    )
    with op.batch_alter_table("fanout_commands", schema=None) as batch_op:
        batch_op.create_index("ix_fanout_commands_command", ["command_id"], unique=False)

    op.create_table(
        "work_session_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("session_id", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column(
            "timestamp", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False
        ),
        sa.Column("actor", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("server_id", sa.Text(), nullable=True),
        sa.Column("command_id", sa.Text(), nullable=True),
        sa.Column("data", sa.Text(), server_default=sa.text("'{}'"), nullable=False),
        sa.ForeignKeyConstraint(["actor"], ["users.id"], ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["session_id"], ["work_sessions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sqlite_autoincrement=True,
    )
    with op.batch_alter_table("work_session_events", schema=None) as batch_op:
        batch_op.create_index("ix_work_session_events", ["session_id", "id"], unique=False)


def downgrade() -> None:
    """Downgrade the schema."""

    with op.batch_alter_table("work_session_events", schema=None) as batch_op:
        batch_op.drop_index("ix_work_session_events")

    op.drop_table("work_session_events")
    with op.batch_alter_table("fanout_commands", schema=None) as batch_op:
        batch_op.drop_index("ix_fanout_commands_command")

    op.drop_table("fanout_commands")
    op.drop_table("command_chunks")
    with op.batch_alter_table("work_sessions", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_work_sessions_live",
            sqlite_where=sa.text("status IN ('pending', 'approved', 'active')"),
            postgresql_where=sa.text("status IN ('pending', 'approved', 'active')"),
        )
        batch_op.drop_index("ix_work_sessions_assigned")

    op.drop_table("work_sessions")
    with op.batch_alter_table("tunnels", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_tunnels_session",
            sqlite_where=sa.text("closed_at IS NULL"),
            postgresql_where=sa.text("closed_at IS NULL"),
        )
        batch_op.drop_index("ix_tunnels_owner")

    op.drop_table("tunnels")
    with op.batch_alter_table("tokens", schema=None) as batch_op:
        batch_op.drop_index("ix_tokens_user")

    op.drop_table("tokens")
    with op.batch_alter_table("terminals", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_terminals_unrecorded",
            sqlite_where=sa.text("status = 'closed' AND recorded_at IS NULL"),
            postgresql_where=sa.text("status = 'closed' AND recorded_at IS NULL"),
        )
        batch_op.drop_index("ix_terminals_session")
        batch_op.drop_index("ix_terminals_owner")

    op.drop_table("terminals")
    with op.batch_alter_table("ssh_connections", schema=None) as batch_op:
        batch_op.drop_index("ix_ssh_connections_session")

    op.drop_table("ssh_connections")
    with op.batch_alter_table("fanouts", schema=None) as batch_op:
        batch_op.drop_index("ix_fanouts_requested_by")

    op.drop_table("fanouts")
    with op.batch_alter_table("commands", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_commands_unsent",
            sqlite_where=sa.text("sent_at IS NULL AND cancelled_at IS NULL"),
            postgresql_where=sa.text("sent_at IS NULL AND cancelled_at IS NULL"),
        )
        batch_op.drop_index(
            "ix_commands_undelivered",
            sqlite_where=sa.text(
                "delivered_at IS NULL AND cancelled_at IS NULL AND handled_at IS NULL"
            ),
            postgresql_where=sa.text(
                "delivered_at IS NULL AND cancelled_at IS NULL AND handled_at IS NULL"
            ),
        )
        batch_op.drop_index("ix_commands_server")
        batch_op.drop_index("ix_commands_scheduled")
        batch_op.drop_index("ix_commands_requested_by")
        batch_op.drop_index("ix_commands_added")

    op.drop_table("commands")
    op.drop_table("users")
    op.drop_table("servers")
