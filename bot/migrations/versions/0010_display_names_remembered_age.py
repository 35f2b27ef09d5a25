"""the name a person reads for each counsellor account (counsellor.display_name); the age band a
person gave, remembered with their contact so that it is asked once (contact.age_band, age_asked)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("counsellor", schema=None) as batch_op:
        name = sqlmodel.sql.sqltypes.AutoString(length=32)
        batch_op.add_column(sa.Column("display_name", name, nullable=False, server_default=""))
    with op.batch_alter_table("contact", schema=None) as batch_op:
        band = sqlmodel.sql.sqltypes.AutoString(length=16)
        batch_op.add_column(sa.Column("age_band", band, nullable=False, server_default=""))
        batch_op.add_column(sa.Column("age_asked", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("contact", schema=None) as batch_op:
        batch_op.drop_column("age_asked")
        batch_op.drop_column("age_band")
    with op.batch_alter_table("counsellor", schema=None) as batch_op:
        batch_op.drop_column("display_name")
