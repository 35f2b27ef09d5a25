"""the direct question and its answer, the story told before consent, the earlier conversation of a
person who came back, and the risk a contact's last serious conversation reached (encrypted)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def _text(name: str, length: int | None = None) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sqlmodel.sql.sqltypes.AutoString(length=length), nullable=False, server_default="")


def upgrade() -> None:
    with op.batch_alter_table("contact", schema=None) as batch_op:
        batch_op.add_column(_text("risk_enc"))
    with op.batch_alter_table("conversation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("told", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(_text("danger_asked", 10))
        batch_op.add_column(_text("danger_answer", 10))
        batch_op.add_column(_text("previous_id", 32))


def downgrade() -> None:
    with op.batch_alter_table("conversation", schema=None) as batch_op:
        batch_op.drop_column("previous_id")
        batch_op.drop_column("danger_answer")
        batch_op.drop_column("danger_asked")
        batch_op.drop_column("told")
    with op.batch_alter_table("contact", schema=None) as batch_op:
        batch_op.drop_column("risk_enc")
