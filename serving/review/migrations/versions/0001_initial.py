"""Initial review store: coders, stays, documents, predictions, reviews, audit trail.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_AUDIT_GUARD_SQLITE = """
CREATE TRIGGER audit_events_no_{op} BEFORE {OP} ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END
"""

_AUDIT_GUARD_PG_FUNCTION = """
CREATE OR REPLACE FUNCTION audit_events_append_only() RETURNS trigger AS $$
BEGIN RAISE EXCEPTION 'audit_events is append-only'; END;
$$ LANGUAGE plpgsql
"""


def upgrade() -> None:
    op.create_table(
        "coders",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(), nullable=True),
    )
    op.create_table(
        "stays",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("patient_id", sa.String(128), nullable=True),
        sa.Column("unit", sa.String(128), nullable=True),
        sa.Column("stay_date", sa.Date(), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("auto_coded", sa.Boolean(), nullable=False),
        sa.Column("qc_sampled", sa.Boolean(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("dp_code", sa.String(16), nullable=True),
        sa.Column("terminology", sa.String(8), nullable=False),
        sa.Column("model_version", sa.String(256), nullable=True),
        sa.Column("thresholds_version", sa.String(256), nullable=True),
        sa.Column("terminology_edition", sa.String(256), nullable=True),
        sa.Column("input_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("validated_at", sa.DateTime(), nullable=True),
        sa.Column("validated_by", sa.String(128), sa.ForeignKey("coders.name"), nullable=True),
    )
    op.create_index("ix_stays_unit", "stays", ["unit"])
    op.create_index("ix_stays_stay_date", "stays", ["stay_date"])
    op.create_index("ix_stays_status", "stays", ["status"])
    op.create_index("ix_stays_qc_sampled", "stays", ["qc_sampled"])
    op.create_index("ix_stays_created_at", "stays", ["created_at"])
    op.create_table(
        "documents",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("stay_id", sa.String(128), sa.ForeignKey("stays.id"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("doc_type", sa.String(32), nullable=False),
        sa.Column("doc_date", sa.Date(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
    )
    op.create_index("ix_documents_stay_id", "documents", ["stay_id"])
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("stay_id", sa.String(128), sa.ForeignKey("stays.id"), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(16), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("decision", sa.String(8), nullable=False),
        sa.Column("role", sa.String(16), nullable=True),
        sa.Column("cim11", sa.JSON(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("flags", sa.JSON(), nullable=False),
        sa.Column("model_version", sa.String(256), nullable=True),
        sa.Column("thresholds_version", sa.String(256), nullable=True),
        sa.Column("terminology_edition", sa.String(256), nullable=True),
        sa.Column("input_hash", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_predictions_stay_id", "predictions", ["stay_id"])
    op.create_index("ix_predictions_code", "predictions", ["code"])
    op.create_table(
        "reviews",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("stay_id", sa.String(128), sa.ForeignKey("stays.id"), nullable=False),
        sa.Column("coder", sa.String(128), sa.ForeignKey("coders.name"), nullable=False),
        sa.Column("base_version", sa.Integer(), nullable=False),
        sa.Column("new_version", sa.Integer(), nullable=False),
        sa.Column("status_after", sa.String(16), nullable=False),
        sa.Column("dp_code", sa.String(16), nullable=True),
        sa.Column("qc", sa.Boolean(), nullable=False),
        sa.Column("n_codes", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_reviews_stay_id", "reviews", ["stay_id"])
    op.create_index("ix_reviews_coder", "reviews", ["coder"])
    op.create_index("ix_reviews_created_at", "reviews", ["created_at"])
    op.create_index("ix_reviews_stay_version", "reviews", ["stay_id", "new_version"], unique=True)
    op.create_table(
        "review_codes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("review_id", sa.String(64), sa.ForeignKey("reviews.id"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(8), nullable=False),
        sa.Column("code", sa.String(16), nullable=False),
        sa.Column("final_code", sa.String(16), nullable=True),
        sa.Column("role", sa.String(8), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("suggested_decision", sa.String(8), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
    )
    op.create_index("ix_review_codes_review_id", "review_codes", ["review_id"])
    op.create_index("ix_review_codes_code", "review_codes", ["code"])
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("stay_id", sa.String(128), nullable=True),
        sa.Column("review_id", sa.String(64), nullable=True),
        sa.Column("before", sa.JSON(), nullable=True),
        sa.Column("after", sa.JSON(), nullable=True),
        sa.Column("model_version", sa.String(256), nullable=True),
        sa.Column("thresholds_version", sa.String(256), nullable=True),
        sa.Column("terminology_edition", sa.String(256), nullable=True),
        sa.Column("input_hash", sa.String(64), nullable=True),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    op.create_index("ix_audit_events_event", "audit_events", ["event"])
    op.create_index("ix_audit_events_stay_id", "audit_events", ["stay_id"])
    op.create_table(
        "review_settings",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("updated_by", sa.String(128), nullable=True),
    )

    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for name in ("update", "delete"):
            op.execute(_AUDIT_GUARD_SQLITE.format(op=name, OP=name.upper()))
    elif dialect == "postgresql":
        op.execute(_AUDIT_GUARD_PG_FUNCTION)
        op.execute(
            "CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION audit_events_append_only()"
        )
        op.execute(
            "CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_events_no_truncate ON audit_events")
        op.execute("DROP TRIGGER IF EXISTS audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION IF EXISTS audit_events_append_only()")
    for table in (
        "review_settings",
        "audit_events",
        "review_codes",
        "reviews",
        "predictions",
        "documents",
        "stays",
        "coders",
    ):
        op.drop_table(table)
