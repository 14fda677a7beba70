"""`load_dataset`: one entry point for shipped names, files, folders and databases."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from cimcoder.training.corpora.codes import TerminologyName, UnknownPolicy
from cimcoder.training.corpora.errors import CorpusError
from cimcoder.training.corpora.paths import SHIPPED, shipped_path
from cimcoder.training.corpora.schema import Corpus

_SYNTH = re.compile(r"^synth-fr(?:/(?P<n>\d+))?(?:@(?P<seed>\d+))?$")
_DB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mssql", "oracle")
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")

FORMATS = ("auto", "text-folder", "jsonl", "csv", "parquet", "hf", "omop", "fhir")


def detect_format(name_or_path: str) -> str:
    """The loader that `load_dataset` would use for this name or path."""
    if name_or_path in SHIPPED:
        return "text-folder"
    if _SYNTH.match(name_or_path):
        return "synth"
    scheme = name_or_path.split("://", 1)[0].split("+", 1)[0] if "://" in name_or_path else ""
    if scheme in _DB_SCHEMES:
        return "omop"
    path = Path(name_or_path)
    if not path.exists():
        raise CorpusError(
            f"{name_or_path}: no such file or folder, and not a shipped data set "
            f"({', '.join(sorted(SHIPPED))}, synth-fr/N@SEED) nor a database URL"
        )
    if path.is_dir():
        if (path / "codes.tsv").is_file():
            return "text-folder"
        if (path / "dataset_info.json").is_file() or (path / "state.json").is_file():
            return "hf"
        if (path / "dataset_dict.json").is_file():
            return "hf"
        if any(path.glob("*.json")):
            return "fhir"
        raise CorpusError(
            f"{path}: folder of unknown layout (expected codes.tsv + .txt reports, a Hugging "
            "Face save_to_disk folder, or FHIR bundle .json files)"
        )
    suffix = path.suffix.lower()
    by_suffix = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".json": "fhir"}
    if suffix in by_suffix:
        return by_suffix[suffix]
    if suffix in _SQLITE_SUFFIXES:
        return "omop"
    raise CorpusError(
        f"{path}: unknown file type {suffix or '(no suffix)'} (expected .jsonl, .csv, .parquet, "
        ".json FHIR bundle, .db/.sqlite OMOP database)"
    )


def load_dataset(
    name_or_path: str | Path,
    *,
    format: str = "auto",
    terminology: TerminologyName = "cim10",
    unknown_codes: UnknownPolicy = "drop",
    **options: Any,
) -> Corpus:
    """Load coded stays from a shipped name, a file, a folder or a database URL.

    Shipped names: "codiesp-fr/train", "codiesp-fr/dev" (real, CC BY 4.0) and
    "synth-fr/N@SEED" (N synthetic stays, generated on the fly, e.g. "synth-fr/200@1").
    Files: .jsonl, .csv, .parquet (one stay per line/row, see `cimcoder.training.corpora.files`),
    .json FHIR R4 bundle (or a folder of them), .db/.sqlite OMOP CDM; folders: codes.tsv + .txt
    reports, Hugging Face `save_to_disk` output. Database URLs (sqlite:///..., postgresql+psycopg://...)
    are read as OMOP CDM. `options` go to the specific loader.
    """
    name = str(name_or_path)
    if format not in FORMATS:
        raise CorpusError(f"unknown format {format!r} (expected one of {', '.join(FORMATS)})")
    kind = detect_format(name) if format == "auto" else format
    common: dict[str, Any] = {"terminology": terminology, "unknown_codes": unknown_codes}
    if kind == "synth":
        from cimcoder.training.corpora.synth import generate_corpus

        match = _SYNTH.match(name)
        assert match is not None
        return generate_corpus(n=int(match["n"] or 100), seed=int(match["seed"] or 0), name=name)
    if kind == "text-folder":
        from cimcoder.training.corpora.textdir import load_text_folder

        path = shipped_path(name) if name in SHIPPED else Path(name)
        return load_text_folder(path, name=name, **common, **options)
    if kind in ("jsonl", "csv", "parquet"):
        from cimcoder.training.corpora import files

        loader = {"jsonl": files.load_jsonl, "csv": files.load_csv, "parquet": files.load_parquet}[kind]
        return loader(name, **common, **options)
    if kind == "hf":
        from cimcoder.training.corpora.hf import load_hf

        return load_hf(name, **common, **options)
    if kind == "omop":
        from cimcoder.training.corpora.omop import load_omop

        return load_omop(name, **common, **options)
    if kind == "fhir":
        from cimcoder.training.corpora.fhir import load_fhir

        return load_fhir(name, **common, **options)
    raise CorpusError(f"no loader for format {kind!r}")
