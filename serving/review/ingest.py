"""Reading `cimcoder predict` output and the texts it scored, to fill the review queue."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from cimcoder.inference.schemas import StayPrediction
from cimcoder.serving.review.schemas import ReviewDocumentIn, StayIn
from cimcoder.serving.review.store import ReviewError

logger = logging.getLogger(__name__)


def _short(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return f"{first.get('msg', 'invalid')}" + (f" (at {where})" if where else "")


def read_predictions(path: Path) -> Iterator[StayPrediction]:
    """The JSONL lines of `cimcoder predict`; a malformed line stops with its number."""
    if not path.is_file():
        raise ReviewError(f"predictions file not found: {path}")
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(_utf8_lines(lines, path), start=1):
            if not line.strip():
                continue
            try:
                prediction = StayPrediction.model_validate_json(line)
            except ValidationError as exc:
                raise ReviewError(f"{path}, line {number}: not a prediction: {_short(exc)}") from None
            if prediction.id is None:
                raise ReviewError(f"{path}, line {number}: the prediction has no id")
            yield prediction


def _utf8_lines(lines: Iterator[str], path: Path) -> Iterator[str]:
    """The lines of a text file opened as UTF-8; a non-UTF-8 file is a user error, not a crash."""
    try:
        yield from lines
    except UnicodeDecodeError as exc:
        # Decoding runs on buffered chunks: neither a line number nor a file offset is exact.
        raise ReviewError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _add_once(stays: dict[str, StayIn], stay: StayIn, where: str) -> None:
    # Two texts under one id: which one the coder would see is a guess, so refuse.
    if stay.id in stays:
        raise ReviewError(f"{where}: stay id {stay.id!r} appears twice")
    stays[stay.id] = stay


def _stay_from_record(record: dict[str, Any], where: str) -> StayIn:
    if "documents" in record and isinstance(record["documents"], list):
        # A corpora `Stay` line: keep its documents, unit and patient.
        context = record.get("context") or {}
        record = {
            "id": record.get("id"),
            "patient_id": record.get("patient_id"),
            "unit": context.get("unit") if isinstance(context, dict) else None,
            "documents": [
                {k: d.get(k) for k in ("text", "doc_type", "date") if d.get(k) is not None}
                for d in record["documents"]
                if isinstance(d, dict)
            ],
        }
    else:
        record = {k: v for k, v in record.items() if k in StayIn.model_fields}
    if isinstance(record.get("id"), int):
        record["id"] = str(record["id"])
    try:
        return StayIn.model_validate(record)
    except ValidationError as exc:
        raise ReviewError(f"{where}: not a stay with an id and a text: {_short(exc)}") from None


def read_texts(path_or_name: str) -> dict[str, StayIn]:
    """Stays by id from a folder of .txt reports, a JSONL / Parquet file with `id` and `text`
    (or corpora `Stay` lines), or a shipped data set name such as `codiesp-fr/dev`."""
    path = Path(path_or_name)
    stays: dict[str, StayIn] = {}
    if path.is_dir():
        for file in sorted(path.glob("*.txt")):
            try:
                text = file.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise ReviewError(
                    f"{file}: not UTF-8 text ({exc.reason} at byte {exc.start})"
                ) from None
            if text.strip():
                stays[file.stem] = StayIn(id=file.stem, text=text)
            else:
                logger.warning("empty report skipped: %s", file.name)
        if not stays:
            raise ReviewError(f"no .txt report in {path}")
        return stays
    if path.is_file() and path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        if not {"id", "text"} <= set(frame.columns):
            raise ReviewError(f"{path}: a Parquet file needs 'id' and 'text' columns")
        for i, row in enumerate(frame.to_dict("records")):
            stay = _stay_from_record(row, f"{path}, row {i + 1}")
            _add_once(stays, stay, f"{path}, row {i + 1}")
        return stays
    if path.is_file():
        with path.open(encoding="utf-8") as lines:
            for number, line in enumerate(_utf8_lines(lines, path), start=1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ReviewError(f"{path}, line {number}: invalid JSON: {exc.msg}") from None
                if not isinstance(record, dict):
                    raise ReviewError(f"{path}, line {number}: expected a JSON object")
                stay = _stay_from_record(record, f"{path}, line {number}")
                _add_once(stays, stay, f"{path}, line {number}")
        return stays
    return _from_dataset(path_or_name)


def _from_dataset(name: str) -> dict[str, StayIn]:
    try:
        from cimcoder.training.corpora import load_dataset
    except ImportError:
        raise ReviewError(f"texts not found: {name} (not a file, folder or data set)") from None
    corpus = load_dataset(name)
    stays: dict[str, StayIn] = {}
    for stay in corpus.stays:
        context = stay.context
        stays[stay.id] = StayIn(
            id=stay.id,
            patient_id=stay.patient_id,
            unit=context.unit if context is not None else None,
            documents=[
                ReviewDocumentIn(text=d.text, doc_type=d.doc_type, date=d.date)
                for d in stay.documents
            ],
        )
    return stays
