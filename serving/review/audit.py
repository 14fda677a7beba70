"""The append-only audit trail: recording events, proving it intact, exporting it (CSV or
JSONL).

Each event carries the hash of the previous one (`prev_hash`) and its own (`hash`): the
SHA-256 of its content and `prev_hash`. Editing, deleting or inserting an event behind the
service's back (the triggers dropped, raw SQL) breaks the chain at that event, and
`verify_chain` names it. Writers take a lock first (PostgreSQL: a transaction-scoped advisory
lock; SQLite: `BEGIN IMMEDIATE` already serialises writers) so two transactions cannot both
chain onto the same event. Removing the newest events leaves a valid, shorter chain: keep the
head hash `verify_chain` reports somewhere else to detect that.
"""

from __future__ import annotations

import csv
import datetime
import hashlib
import io
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from cimcoder.serving.review.store import AuditEvent, ReviewError, ReviewStay, ReviewStore, utcnow

# The fields an event's hash seals (its id is not known before the insert; the order of the
# chain is what `prev_hash` records).
CHAINED_FIELDS = (
    "at",
    "actor",
    "event",
    "stay_id",
    "review_id",
    "model_version",
    "thresholds_version",
    "terminology_edition",
    "input_hash",
    "before",
    "after",
)
# What an export holds: the id, the sealed fields, then the chain.
AUDIT_FIELDS = ("id", *CHAINED_FIELDS, "prev_hash", "hash")
AuditFormat = Literal["csv", "jsonl"]
GENESIS_HASH = "0" * 64
# Any constant: the key of the advisory lock that serialises audit writers on PostgreSQL.
_PG_AUDIT_LOCK = 0x63696D61  # "cima"
# Cells a spreadsheet would run as a formula (CSV injection): prefixed with a quote.
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def chain_hash(content: Mapping[str, Any], prev_hash: str) -> str:
    """SHA-256 of an event's chained fields (canonical JSON) and the previous event's hash."""
    sealed = {name: content.get(name) for name in CHAINED_FIELDS}
    at = sealed["at"]
    if isinstance(at, datetime.datetime):
        sealed["at"] = at.isoformat()
    canonical = json.dumps(sealed, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(f"{prev_hash}\n{canonical}".encode("ascii")).hexdigest()


def _last_hash(session: Session) -> str:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_AUDIT_LOCK})
    # Autoflush: events this transaction added a moment ago are part of the answer.
    last = session.scalars(select(AuditEvent.hash).order_by(AuditEvent.id.desc()).limit(1)).first()
    return last or GENESIS_HASH


