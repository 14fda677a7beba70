"""JSONL, CSV and Parquet files: one stay per line / row.

Two record shapes are accepted (the same for the three formats and for Hugging Face folders):

*Flat* (what a hospital export or a spreadsheet usually holds)::

    id          stay id (required)
    text        the report text (required)
    codes       codes of unknown role: a list, or one string separated by ';', '|' or spaces
    dp, dr, das codes with their PMSI role (same syntax); any of codes/dp/dr/das may be absent
    patient_id, date (YYYY-MM-DD), doc_type, unit, age, sex (M/F), length_of_stay   optional

*Full* (what `Stay.model_dump()` and `cimcoder data synth` write, JSON formats only)::

    {"id": ..., "documents": [{"text": ..., "doc_type": ..., "date": ...}],
     "diagnoses": [{"code": ..., "role": "DP", "source_code": ..., "span": [s, e]}], ...}

A record that cannot be read (bad JSON, missing id or text, bad value, duplicated id) is
skipped and listed in the LoadReport with its line (row for Parquet); a file that cannot be
read at all, or a CSV/Parquet header with an unknown column, raises CorpusError.
"""

from __future__ import annotations

import csv
import json
import logging
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cimcoder.training.corpora.codes import CodeResolver, TerminologyName, UnknownPolicy
from cimcoder.training.corpora.errors import CorpusError
from cimcoder.training.corpora.schema import (
    Corpus,
    Diagnosis,
    Document,
    LoadReport,
    Role,
    Stay,
    StayContext,
)

logger = logging.getLogger(__name__)

FLAT_FIELDS = frozenset(
    {"id", "text", "codes", "dp", "dr", "das", "patient_id", "date", "doc_type",
     "unit", "age", "sex", "length_of_stay", "synthetic"}
)
FULL_FIELDS = frozenset(Stay.model_fields)
CONTEXT_FIELDS = ("unit", "age", "sex", "length_of_stay")
_ROLE_FIELDS: tuple[tuple[str, Role], ...] = (("dp", "DP"), ("dr", "DR"), ("das", "DAS"), ("codes", "unknown"))
# Not the comma: French exports may write "I50,0" for I50.0.
_SEPARATORS = re.compile(r"[;|\s]+")


def _code_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in _SEPARATORS.split(value) if part.strip()]
    if isinstance(value, list | tuple):
        if not all(isinstance(item, str) for item in value):
            raise ValueError(f"codes must be strings, got {value!r}")
        return [item.strip() for item in value if item.strip()]
    raise ValueError(f"codes must be a list or a ';'-separated string, got {type(value).__name__}")


def _blank_to_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors()[:3]:
        loc = ".".join(str(item) for item in error["loc"]) or "record"
        parts.append(f"{loc}: {error['msg']}")
    return "; ".join(parts)


