"""Reading the reports to score in batch: a folder of .txt, a JSONL file or a Parquet file.

Every record becomes either a `StayInput` or an `Unreadable` (where, and why), so that one
bad report never stops the others and none is dropped silently.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

from cimcoder.errors import CimcoderError
from cimcoder.inference.predictor import StayInput

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")


class InputError(CimcoderError):
    """The input as a whole cannot be used (missing, unknown format, no id/text columns)."""


@dataclass(frozen=True)
class Unreadable:
    """A report that could not be read, and why."""

    where: str
    reason: str
    id: str | None = None

    def __str__(self) -> str:
        who = f" (id {self.id})" if self.id is not None else ""
        return f"{self.where}{who}: {self.reason}"


Record: TypeAlias = "StayInput | Unreadable"


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
            "convert it, e.g. `iconv -f latin1 -t utf-8`"
        ) from None


def _read_folder(folder: Path) -> Iterator[Record]:
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise InputError(f"{folder} holds no .txt report")
    for path in files:
        try:
            text = _decode(path.read_bytes())
        except ValueError as exc:
            yield Unreadable(path.name, str(exc), path.stem)
            continue
        except OSError as exc:
            yield Unreadable(path.name, f"cannot read: {exc.strerror or exc}", path.stem)
            continue
        if not text.strip():
            yield Unreadable(path.name, "empty report", path.stem)
            continue
        yield StayInput(path.stem, text)


def _record_from_mapping(data: dict[str, Any], where: str) -> Record:
    raw_id = data.get("id")
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        return Unreadable(where, "no 'id'")
    if not isinstance(raw_id, str | int) or isinstance(raw_id, bool):
        return Unreadable(where, f"'id' must be text or an integer, not {type(raw_id).__name__}")
    stay_id = str(raw_id)
    text = data.get("text")
    documents = data.get("documents")
    if text is None and isinstance(documents, list):
        texts = [d.get("text") if isinstance(d, dict) else d for d in documents]
        strings = [t for t in texts if isinstance(t, str)]
        if len(strings) != len(texts):
            return Unreadable(where, "every document needs a 'text' string", stay_id)
        joined = StayInput.from_documents(stay_id, strings)
        if not joined.text.strip():
            return Unreadable(where, "empty report", stay_id)
        return joined
    if text is None:
        return Unreadable(where, "no 'text'", stay_id)
    if not isinstance(text, str):
        return Unreadable(where, f"'text' must be a string, not {type(text).__name__}", stay_id)
    if not text.strip():
        return Unreadable(where, "empty report", stay_id)
    return StayInput(stay_id, text)


def _read_jsonl(path: Path) -> Iterator[Record]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from None
    for number, line_bytes in enumerate(raw.splitlines(), start=1):
        where = f"{path.name}, line {number}"
        try:
            line = _decode(line_bytes)
        except ValueError as exc:
            yield Unreadable(where, str(exc))
            continue
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            yield Unreadable(where, f"malformed JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(data, dict):
            yield Unreadable(where, f"expected a JSON object, got {type(data).__name__}")
            continue
        yield _record_from_mapping(data, where)


def _read_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ...
        raise InputError(f"cannot read {path} as Parquet: {exc}") from None
    columns = set(table.column_names)
    if "id" not in columns or ("text" not in columns and "documents" not in columns):
        raise InputError(
            f"{path} needs columns 'id' and 'text'; it has {sorted(columns)}"
        )
    for number, row in enumerate(table.to_pylist(), start=1):
        yield _record_from_mapping(row, f"{path.name}, row {number}")


def read_reports(path: str | Path) -> Iterator[Record]:
    """The reports of a folder of .txt (id = file stem), a JSONL or a Parquet file."""
    source = Path(path)
    if not source.exists():
        raise InputError(f"input not found: {source}")
    if source.is_dir():
        return _read_folder(source)
    suffix = source.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return _read_jsonl(source)
    if suffix in PARQUET_SUFFIXES:
        return _read_parquet(source)
    if suffix in TEXT_SUFFIXES:
        raise InputError(f"{source} is one .txt file: give its folder (every .txt is a report)")
    raise InputError(
        f"unsupported input {source}: give a folder of .txt reports, a .jsonl or a .parquet file"
    )


def dedupe(records: list[Record]) -> list[Record]:
    """Turn a repeated id into an `Unreadable` (an output line must identify one report)."""
    seen: dict[str, int] = {}
    out: list[Record] = []
    for i, record in enumerate(records):
        if isinstance(record, StayInput) and record.id is not None:
            if record.id in seen:
                out.append(
                    Unreadable(f"record {i + 1}", f"duplicate id (first at record {seen[record.id] + 1})", record.id)
                )
                continue
            seen[record.id] = i
        out.append(record)
    return out
