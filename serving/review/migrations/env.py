"""Alembic environment: run against the connection handed over by `store.upgrade`."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from cimcoder.serving.review.store import Base

target_metadata = Base.metadata
config = context.config


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # type: ignore[attr-defined]
    )
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:  # `alembic -x url=...` from a shell
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("give the database with `alembic -x url=...`")
    engine = create_engine(url)
    with engine.begin() as conn:
        _run(conn)
