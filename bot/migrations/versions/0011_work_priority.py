"""work taken by priority: the inbox's triage at intake (inbox.priority) and whose event it is
(inbox.sender, a keyed hash), the outbox's priority; indexes for claiming the next due row

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-20 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="2"))
        sender = sqlmodel.sql.sqltypes.AutoString(length=64)
        batch_op.add_column(sa.Column("sender", sender, nullable=False, server_default=""))
        batch_op.create_index("ix_inbox_due", ["status", "priority", "id"], unique=False)
        batch_op.create_index("ix_inbox_sender", ["sender", "id"], unique=False)
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.Integer(), nullable=False, server_default="2"))
        batch_op.create_index(
            "ix_outbox_due", ["channel", "status", "priority", "next_attempt_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_due")
        batch_op.drop_column("priority")
    with op.batch_alter_table("inbox", schema=None) as batch_op:
        batch_op.drop_index("ix_inbox_sender")
        batch_op.drop_index("ix_inbox_due")
        batch_op.drop_column("sender")
        batch_op.drop_column("priority")