class RecordReader:
    """Turns dict records into Stays, reporting the ones it cannot use."""

    def __init__(
        self,
        report: LoadReport,
        terminology: TerminologyName = "cim10",
        unknown_codes: UnknownPolicy = "drop",
        file: str | None = None,
    ) -> None:
        self.report = report
        self.terminology = terminology
        self.resolver = CodeResolver(report, terminology, unknown_codes)
        self.file = file
        self.stays: list[Stay] = []
        self._seen: dict[str, int | None] = {}

    def add(self, record: Any, line: int | None) -> None:
        self.report.records_read += 1
        if not isinstance(record, dict):
            self.report.skip(f"expected an object, got {type(record).__name__}", file=self.file, line=line)
            return
        raw_id = record.get("id")
        stay_id = str(raw_id).strip() if raw_id is not None else ""
        if not stay_id:
            self.report.skip("missing stay id ('id')", file=self.file, line=line)
            return
        if stay_id in self._seen:
            first = self._seen[stay_id]
            self.report.skip(
                f"duplicated stay id (first at line {first})" if first else "duplicated stay id",
                file=self.file, line=line, resource_id=stay_id,
            )
            return
        unknown = sorted(set(record) - FLAT_FIELDS - FULL_FIELDS)
        if unknown:
            self.report.skip(f"unknown field(s) {', '.join(unknown)}", file=self.file, line=line, resource_id=stay_id)
            return
        mixed = sorted((set(record) & FLAT_FIELDS) - FULL_FIELDS) if "documents" in record else []
        if mixed:
            self.report.skip(
                f"flat field(s) {', '.join(mixed)} mixed with 'documents' (use one shape)",
                file=self.file, line=line, resource_id=stay_id,
            )
            return
        try:
            stay = self._full(record, stay_id, line) if "documents" in record else self._flat(record, stay_id, line)
        except ValidationError as exc:
            self.report.skip(_validation_message(exc), file=self.file, line=line, resource_id=stay_id)
            return
        except ValueError as exc:
            self.report.skip(str(exc), file=self.file, line=line, resource_id=stay_id)
            return
        self._seen[stay_id] = line
        self.stays.append(stay)

    def _diagnoses(self, items: Iterable[tuple[str, Role, str | None, Any]], stay_id: str, line: int | None) -> list[Diagnosis]:
        out = []
        for raw, role, source, span in items:
            diag = self.resolver.diagnosis(
                raw, role, stay_id=stay_id, source_code=source, file=self.file, line=line,
                span=tuple(span) if span is not None else None,
            )
            if diag is not None:
                out.append(diag)
        return out

    def _flat(self, record: dict[str, Any], stay_id: str, line: int | None) -> Stay:
        record = {key: _blank_to_none(value) for key, value in record.items()}
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            raise ValueError("missing or empty report text ('text')")
        coded = [
            (code, role, None, None)
            for key, role in _ROLE_FIELDS
            for code in _code_list(record.get(key))
        ]
        diagnoses = self._diagnoses(coded, stay_id, line)
        context = None
        if any(record.get(key) is not None for key in CONTEXT_FIELDS):
            context = StayContext(**{key: record.get(key) for key in CONTEXT_FIELDS})
        document = Document(text=text, doc_type=record.get("doc_type") or "crh", date=record.get("date"))
        return Stay(
            id=stay_id,
            patient_id=None if record.get("patient_id") is None else str(record["patient_id"]),
            documents=[document],
            diagnoses=diagnoses,
            terminology=self.terminology,
            edition=self.resolver.edition if diagnoses else None,
            context=context,
            synthetic=bool(record.get("synthetic") or False),
        )

    def _full(self, record: dict[str, Any], stay_id: str, line: int | None) -> Stay:
        raw_diagnoses = record.get("diagnoses") or []
        if not isinstance(raw_diagnoses, list):
            raise ValueError("'diagnoses' must be a list")
        items = []
        for item in raw_diagnoses:
            if not isinstance(item, dict) or not isinstance(item.get("code"), str):
                raise ValueError(f"each diagnosis needs a 'code' string, got {item!r}")
            items.append((item["code"], item.get("role", "unknown"), item.get("source_code"), item.get("span")))
        checked = Stay.model_validate({**record, "id": stay_id, "diagnoses": []})
        if checked.terminology != self.terminology:
            raise ValueError(f"terminology {checked.terminology} but loading as {self.terminology}")
        roles = {role for _, role, _, _ in items}
        bad = roles - {"DP", "DR", "DAS", "unknown"}
        if bad:
            raise ValueError(f"unknown role(s) {sorted(bad)} (expected DP, DR, DAS, unknown)")
        diagnoses = self._diagnoses(items, stay_id, line)
        return checked.model_copy(update={"diagnoses": diagnoses})

    def corpus(self, name: str) -> Corpus:
        if not self.stays and self.report.records_read:
            reasons = "; ".join(str(s) for s in self.report.skipped[:5])
            raise CorpusError(f"{self.report.source}: no valid stay in {self.report.records_read} records: {reasons}")
        logger.info(
            "loaded %d stays from %s (%d skipped, %d code issues)",
            len(self.stays), self.report.source, len(self.report.skipped), len(self.report.code_issues),
        )
        return Corpus(stays=self.stays, report=self.report, name=name)


