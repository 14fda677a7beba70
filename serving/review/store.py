"""The review store: stays to code, the model's suggestions, the coders' decisions, the audit.

SQLAlchemy 2 models over SQLite (default; WAL journal, busy timeout, `BEGIN IMMEDIATE` for
writes) or PostgreSQL (by URL). The schema is created and upgraded by Alembic
(`migrations/`), programmatically, when the store is opened.

A *review* is one save of a coder on one stay: the decision on every suggested code
(accept / reject / change) plus the codes they added, and the chosen DP. Its id is generated
by the client (a UUID), so a retried save is applied once; it names the stay version it was
based on, so two coders saving the same stay at once cannot overwrite each other silently:
the second one gets a `ReviewConflict` carrying the current state.

`audit_events` is append-only: the code only ever inserts into it, and a database trigger
(SQLite and PostgreSQL) refuses UPDATE and DELETE.
"""

from __future__ import annotations

import datetime
import enum
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    Session,
    mapped_column,
    relationship,
    sessionmaker,
)

from cimcoder.errors import CimcoderError

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 30_000


class ReviewError(CimcoderError):
    """A review request that cannot be carried out as asked."""


class UnknownStay(ReviewError):
    """The stay is not in the review store."""


class ReviewConflict(ReviewError):
    """The stay changed since the coder opened it: reload, merge and save again."""

    def __init__(self, message: str, current: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.current = current or {}


class StayStatus(enum.StrEnum):
    """Where a stay is in the DIM workflow (French label in `STATUS_LABELS`)."""

    TO_CODE = "to_code"
    IN_REVIEW = "in_review"
    VALIDATED = "validated"
    AUTO_CODED = "auto_coded"


STATUS_LABELS = {
    StayStatus.TO_CODE: "à coder",
    StayStatus.IN_REVIEW: "en revue",
    StayStatus.VALIDATED: "validé",
    StayStatus.AUTO_CODED: "auto-codé",
}


class Action(enum.StrEnum):
    """A coder's decision on one code."""

    ACCEPT = "accept"
    REJECT = "reject"
    CHANGE = "change"
    ADD = "add"


def utcnow() -> datetime.datetime:
    """Naive UTC timestamp (SQLite keeps no time zone; every stored time is UTC)."""
    return datetime.datetime.now(datetime.UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Coder(Base):
    __tablename__ = "coders"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    last_seen_at: Mapped[datetime.datetime | None] = mapped_column(DateTime)


class ReviewStay(Base):
    __tablename__ = "stays"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    patient_id: Mapped[str | None] = mapped_column(String(128))
    unit: Mapped[str | None] = mapped_column(String(128), index=True)
    stay_date: Mapped[datetime.date | None] = mapped_column(Date, index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    auto_coded: Mapped[bool] = mapped_column(Boolean, default=False)
    qc_sampled: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    dp_code: Mapped[str | None] = mapped_column(String(16))
    terminology: Mapped[str] = mapped_column(String(8), default="cim10")
    model_version: Mapped[str | None] = mapped_column(String(256))
    thresholds_version: Mapped[str | None] = mapped_column(String(256))
    terminology_edition: Mapped[str | None] = mapped_column(String(256))
    input_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    validated_at: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    validated_by: Mapped[str | None] = mapped_column(ForeignKey("coders.name"))

    documents: Mapped[list[ReviewDocument]] = relationship(
        order_by="ReviewDocument.position", cascade="all, delete-orphan"
    )
    predictions: Mapped[list[Prediction]] = relationship(
        order_by="Prediction.rank", cascade="all, delete-orphan"
    )


class ReviewDocument(Base):
    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stay_id: Mapped[str] = mapped_column(ForeignKey("stays.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    doc_type: Mapped[str] = mapped_column(String(32), default="crh")
    doc_date: Mapped[datetime.date | None] = mapped_column(Date)
    text: Mapped[str] = mapped_column(Text)


class Prediction(Base):
    """One code suggested by the model for a stay, as the predictor answered it."""

    __tablename__ = "predictions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    stay_id: Mapped[str] = mapped_column(ForeignKey("stays.id"), index=True)
    rank: Mapped[int] = mapped_column(Integer)
    code: Mapped[str] = mapped_column(String(16), index=True)
    label: Mapped[str | None] = mapped_column(Text)
    score: Mapped[float] = mapped_column(Float)
    decision: Mapped[str] = mapped_column(String(8))
    role: Mapped[str | None] = mapped_column(String(16))
    cim11: Mapped[list[Any]] = mapped_column(JSON, default=list)
    evidence: Mapped[list[Any]] = mapped_column(JSON, default=list)
    flags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    model_version: Mapped[str | None] = mapped_column(String(256))
    thresholds_version: Mapped[str | None] = mapped_column(String(256))
    terminology_edition: Mapped[str | None] = mapped_column(String(256))
    input_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)


class Review(Base):
    """One save by one coder; `id` is generated by the client (idempotency key)."""

    __tablename__ = "reviews"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    stay_id: Mapped[str] = mapped_column(ForeignKey("stays.id"), index=True)
    coder: Mapped[str] = mapped_column(ForeignKey("coders.name"), index=True)
    base_version: Mapped[int] = mapped_column(Integer)
    new_version: Mapped[int] = mapped_column(Integer)
    status_after: Mapped[str] = mapped_column(String(16))
    dp_code: Mapped[str | None] = mapped_column(String(16))
    qc: Mapped[bool] = mapped_column(Boolean, default=False)
    n_codes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow, index=True)

    codes: Mapped[list[ReviewCode]] = relationship(
        order_by="ReviewCode.position", cascade="all, delete-orphan"
    )

    __table_args__ = (Index("ix_reviews_stay_version", "stay_id", "new_version", unique=True),)


class ReviewCode(Base):
    """The decision on one code within a review."""

    __tablename__ = "review_codes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    review_id: Mapped[str] = mapped_column(ForeignKey("reviews.id"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(8))
    code: Mapped[str] = mapped_column(String(16), index=True)
    final_code: Mapped[str | None] = mapped_column(String(16))
    role: Mapped[str | None] = mapped_column(String(8))
    reason: Mapped[str | None] = mapped_column(Text)
    suggested_decision: Mapped[str | None] = mapped_column(String(8))
    score: Mapped[float | None] = mapped_column(Float)


class AuditEvent(Base):
    """Append-only trail: who did what, when, before/after, and what produced the suggestion."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(128))
    event: Mapped[str] = mapped_column(String(32), index=True)
    stay_id: Mapped[str | None] = mapped_column(String(128), index=True)
    review_id: Mapped[str | None] = mapped_column(String(64))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    model_version: Mapped[str | None] = mapped_column(String(256))
    thresholds_version: Mapped[str | None] = mapped_column(String(256))
    terminology_edition: Mapped[str | None] = mapped_column(String(256))
    input_hash: Mapped[str | None] = mapped_column(String(64))


class ReviewSetting(Base):
    """DIM settings changed from the page (QC sample rate), stored as JSON values."""

    __tablename__ = "review_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[datetime.datetime] = mapped_column(DateTime, default=utcnow)
    updated_by: Mapped[str | None] = mapped_column(String(128))


# -- engine -----------------------------------------------------------------------------


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so that BEGIN IMMEDIATE can be issued:
        # a deferred transaction that reads then writes fails with SQLITE_BUSY under
        # concurrency instead of waiting for the busy timeout.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    """Engine for `url`, with SQLite tuned for several writers (WAL, busy timeout)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        _configure_sqlite(engine)
    else:
        engine = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
    return engine


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (`alembic upgrade head`)."""
    from alembic import command
    from alembic.config import Config

    # Alembic's INFO lines (plugins, context) say nothing a hospital operator needs.
    alembic_logger = logging.getLogger("alembic")
    if alembic_logger.level == logging.NOTSET:
        alembic_logger.setLevel(logging.WARNING)
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


class ReviewStore:
    """The review database: an engine, its session factory, its schema upgraded at open."""

    def __init__(self, url: str, *, migrate: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            upgrade(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()


_stores: dict[str, ReviewStore] = {}
_stores_lock = threading.Lock()


def open_store(url: str) -> ReviewStore:
    """The process-wide store for `url` (opened, and its schema upgraded, once)."""
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = ReviewStore(url)
        return store
