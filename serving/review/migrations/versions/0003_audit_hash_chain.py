"""Hash chain over the audit trail: each event seals its content and the previous event's hash.

Events recorded before this revision get their chain computed here, in order of id (the
append-only triggers are lifted for that one UPDATE pass, inside the migration's transaction,
and put back).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from cimcoder.serving.review.audit import CHAINED_FIELDS, GENESIS_HASH, chain_hash

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_SQLITE_UPDATE_GUARD = """
CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END
"""

_events = sa.table(
    "audit_events",
    sa.column("id", sa.Integer),
    sa.column("at", sa.DateTime),
    sa.column("actor", sa.String),
    sa.column("event", sa.String),
    sa.column("stay_id", sa.String),
    sa.column("review_id", sa.String),
    sa.column("before", sa.JSON),
    sa.column("after", sa.JSON),
    sa.column("model_version", sa.String),
    sa.column("thresholds_version", sa.String),
    sa.column("terminology_edition", sa.String),
    sa.column("input_hash", sa.String),
    sa.column("prev_hash", sa.String),
    sa.column("hash", sa.String),
)


def _chain_existing_events() -> None:
    bind = op.get_bind()
    prev = GENESIS_HASH
    rows = bind.execute(sa.select(_events).order_by(_events.c.id)).mappings().all()
    for row in rows:
        own = chain_hash({name: row[name] for name in CHAINED_FIELDS}, prev)
        bind.execute(
            _events.update().where(_events.c.id == row["id"]).values(prev_hash=prev, hash=own)
        )
        prev = own


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("prev_hash", sa.String(64), nullable=True))
    op.add_column("audit_events", sa.Column("hash", sa.String(64), nullable=True))
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
        _chain_existing_events()
        op.execute(_SQLITE_UPDATE_GUARD)
    elif dialect == "postgresql":
        op.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        _chain_existing_events()
        op.execute("ALTER TABLE audit_events ENABLE TRIGGER audit_events_append_only")
    else:
        _chain_existing_events()


def downgrade() -> None:
    op.drop_column("audit_events", "hash")
    op.drop_column("audit_events", "prev_hash")
