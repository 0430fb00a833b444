"""usage: estimated token counts, calls of unknown price; longer model ids

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 16:30:00

The ledger says which entries count tokens Parley estimated (the server reported no usage) and
which have no known price (``cost_usd`` NULL instead of a made-up $0). Model ids grow to 300
characters: a llama.cpp server names its model by the file path.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


MODEL_COLUMNS = (("channel_settings", True), ("messages", True), ("usage_ledger", False))


def upgrade() -> None:
    for table, nullable in MODEL_COLUMNS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(
                "model",
                existing_type=sa.String(100),
                type_=sa.String(300),
                existing_nullable=nullable,
            )
    with op.batch_alter_table("usage_ledger", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("estimated", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.alter_column("cost_usd", existing_type=sa.Float(), nullable=True)


def downgrade() -> None:
    op.execute("UPDATE usage_ledger SET cost_usd = 0 WHERE cost_usd IS NULL")
    with op.batch_alter_table("usage_ledger", schema=None) as batch_op:
        batch_op.alter_column("cost_usd", existing_type=sa.Float(), nullable=False)
        batch_op.drop_column("estimated")
    for table, nullable in MODEL_COLUMNS:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column(
                "model",
                existing_type=sa.String(300),
                type_=sa.String(100),
                existing_nullable=nullable,
            )