def record(
    session: Session,
    *,
    actor: str,
    event: str,
    stay: ReviewStay | None = None,
    review_id: str | None = None,
    before: dict[str, Any] | None = None,
    after: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event, chained to the last one, in the caller's transaction (it commits or
    rolls back with it)."""
    row = AuditEvent(
        at=utcnow(),
        actor=actor,
        event=event,
        stay_id=stay.id if stay is not None else None,
        review_id=review_id,
        before=before,
        after=after,
        model_version=stay.model_version if stay is not None else None,
        thresholds_version=stay.thresholds_version if stay is not None else None,
        terminology_edition=stay.terminology_edition if stay is not None else None,
        input_hash=stay.input_hash if stay is not None else None,
    )
    row.prev_hash = _last_hash(session)
    row.hash = chain_hash(_content(row), row.prev_hash)
    session.add(row)
    return row


def _content(row: AuditEvent) -> dict[str, Any]:
    return {name: getattr(row, name) for name in CHAINED_FIELDS}


@dataclass(frozen=True)
class ChainCheck:
    """What `verify_chain` found: the events checked, the head hash, the first broken event."""

    events: int
    head: str
    broken_id: int | None = None
    reason: str | None = None

    @property
    def intact(self) -> bool:
        return self.broken_id is None


def verify_chain(store: ReviewStore, *, batch: int = 1000) -> ChainCheck:
    """Recompute the chain from the first event; stop at the first event that does not fit."""
    expected_prev = GENESIS_HASH
    count = 0
    last = 0
    while True:
        with store.session() as session:
            rows = session.scalars(
                select(AuditEvent).where(AuditEvent.id > last).order_by(AuditEvent.id).limit(batch)
            ).all()
            checked = [(row.id, row.prev_hash, row.hash, _content(row)) for row in rows]
        if not checked:
            return ChainCheck(events=count, head=expected_prev)
        for event_id, prev_hash, own_hash, content in checked:
            if prev_hash != expected_prev:
                return ChainCheck(
                    count, expected_prev, event_id,
                    "its previous hash is not the hash of the event before it "
                    "(an event was deleted, inserted or edited)",
                )
            if own_hash != chain_hash(content, expected_prev):
                return ChainCheck(
                    count, expected_prev, event_id, "its content does not match its hash (edited)"
                )
            expected_prev = own_hash
            count += 1
            last = event_id


def event_dict(row: AuditEvent) -> dict[str, Any]:
    return {
        "id": row.id,
        "at": row.at.isoformat() + "Z",
        "actor": row.actor,
        "event": row.event,
        "stay_id": row.stay_id,
        "review_id": row.review_id,
        "model_version": row.model_version,
        "thresholds_version": row.thresholds_version,
        "terminology_edition": row.terminology_edition,
        "input_hash": row.input_hash,
        "before": row.before,
        "after": row.after,
        "prev_hash": row.prev_hash,
        "hash": row.hash,
    }


def iter_events(
    store: ReviewStore,
    *,
    stay_id: str | None = None,
    since: datetime.datetime | None = None,
    batch: int = 1000,
) -> Iterator[dict[str, Any]]:
    """Events in order of id, read in batches (constant memory on a long trail)."""
    last = 0
    while True:
        with store.session() as session:
            query = select(AuditEvent).where(AuditEvent.id > last).order_by(AuditEvent.id)
            if stay_id is not None:
                query = query.where(AuditEvent.stay_id == stay_id)
            if since is not None:
                query = query.where(AuditEvent.at >= since)
            rows = session.scalars(query.limit(batch)).all()
            events = [event_dict(row) for row in rows]
        if not events:
            return
        yield from events
        last = events[-1]["id"]


def format_events(events: Iterator[dict[str, Any]], fmt: AuditFormat) -> Iterator[str]:
    """Serialise events as JSONL lines or CSV rows (before/after as JSON text)."""
    if fmt == "jsonl":
        for event in events:
            yield json.dumps(event, ensure_ascii=False) + "\n"
        return
    if fmt != "csv":
        raise ReviewError(f"unknown audit format {fmt!r}: use csv or jsonl")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=AUDIT_FIELDS)
    writer.writeheader()
    yield buffer.getvalue()
    for event in events:
        buffer.seek(0)
        buffer.truncate()
        row = dict(event)
        row["before"] = json.dumps(row["before"], ensure_ascii=False) if row["before"] else ""
        row["after"] = json.dumps(row["after"], ensure_ascii=False) if row["after"] else ""
        writer.writerow({name: _csv_cell(value) for name, value in row.items()})
        yield buffer.getvalue()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


def format_from_path(path: Path, fmt: str | None) -> AuditFormat:
    chosen = (fmt or path.suffix.lstrip(".") or "jsonl").lower()
    if chosen not in ("csv", "jsonl"):
        raise ReviewError(f"cannot tell the audit format of {path}: use --format csv or jsonl")
    return chosen  # type: ignore[return-value]


def export_audit(store: ReviewStore, path: Path, fmt: str | None = None) -> int:
    """Write the whole trail to `path`; returns the number of events."""
    chosen = format_from_path(path, fmt)
    count = 0

    def counted() -> Iterator[dict[str, Any]]:
        nonlocal count
        for event in iter_events(store):
            count += 1
            yield event

    tmp = path.with_name(path.name + ".part")
    with tmp.open("w", encoding="utf-8", newline="") as out:
        for chunk in format_events(counted(), chosen):
            out.write(chunk)
    tmp.replace(path)
    return count
