"""Coded stays: one schema, loaders, shipped data sets, splits.

Nothing here touches a file or the terminology at import time.
"""

from cimcoder.training.corpora.errors import CorpusError
from cimcoder.training.corpora.load import detect_format, load_dataset
from cimcoder.training.corpora.schema import (
    ROLES,
    CodeIssue,
    Corpus,
    Diagnosis,
    Document,
    LoadReport,
    Role,
    SkippedRecord,
    Stay,
    StayContext,
)
from cimcoder.training.corpora.splits import split

__all__ = [
    "ROLES",
    "CodeIssue",
    "Corpus",
    "CorpusError",
    "Diagnosis",
    "Document",
    "LoadReport",
    "Role",
    "SkippedRecord",
    "Stay",
    "StayContext",
    "detect_format",
    "load_dataset",
    "split",
]
