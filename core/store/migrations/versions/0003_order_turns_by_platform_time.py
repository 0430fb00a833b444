"""order turns by platform time

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Turns stored before this revision are placed at the time they were stored.
BACKFILL = {
    "postgresql": "CAST(EXTRACT(EPOCH FROM created_at) * 1000000 AS BIGINT)",
    "sqlite": "CAST((julianday(created_at) - 2440587.5) * 86400000000 AS INTEGER)",
}


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sent_at", sa.BigInteger(), nullable=True))
    dialect = op.get_bind().dialect.name
    op.execute(f"UPDATE messages SET sent_at = {BACKFILL[dialect]}")  # noqa: S608
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.alter_column("sent_at", existing_type=sa.BigInteger(), nullable=False)
        batch_op.create_index(
            "ix_messages_conversation_order", ["conversation_id", "sent_at", "id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_conversation_order")
        batch_op.drop_column("sent_at")
