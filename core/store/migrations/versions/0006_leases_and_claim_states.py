"""leases and claim states

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 19:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Conversation and worker leases (replacing advisory locks held for a whole answer), and
    the state of each claimed event, so an answer a dead worker left unfinished is not lost."""
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=300), nullable=False),
        sa.Column("holder", sa.String(length=64), nullable=False),
        sa.Column("until", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_index("ix_leases_holder", "leases", ["holder"], unique=False)
    with op.batch_alter_table("processed_events") as batch:
        batch.add_column(
            sa.Column("state", sa.String(length=16), server_default="answered", nullable=False)
        )
        batch.add_column(
            sa.Column("holder", sa.String(length=64), server_default="", nullable=False)
        )
        batch.add_column(sa.Column("request", sa.Text(), nullable=True))
        batch.add_column(sa.Column("delivery", sa.Text(), nullable=True))
        batch.add_column(sa.Column("question_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("answer_id", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("conversation", sa.String(length=300), nullable=True))
        batch.add_column(sa.Column("sent_at", sa.BigInteger(), nullable=True))
        batch.create_index("ix_processed_events_waiting", ["conversation", "state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("processed_events") as batch:
        batch.drop_index("ix_processed_events_waiting")
        columns = ("sent_at", "conversation", "answer_id", "question_id", "delivery", "request")
        for column in (*columns, "holder", "state"):
            batch.drop_column(column)
    op.drop_index("ix_leases_holder", table_name="leases")
    op.drop_table("leases")
