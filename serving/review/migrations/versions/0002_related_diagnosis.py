"""DR (diagnostic relié) next to the DP, on stays and on each review.

Stays queued before this revision, auto-coded and not yet reviewed, get the DR the model
proposed (kept in `predictions.role`), as a new import records it. Stays already reviewed keep
their history as saved: the DR was then coded as a DAS, and only the coder knew it was one.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("stays", sa.Column("dr_code", sa.String(16), nullable=True))
    op.add_column("reviews", sa.Column("dr_code", sa.String(16), nullable=True))

    stays = sa.table(
        "stays",
        sa.column("id", sa.String),
        sa.column("dp_code", sa.String),
        sa.column("dr_code", sa.String),
        sa.column("auto_coded", sa.Boolean),
        sa.column("version", sa.Integer),
    )
    predictions = sa.table(
        "predictions",
        sa.column("stay_id", sa.String),
        sa.column("rank", sa.Integer),
        sa.column("code", sa.String),
        sa.column("decision", sa.String),
        sa.column("role", sa.String),
    )
    proposed_dr = (
        sa.select(predictions.c.code)
        .where(
            predictions.c.stay_id == stays.c.id,
            predictions.c.role == "DR",
            predictions.c.decision == "auto",
        )
        .order_by(predictions.c.rank)
        .limit(1)
        .scalar_subquery()
    )
    op.execute(
        stays.update()
        .where(
            stays.c.auto_coded.is_(sa.true()),
            stays.c.version == 1,
            stays.c.dp_code.is_not(None),
        )
        .values(dr_code=proposed_dr)
    )


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite >= 3.35): a batch copy of `stays` would drop
    # the table that documents, predictions and reviews reference.
    op.drop_column("reviews", "dr_code")
    op.drop_column("stays", "dr_code")
