"""The PostgreSQL privileges of the service's own account: data, never schema.

The schema (tables, the audit trail's triggers) belongs to an owner account that runs the
migrations (`cimcoder review migrate`). The service connects as another role that may read
and write rows but not change the schema: not being the owner, it cannot `DROP TRIGGER` or
`ALTER TABLE ... DISABLE TRIGGER`, and on `audit_events` it may only SELECT and INSERT, so the
append-only rule holds even without the trigger. `cimcoder review grant` applies these
privileges; run it again after each migration (a new table has none until then).
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine, inspect, text

from cimcoder.serving.review.store import AuditEvent, Base, ReviewError

# Tables the service may only append to, or only read; every other table of the models:
# rows read, written and deleted (sessions, failed logins and predictions are deleted).
APPEND_ONLY_TABLES = (AuditEvent.__tablename__,)
READ_ONLY_TABLES = ("alembic_version",)
DATA_PRIVILEGES = "SELECT, INSERT, UPDATE, DELETE"


def grant_statements(conn: Connection, role: str) -> list[str]:
    """The statements that give `role` exactly the service's privileges (idempotent)."""
    quote = conn.dialect.identifier_preparer.quote
    schema = conn.execute(text("SELECT current_schema()")).scalar_one()
    grantee = quote(role)
    statements = [f"GRANT USAGE ON SCHEMA {quote(schema)} TO {grantee}"]
    # The models' tables that exist: an older schema (before `migrate`) has fewer.
    tables = sorted(set(Base.metadata.tables) & set(inspect(conn).get_table_names()))
    for table in [*tables, *READ_ONLY_TABLES]:
        if table in APPEND_ONLY_TABLES:
            privileges = "SELECT, INSERT"
        elif table in READ_ONLY_TABLES:
            privileges = "SELECT"
        else:
            privileges = DATA_PRIVILEGES
        # Revoked first, so that running it again after a change leaves exactly this set.
        statements.append(f"REVOKE ALL ON TABLE {quote(table)} FROM {grantee}")
        statements.append(f"GRANT {privileges} ON TABLE {quote(table)} TO {grantee}")
    for table in tables:
        for column in Base.metadata.tables[table].primary_key.columns:
            sequence = conn.execute(
                text("SELECT pg_get_serial_sequence(:table, :column)"),
                {"table": quote(table), "column": column.name},
            ).scalar_one()
            if sequence is not None:  # already schema-qualified and quoted
                statements.append(f"GRANT USAGE ON SEQUENCE {sequence} TO {grantee}")
    return statements


def grant_service_role(engine: Engine, role: str) -> list[str]:
    """Give `role` the service's privileges, as the schema owner; return the statements run.

    Refuses a role that could change the schema anyway (superuser, or owner of the tables).
    """
    if engine.dialect.name != "postgresql":
        raise ReviewError("a service account without DDL rights is a PostgreSQL setting")
    with engine.begin() as conn:
        found = conn.execute(
            text(
                "SELECT r.rolsuper, pg_has_role(r.rolname, t.tableowner, 'MEMBER') "
                "FROM pg_roles r, pg_tables t "
                "WHERE r.rolname = :role AND t.schemaname = current_schema() "
                "AND t.tablename = :table"
            ),
            {"role": role, "table": AuditEvent.__tablename__},
        ).first()
        if found is None:
            raise ReviewError(
                f"no role {role!r}, or no review schema here: create the role "
                "(CREATE ROLE ... LOGIN PASSWORD ...) and run `cimcoder review migrate` first"
            )
        superuser, owns = found
        if superuser or owns:
            raise ReviewError(
                f"role {role!r} is a superuser or owns the review tables: it could drop the "
                "audit trail's triggers. Give the service another role."
            )
        statements = grant_statements(conn, role)
        for statement in statements:
            conn.execute(text(statement))
    return statements
