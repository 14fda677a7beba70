"""A folder of `.txt` reports plus a codes TSV (the CodiEsp layout).

Layout::

    FOLDER/text/<stay_id>.txt   one document per stay (or FOLDER/<stay_id>.txt)
    FOLDER/codes.tsv            tab-separated, with a header line

Columns of `codes.tsv`: the stay id (`stay_id` or `doc_id`), the code (`code`, or
`code_cim10` for CodiEsp), optionally `role` (DP/DR/DAS) and the original code (`source_code`,
or `code_cie10es` for CodiEsp). A blank code with a source code means "no equivalent in the
terminology": reported as unmapped, the original kept in the report. A stay with a text but no
code line is kept with no diagnoses; code lines whose stay has no text are skipped (reported).
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from cimcoder.training.corpora.codes import CodeResolver, TerminologyName, UnknownPolicy
from cimcoder.training.corpora.errors import CorpusError
from cimcoder.training.corpora.schema import (
    ROLES,
    Corpus,
    Diagnosis,
    Document,
    LoadReport,
    Role,
    Stay,
)

logger = logging.getLogger(__name__)

_ID_COLUMNS = ("stay_id", "doc_id")
_CODE_COLUMNS = ("code", "code_cim10")
_SOURCE_COLUMNS = ("source_code", "code_cie10es")
CODES_FILE = "codes.tsv"


def _pick(header: list[str], options: tuple[str, ...]) -> str | None:
    return next((name for name in options if name in header), None)


def _read_codes(
    path: Path, report: LoadReport
) -> tuple[list[tuple[int, str, str, str | None, Role]], str]:
    """Rows (line, stay_id, code, source_code, role) and the name of the code column."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header is None:
                raise CorpusError(f"{path}: empty file, expected a header line")
            header = [name.strip() for name in header]
            id_col, code_col = _pick(header, _ID_COLUMNS), _pick(header, _CODE_COLUMNS)
            if id_col is None or code_col is None:
                raise CorpusError(
                    f"{path}: header {header} lacks a stay id column ({' or '.join(_ID_COLUMNS)}) "
                    f"or a code column ({' or '.join(_CODE_COLUMNS)})"
                )
            src_col = _pick(header, _SOURCE_COLUMNS)
            index = {name: i for i, name in enumerate(header)}
            rows = []
            for line, fields in enumerate(reader, start=2):
                if not fields or all(not f.strip() for f in fields):
                    continue
                report.records_read += 1
                if len(fields) != len(header):
                    report.skip(
                        f"{len(fields)} fields, expected {len(header)} ({', '.join(header)})",
                        file=str(path),
                        line=line,
                    )
                    continue
                stay_id = fields[index[id_col]].strip()
                code = fields[index[code_col]].strip()
                source = fields[index[src_col]].strip() if src_col else None
                role = fields[index["role"]].strip() if "role" in index else "unknown"
                role = role or "unknown"
                if not stay_id:
                    report.skip("blank stay id", file=str(path), line=line)
                    continue
                if role not in ROLES:
                    report.skip(f"unknown role {role!r} (expected DP, DR, DAS)", file=str(path), line=line)
                    continue
                if not code and not source:
                    report.skip("blank code", file=str(path), line=line, resource_id=stay_id)
                    continue
                rows.append((line, stay_id, code, source, role))
    except UnicodeDecodeError as exc:
        raise CorpusError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise CorpusError(f"{path}: malformed TSV: {exc}") from None
    return rows, code_col


def load_text_folder(
    folder: str | Path,
    *,
    terminology: TerminologyName = "cim10",
    unknown_codes: UnknownPolicy = "drop",
    doc_type: str = "crh",
    name: str | None = None,
) -> Corpus:
    """Load FOLDER/text/*.txt (or FOLDER/*.txt) and FOLDER/codes.tsv."""
    folder = Path(folder)
    codes_path = folder / CODES_FILE
    if not codes_path.is_file():
        raise CorpusError(f"{folder}: no {CODES_FILE} (expected a folder of .txt reports plus {CODES_FILE})")
    text_dir = folder / "text" if (folder / "text").is_dir() else folder
    report = LoadReport(source=str(folder))
    resolver = CodeResolver(report, terminology, unknown_codes)

    texts: dict[str, str] = {}
    for path in sorted(text_dir.glob("*.txt")):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            report.skip(f"not UTF-8 text ({exc.reason} at byte {exc.start})", file=str(path), resource_id=path.stem)
            continue
        if not text.strip():
            report.skip("empty document", file=str(path), resource_id=path.stem)
            continue
        texts[path.stem] = text
    if not texts and not report.skipped:
        raise CorpusError(f"{text_dir}: no .txt report found")

    rows, _ = _read_codes(codes_path, report)
    diagnoses: dict[str, list[Diagnosis]] = {stay_id: [] for stay_id in texts}
    for line, stay_id, code, source, role in rows:
        if stay_id not in texts:
            report.skip(f"no text file {stay_id}.txt for this code line", file=str(codes_path), line=line, resource_id=stay_id)
            continue
        if not code:
            resolver.unmapped(source or "", stay_id=stay_id, file=str(codes_path), line=line)
            continue
        diag = resolver.diagnosis(
            code, role, stay_id=stay_id, source_code=source or code, file=str(codes_path), line=line
        )
        if diag is not None:
            diagnoses[stay_id].append(diag)

    edition = resolver.edition if rows else None
    stays = [
        Stay(
            id=stay_id,
            documents=[Document(text=text, doc_type=doc_type)],
            diagnoses=diagnoses[stay_id],
            terminology=terminology,
            edition=edition,
        )
        for stay_id, text in texts.items()
    ]
    logger.info(
        "loaded %d stays from %s (%d skipped, %d code issues)",
        len(stays), folder, len(report.skipped), len(report.code_issues),
    )
    return Corpus(stays=stays, report=report, name=name or folder.name)
