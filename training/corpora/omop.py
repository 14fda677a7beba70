"""OMOP CDM (v5.3/5.4) through SQLAlchemy: `note` + `condition_occurrence`, one stay per visit.

- Stay = `visit_occurrence_id`; its documents are the visit's notes (`note_text`, ordered by
  `note_date`, `note_id`); patient = `person_id`.
- Codes: `condition_occurrence.condition_source_value` holds the CIM-10 code as the hospital
  wrote it (the French EDS practice; `condition_concept_id` is a SNOMED mapping we do not use).
- Role: `condition_status_source_value` when it reads DP, DR or DAS; else
  `condition_status_concept_id` 32902 (Primary diagnosis) -> DP, 32908 (Secondary diagnosis)
  -> DAS; else "unknown".
- Context, when the tables exist: `visit_occurrence` dates -> length of stay, `person`
  gender (8507 male, 8532 female) and year of birth -> sex and age.
- Skipped and reported: notes or conditions without a visit, empty notes, blank source values,
  conditions of a visit that has no note.

The database is given as a SQLAlchemy URL (`sqlite:///omop.db`, `postgresql+psycopg://...`)
or as the path of an SQLite file.
"""

from __future__ import annotations

import datetime
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from cimcoder.training.corpora.codes import CodeResolver, TerminologyName, UnknownPolicy
from cimcoder.training.corpora.errors import CorpusError
from cimcoder.training.corpora.schema import (
    CODED_ROLES,
    Corpus,
    Diagnosis,
    Document,
    LoadReport,
    Role,
    Sex,
    Stay,
    StayContext,
)

logger = logging.getLogger(__name__)

STATUS_CONCEPTS: dict[int, Role] = {32902: "DP", 32908: "DAS"}
GENDER_CONCEPTS: dict[int, Sex] = {8507: "M", 8532: "F"}
_REQUIRED = {
    "note": ("note_id", "person_id", "note_text", "visit_occurrence_id"),
    "condition_occurrence": (
        "condition_occurrence_id", "person_id", "condition_source_value", "visit_occurrence_id",
    ),
}


