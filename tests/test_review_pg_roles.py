"""PostgreSQL: the service runs as a role without DDL rights; an owner account migrates.

On a real server: an owner role migrates (`cimcoder review migrate`) and grants
(`cimcoder review grant`); the service's role then opens the store (no DDL at start on a
current schema), saves a review, and PostgreSQL refuses it `DROP TRIGGER`, `ALTER TABLE` and
any UPDATE or DELETE of the audit trail. On an outdated schema the service refuses to start and
says to migrate with the owner account.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from test_review_store import enqueue_cases, full_review

from cimcoder.serving.review import audit, cli, workflow
from cimcoder.serving.review.store import (
    ReviewStay,
    ReviewStore,
    SchemaOutdated,
    _alembic_config,
    make_engine,
)

pytestmark = pytest.mark.postgres


@dataclass(frozen=True)
class Accounts:
    owner_url: str
    service_url: str
    service_role: str


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="cimcoder")
    cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return int(args.handler(args))


@pytest.fixture
def accounts(postgres_server: Any) -> Iterator[Accounts]:
    """A fresh database owned by an owner role, and a login role for the service."""
    suffix = uuid.uuid4().hex[:8]
    owner, service, database = f"dim_owner_{suffix}", f"dim_service_{suffix}", f"dim_{suffix}"
    admin = dict(host="127.0.0.1", port=postgres_server.port, user="cimcoder", autocommit=True)
    with psycopg.connect(dbname="postgres", **admin) as conn:
        conn.execute(f'CREATE ROLE "{owner}" LOGIN')
        conn.execute(f'CREATE ROLE "{service}" LOGIN')
        conn.execute(f'CREATE DATABASE "{database}" OWNER "{owner}"')
    base = f"postgresql+psycopg://{{}}@127.0.0.1:{postgres_server.port}/{database}"
    yield Accounts(base.format(owner), base.format(service), service)
    postgres_server.drop_database(database)
    with psycopg.connect(dbname="postgres", **admin) as conn:
        conn.execute(f'DROP ROLE IF EXISTS "{service}"')
        conn.execute(f'DROP ROLE IF EXISTS "{owner}"')


def test_the_service_role_saves_but_cannot_touch_the_schema_or_the_trail(
    accounts: Accounts, capsys: pytest.CaptureFixture[str]
) -> None:
    # Before any migration the service's role cannot create the schema: it says how to.
    with pytest.raises(SchemaOutdated, match="cimcoder review migrate --database-url OWNER_URL"):
        ReviewStore(accounts.service_url)

    assert run(["review", "migrate", "--database-url", accounts.owner_url]) == 0
    assert "upgraded from empty to revision" in capsys.readouterr().out
    assert run(["review", "migrate", "--database-url", accounts.owner_url]) == 0
    assert "already at revision" in capsys.readouterr().out
    assert run(["review", "grant", "--database-url", accounts.owner_url,
                "--role", accounts.service_role]) == 0
    printed = capsys.readouterr().out
    assert f"GRANT SELECT, INSERT ON TABLE audit_events TO {accounts.service_role};" in printed

    # The service opens the current schema without DDL and works: queue, save, audit.
    service = ReviewStore(accounts.service_url)
    try:
        enqueue_cases(service, ["sej-ic-pg-1"])
        result = workflow.save_review(service, "sej-ic-pg-1", full_review(1), "dr-martin")
        assert (result["status"], result["version"]) == ("validated", 2)
        with service.session() as session:
            assert session.get(ReviewStay, "sej-ic-pg-1").dp_code == "I50.0"  # type: ignore[union-attr]
        assert audit.verify_chain(service).intact

        # What an attacker holding the service's credentials would try on the trail.
        refused = [
            "DROP TRIGGER audit_events_append_only ON audit_events",
            "ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only",
            "UPDATE audit_events SET actor = 'personne'",
            "DELETE FROM audit_events",
            "TRUNCATE audit_events",
            "CREATE TABLE audit_copy (id integer)",
            "DROP TABLE reviews",
        ]
        for statement in refused:
            with pytest.raises(DBAPIError) as caught, service.engine.begin() as conn:
                conn.execute(text(statement))
            assert getattr(caught.value.orig, "sqlstate", None) == "42501", statement
            assert "permission denied" in str(caught.value) or "must be owner" in str(caught.value)
        assert audit.verify_chain(service).events == 2
    finally:
        service.close()


def test_the_service_refuses_an_outdated_schema_and_names_the_owner_migration(
    accounts: Accounts,
) -> None:
    from alembic import command

    # The owner migrated an older version only (the service was upgraded before the schema).
    owner = make_engine(accounts.owner_url)
    try:
        with owner.begin() as conn:
            config = _alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "0003")
    finally:
        owner.dispose()
    assert run(["review", "grant", "--database-url", accounts.owner_url,
                "--role", accounts.service_role]) == 0

    with pytest.raises(SchemaOutdated) as caught:
        ReviewStore(accounts.service_url)
    message = str(caught.value)
    assert "at revision 0003" in message
    assert "cimcoder review migrate --database-url OWNER_URL" in message
    assert "permission denied" in message
    with pytest.raises(SchemaOutdated, match="at revision 0003"):
        ReviewStore(accounts.service_url, migrate=False)


def test_the_service_starts_under_the_restricted_role(accounts: Accounts) -> None:
    from cimcoder.serving.app import create_app
    from cimcoder.serving.settings import Settings

    assert run(["review", "migrate", "--database-url", accounts.owner_url]) == 0
    assert run(["review", "grant", "--database-url", accounts.owner_url,
                "--role", accounts.service_role]) == 0
    key = "kR7vQ2mX9pL4tW8zServiceRole"
    settings: Any = Settings(
        model=None,
        api_keys=[f"dr-martin:{key}"],
        roles={"dr-martin": "coder"},
        database_url=accounts.service_url,
        session_secret="Zq8rT1vN5wK3yH7bX2mC",
        review_qc_sample_rate=0.0,
    )
    with TestClient(create_app(settings)) as client:
        answer = client.get("/v1/review/stays", headers={"X-API-Key": key})
    assert answer.status_code == 200
    assert answer.json() == {"total": 0, "stays": []}


def test_grant_refuses_the_owner_role(accounts: Accounts) -> None:
    from cimcoder.serving.review.store import ReviewError

    assert run(["review", "migrate", "--database-url", accounts.owner_url]) == 0
    owner_role = accounts.owner_url.split("//")[1].split("@")[0]
    with pytest.raises(ReviewError, match="could drop the audit trail's triggers"):
        run(["review", "grant", "--database-url", accounts.owner_url, "--role", owner_role])
