"""whether a person is there: connected, left, gone through the quick exit, blocked (contact.presence);
what the dialogue said once: the acknowledgement, the age question (conversation.acked, age_asked);
a supervisor's advice beside the counsellors' notes (note.kind)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import bot.models

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("contact", schema=None) as batch_op:
        text = sqlmodel.sql.sqltypes.AutoString(length=16)
        batch_op.add_column(sa.Column("presence", text, nullable=False, server_default=""))
        batch_op.add_column(sa.Column("presence_at", bot.models.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table("conversation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("acked", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("age_asked", sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table("note", schema=None) as batch_op:
        kind = sqlmodel.sql.sqltypes.AutoString(length=12)
        batch_op.add_column(sa.Column("kind", kind, nullable=False, server_default="note"))


def downgrade() -> None:
    with op.batch_alter_table("note", schema=None) as batch_op:
        batch_op.drop_column("kind")
    with op.batch_alter_table("conversation", schema=None) as batch_op:
        batch_op.drop_column("age_asked")
        batch_op.drop_column("acked")
    with op.batch_alter_table("contact", schema=None) as batch_op:
        batch_op.drop_column("presence_at")
        batch_op.drop_column("presence")