def _as_url(url_or_path: str) -> str:
    if "://" in url_or_path:
        if url_or_path.startswith("sqlite:///"):
            file = url_or_path.removeprefix("sqlite:///")
            if file and file != ":memory:" and not Path(file).is_file():
                raise CorpusError(f"{file}: no such SQLite database")
        return url_or_path
    path = Path(url_or_path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such SQLite database")
    return f"sqlite:///{path}"


def _as_date(value: Any) -> datetime.date | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    try:
        return datetime.date.fromisoformat(str(value)[:10])
    except ValueError:
        return None


def load_omop(
    url_or_path: str,
    *,
    terminology: TerminologyName = "cim10",
    unknown_codes: UnknownPolicy = "drop",
    schema: str | None = None,
    name: str | None = None,
) -> Corpus:
    """Read coded stays from an OMOP CDM database (see module doc)."""
    import sqlalchemy as sa
    from sqlalchemy.exc import SQLAlchemyError

    url = _as_url(url_or_path)
    try:
        shown = sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError as exc:
        raise CorpusError(f"invalid database URL: {exc}") from None
    report = LoadReport(source=shown)
    try:
        engine = sa.create_engine(url)
    except (SQLAlchemyError, ImportError) as exc:
        raise CorpusError(f"{shown}: cannot open database: {exc}") from None
    try:
        with engine.connect() as conn:
            return _read(conn, report, terminology, unknown_codes, schema, name or shown)
    except SQLAlchemyError as exc:
        orig = getattr(exc, "orig", None)
        message = str(orig) if orig is not None else str(exc)
        raise CorpusError(f"{shown}: cannot read OMOP tables: {message.strip().splitlines()[0]}") from None
    finally:
        engine.dispose()


def _read(
    conn: Any,
    report: LoadReport,
    terminology: TerminologyName,
    unknown_codes: UnknownPolicy,
    schema: str | None,
    name: str,
) -> Corpus:
    import sqlalchemy as sa

    inspector = sa.inspect(conn)
    tables = set(inspector.get_table_names(schema=schema))
    columns: dict[str, set[str]] = {}
    absent = [table for table in _REQUIRED if table not in tables]
    if absent:
        raise CorpusError(
            f"{report.source}: not an OMOP CDM database: no table {', '.join(map(repr, absent))}"
        )
    for table, needed in _REQUIRED.items():
        columns[table] = {c["name"].lower() for c in inspector.get_columns(table, schema=schema)}
        missing = [c for c in needed if c not in columns[table]]
        if missing:
            raise CorpusError(f"{report.source}: table {table} lacks column(s) {', '.join(missing)}")
    for table in ("visit_occurrence", "person"):
        if table in tables:
            columns[table] = {c["name"].lower() for c in inspector.get_columns(table, schema=schema)}

    prefix = f"{schema}." if schema else ""

    def select(table: str, wanted: list[str], order: str) -> list[dict[str, Any]]:
        present = [c for c in wanted if c in columns[table]]
        query = sa.text(f"SELECT {', '.join(present)} FROM {prefix}{table} ORDER BY {order}")
        return [dict(row._mapping) for row in conn.execute(query)]

    notes = select(
        "note",
        ["note_id", "person_id", "visit_occurrence_id", "note_date", "note_title", "note_text"],
        "visit_occurrence_id, note_id",
    )
    conditions = select(
        "condition_occurrence",
        ["condition_occurrence_id", "person_id", "visit_occurrence_id", "condition_source_value",
         "condition_status_concept_id", "condition_status_source_value"],
        "visit_occurrence_id, condition_occurrence_id",
    )
    visits: dict[Any, dict[str, Any]] = {}
    if "visit_occurrence" in columns and {"visit_occurrence_id", "visit_start_date"} <= columns["visit_occurrence"]:
        for row in select("visit_occurrence", ["visit_occurrence_id", "visit_start_date", "visit_end_date"], "visit_occurrence_id"):
            visits[row["visit_occurrence_id"]] = row
    persons: dict[Any, dict[str, Any]] = {}
    if "person" in columns and "person_id" in columns["person"]:
        for row in select("person", ["person_id", "gender_concept_id", "year_of_birth"], "person_id"):
            persons[row["person_id"]] = row

    documents: dict[Any, list[tuple[datetime.date | None, Any, Document]]] = defaultdict(list)
    patient: dict[Any, Any] = {}
    for note in notes:
        report.records_read += 1
        where = f"note {note['note_id']}"
        if note["visit_occurrence_id"] is None:
            report.skip("note without visit_occurrence_id", file="note", resource_id=where)
            continue
        text = note.get("note_text")
        if not isinstance(text, str) or not text.strip():
            report.skip("empty note_text", file="note", resource_id=where)
            continue
        date = _as_date(note.get("note_date"))
        doc_type = (note.get("note_title") or "crh").strip() or "crh"
        documents[note["visit_occurrence_id"]].append((date, note["note_id"], Document(text=text, doc_type=doc_type, date=date)))
        patient.setdefault(note["visit_occurrence_id"], note["person_id"])

    resolver = CodeResolver(report, terminology, unknown_codes)
    diagnoses: dict[Any, list[Diagnosis]] = defaultdict(list)
    for cond in conditions:
        report.records_read += 1
        where = f"condition_occurrence {cond['condition_occurrence_id']}"
        visit = cond["visit_occurrence_id"]
        if visit is None:
            report.skip("condition without visit_occurrence_id", file="condition_occurrence", resource_id=where)
            continue
        if visit not in documents:
            report.skip(f"visit {visit} has no note", file="condition_occurrence", resource_id=where)
            continue
        raw = (cond.get("condition_source_value") or "").strip()
        if not raw:
            report.skip("blank condition_source_value", file="condition_occurrence", resource_id=where)
            continue
        diag = resolver.diagnosis(raw, _role(cond), stay_id=str(visit), file="condition_occurrence", line=None)
        if diag is not None:
            diagnoses[visit].append(diag)

    stays = []
    for visit, docs in documents.items():
        docs.sort(key=lambda item: (item[0] or datetime.date.min, str(item[1])))
        stays.append(
            Stay(
                id=str(visit),
                patient_id=None if patient.get(visit) is None else str(patient[visit]),
                documents=[doc for _, _, doc in docs],
                diagnoses=diagnoses.get(visit, []),
                terminology=terminology,
                edition=resolver.edition if diagnoses.get(visit) else None,
                context=_context(visits.get(visit), persons.get(patient.get(visit))),
            )
        )
    if not stays:
        reasons = "; ".join(str(s) for s in report.skipped[:5]) or "the note table is empty"
        raise CorpusError(f"{report.source}: no stay with a note: {reasons}")
    logger.info("loaded %d OMOP visits (%d skipped, %d code issues)", len(stays), len(report.skipped), len(report.code_issues))
    return Corpus(stays=stays, report=report, name=name)


def _role(cond: dict[str, Any]) -> Role:
    source = (cond.get("condition_status_source_value") or "").strip().upper()
    if source in CODED_ROLES:
        return source
    concept = cond.get("condition_status_concept_id")
    return STATUS_CONCEPTS.get(int(concept), "unknown") if concept is not None else "unknown"


def _context(visit: dict[str, Any] | None, person: dict[str, Any] | None) -> StayContext | None:
    start = _as_date(visit.get("visit_start_date")) if visit else None
    end = _as_date(visit.get("visit_end_date")) if visit else None
    los = (end - start).days if start and end and end >= start else None
    sex = GENDER_CONCEPTS.get(int(person["gender_concept_id"])) if person and person.get("gender_concept_id") is not None else None
    age = None
    if person and person.get("year_of_birth") is not None and start is not None:
        years = start.year - int(person["year_of_birth"])
        age = years if 0 <= years <= 130 else None
    if los is None and sex is None and age is None:
        return None
    return StayContext(length_of_stay=los, sex=sex, age=age)
