"""A local Hugging Face `datasets` folder (`Dataset.save_to_disk` output).

Rows use the flat or full shape of `cimcoder.training.corpora.files` (columns `id`, `text`,
`codes`/`dp`/`dr`/`das`, ... or `id`, `documents`, `diagnoses`, ...). A `DatasetDict` folder
holds one sub-folder per split: pass that sub-folder. Nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

from cimcoder.training.corpora.codes import TerminologyName, UnknownPolicy
from cimcoder.training.corpora.errors import CorpusError
from cimcoder.training.corpora.files import FLAT_FIELDS, FULL_FIELDS, RecordReader
from cimcoder.training.corpora.schema import Corpus, LoadReport


def load_hf(
    path: str | Path,
    *,
    terminology: TerminologyName = "cim10",
    unknown_codes: UnknownPolicy = "drop",
    name: str | None = None,
) -> Corpus:
    """Rows of a `save_to_disk` folder as stays; row numbers (1-based) stand for lines."""
    path = Path(path)
    if (path / "dataset_dict.json").is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise CorpusError(
            f"{path}: a DatasetDict with splits {', '.join(splits)}; pass one of them, "
            f"e.g. {path / (splits[0] if splits else 'train')}"
        )
    if not path.is_dir():
        raise CorpusError(f"{path}: no such folder")
    import datasets

    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise CorpusError(f"{path}: not a Hugging Face save_to_disk folder: {exc}") from None
    if not isinstance(dataset, datasets.Dataset):
        raise CorpusError(f"{path}: expected a Dataset, got {type(dataset).__name__}")
    unknown = [c for c in dataset.column_names if c not in FLAT_FIELDS | FULL_FIELDS]
    if unknown:
        raise CorpusError(
            f"{path}: unknown column(s) {', '.join(map(repr, unknown))}; expected the flat "
            f"columns ({', '.join(sorted(FLAT_FIELDS))}) or the Stay fields"
        )
    if "id" not in dataset.column_names:
        raise CorpusError(f"{path}: missing column 'id'")
    report = LoadReport(source=str(path))
    reader = RecordReader(report, terminology, unknown_codes, file=str(path))
    for row_number, row in enumerate(dataset, start=1):
        reader.add(dict(row), row_number)
    if report.records_read == 0:
        raise CorpusError(f"{path}: empty data set")
    return reader.corpus(name or path.name)
