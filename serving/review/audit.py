"""The append-only audit trail: recording events and exporting them (CSV or JSONL)."""

from __future__ import annotations

import csv
import datetime
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from cimcoder.serving.review.store import AuditEvent, ReviewError, ReviewStay, ReviewStore, utcnow

AUDIT_FIELDS = (
    "id",
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
AuditFormat = Literal["csv", "jsonl"]


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
    """Append one event, in the caller's transaction (it commits or rolls back with it)."""
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
    session.add(row)
    return row


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
        writer.writerow(row)
        yield buffer.getvalue()


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
