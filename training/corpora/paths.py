"""Where the shipped data sets live.

Looked up in order: the `CIMCODER_DATASETS_DIR` environment variable; `data/` at the root of a
source checkout (next to `training/`); `<sys.prefix>/share/cimcoder/data` (where a wheel built
with the data files installs them). Nothing reads `../shared`: a fresh clone is self-contained.

`CIMCODER_DATA_DIR` named both this folder and the service's state folder; it is still read
here, with a deprecation warning, when `CIMCODER_DATASETS_DIR` is unset (until the next
release). The service's state folder is `CIMCODER_STATE_DIR` (`cimcoder.serving.settings`).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import warnings
from pathlib import Path

from cimcoder.training.corpora.errors import CorpusError

logger = logging.getLogger(__name__)

ENV_VAR = "CIMCODER_DATASETS_DIR"
DEPRECATED_ENV_VAR = "CIMCODER_DATA_DIR"
SHIPPED = {
    "codiesp-fr/train": "codiesp-fr/train",
    "codiesp-fr/dev": "codiesp-fr/dev",
}


def _deprecation_message() -> str:
    return (
        f"{DEPRECATED_ENV_VAR} is deprecated: set {ENV_VAR} for the data sets (and "
        f"CIMCODER_STATE_DIR for the service's state folder); {DEPRECATED_ENV_VAR} will be "
        "ignored in the next release"
    )


@functools.cache
def _log_deprecated_once(value: str) -> None:
    logger.warning("%s (read as the data set folder: %s)", _deprecation_message(), value)


def env_data_dir() -> Path | None:
    """`$CIMCODER_DATASETS_DIR`, else the deprecated `$CIMCODER_DATA_DIR` (warned), else None."""
    value = os.environ.get(ENV_VAR)
    if value:
        return Path(value).expanduser()
    old = os.environ.get(DEPRECATED_ENV_VAR)
    if not old:
        return None
    warnings.warn(_deprecation_message(), DeprecationWarning, stacklevel=2)
    _log_deprecated_once(old)
    return Path(old).expanduser()


def candidate_data_dirs() -> list[Path]:
    dirs: list[Path] = []
    env = env_data_dir()
    if env is not None:
        dirs.append(env)
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