def _open_text(path: Path) -> Iterator[tuple[int, str]]:
    try:
        with path.open(encoding="utf-8-sig") as handle:
            yield from enumerate(handle, start=1)
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def load_jsonl(
    path: str | Path,
    *,
    terminology: TerminologyName = "cim10",
    unknown_codes: UnknownPolicy = "drop",
    name: str | None = None,
) -> Corpus:
    """One JSON object per line, flat or full shape (see module doc)."""
    path = Path(path)
    report = LoadReport(source=str(path))
    reader = RecordReader(report, terminology, unknown_codes, file=str(path))
    for line, raw in _open_text(path):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except json.JSONDecodeError as exc:
            report.records_read += 1
            report.skip(f"invalid JSON: {exc.msg} (column {exc.colno})", file=str(path), line=line)
            continue
        reader.add(record, line)
    if report.records_read == 0:
        raise CorpusError(f"{path}: empty file, no stay")
    return reader.corpus(name or path.stem)


def _check_columns(path: Path, columns: list[str]) -> None:
    unknown = [c for c in columns if c not in FLAT_FIELDS]
    if unknown:
        raise CorpusError(
            f"{path}: unknown column(s) {', '.join(map(repr, unknown))}; "
            f"expected some of {', '.join(sorted(FLAT_FIELDS))}"
        )
    missing = [c for c in ("id", "text") if c not in columns]
    if missing:
        raise CorpusError(f"{path}: missing column(s) {', '.join(missing)}")


def load_csv(
    path: str | Path,
    *,
    terminology: TerminologyName = "cim10",
    unknown_codes: UnknownPolicy = "drop",
    delimiter: str | None = None,
    name: str | None = None,
) -> Corpus:
    """CSV with a header, flat shape (codes separated by ';'); delimiter sniffed among , ; tab."""
    path = Path(path)
    report = LoadReport(source=str(path))
    reader = RecordReader(report, terminology, unknown_codes, file=str(path))
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # reports are long fields
    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            if delimiter is None:
                first = handle.readline()
                delimiter = max(",;\t", key=first.count)
                handle.seek(0)
            rows = csv.DictReader(handle, delimiter=delimiter)
            if rows.fieldnames is None:
                raise CorpusError(f"{path}: empty file, expected a header line")
            _check_columns(path, [c.strip() for c in rows.fieldnames])
            start = 2
            for row in rows:
                line = start
                start = rows.line_num + 1
                if None in row:
                    report.records_read += 1
                    report.skip("more fields than header columns", file=str(path), line=line)
                    continue
                if any(value is None for value in row.values()):
                    report.records_read += 1
                    report.skip("fewer fields than header columns", file=str(path), line=line)
                    continue
                reader.add({k.strip(): v for k, v in row.items()}, line)
    except FileNotFoundError:
        raise CorpusError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise CorpusError(f"{path}: malformed CSV: {exc}") from None
    if report.records_read == 0:
        raise CorpusError(f"{path}: no data row")
    return reader.corpus(name or path.stem)


def load_parquet(
    path: str | Path,
    *,
    terminology: TerminologyName = "cim10",
    unknown_codes: UnknownPolicy = "drop",
    name: str | None = None,
) -> Corpus:
    """Parquet, flat shape; `codes`/`dp`/`dr`/`das` may be list<string> or ';'-strings."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"{path}: no such file")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise CorpusError(f"{path}: not a readable Parquet file: {exc}") from None
    _check_columns(path, table.column_names)
    report = LoadReport(source=str(path))
    reader = RecordReader(report, terminology, unknown_codes, file=str(path))
    for row_number, row in enumerate(table.to_pylist(), start=1):
        reader.add(_parquet_row(row), row_number)
    if report.records_read == 0:
        raise CorpusError(f"{path}: no row")
    return reader.corpus(name or path.stem)


def _parquet_row(row: dict[str, Any]) -> dict[str, Any]:
    # Parquet carries typed values: dates as datetime.date, ids possibly as integers.
    out = dict(row)
    if isinstance(out.get("id"), int):
        out["id"] = str(out["id"])
    return out


def write_jsonl(stays: Iterable[Stay], path: str | Path) -> int:
    """Write stays in the full shape, one per line; returns the count."""
    count = 0
    with Path(path).open("w", encoding="utf-8") as handle:
        for stay in stays:
            handle.write(stay.model_dump_json(exclude_none=True))
            handle.write("\n")
            count += 1
    return count
