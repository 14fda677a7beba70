"""Where the shipped data sets live.

Looked up in order: the `CIMCODER_DATA_DIR` environment variable; `data/` at the root of a
source checkout (next to `training/`); `<sys.prefix>/share/cimcoder/data` (where a wheel built
with the data files installs them). Nothing reads `../shared`: a fresh clone is self-contained.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cimcoder.training.corpora.errors import CorpusError

ENV_VAR = "CIMCODER_DATA_DIR"
SHIPPED = {
    "codiesp-fr/train": "codiesp-fr/train",
    "codiesp-fr/dev": "codiesp-fr/dev",
}


def candidate_data_dirs() -> list[Path]:
    dirs: list[Path] = []
    env = os.environ.get(ENV_VAR)
    if env:
        dirs.append(Path(env).expanduser())
    # training/corpora/paths.py -> repo root is two folders above the package.
    dirs.append(Path(__file__).resolve().parents[2] / "data")
    dirs.append(Path(sys.prefix) / "share" / "cimcoder" / "data")
    return dirs


def data_dir() -> Path:
    """The first existing data folder; CorpusError if none."""
    for candidate in candidate_data_dirs():
        if candidate.is_dir():
            return candidate
    tried = ", ".join(str(d) for d in candidate_data_dirs())
    raise CorpusError(f"no cimcoder data folder found (tried {tried}); set {ENV_VAR}")


def shipped_path(name: str) -> Path:
    """Folder of a shipped data set such as 'codiesp-fr/dev'."""
    if name not in SHIPPED:
        known = ", ".join(sorted(SHIPPED))
        raise CorpusError(f"unknown shipped data set {name!r} (known: {known})")
    for base in candidate_data_dirs():
        path = base / SHIPPED[name]
        if path.is_dir():
            return path
    tried = ", ".join(str(d) for d in candidate_data_dirs())
    raise CorpusError(f"shipped data set {name!r} not found under {tried}; set {ENV_VAR}")
