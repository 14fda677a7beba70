"""A model run folder (`runs/<dataset>/<run_name>/`): its file names, paths and JSON files.

Training writes the folder, `cimcoder calibrate` adds `policy.json`, evaluation writes under
`eval/`, inference and serving read it: every one of them names its files from here, so that a
file name lives in one place. JSON files are written atomically (a temporary file in the same
folder, then `os.replace`): a reader, or a run killed mid-write, sees the old file or the new
one, never half of one. This module imports no area, so any area may use it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.json"
METRICS_FILE = "metrics.json"
POLICY_FILE = "policy.json"
CHECKPOINT_DIR = "checkpoints"
EVAL_DIR = "eval"
# Small files worth browsing next to a run (the MLflow UI); the weights go with the model.
SUMMARY_FILES = (CONFIG_FILE, LABELS_FILE, METRICS_FILE, POLICY_FILE)

JSON_INDENT = 1
TMP_SUFFIX = ".tmp"


def dumps_json(data: Any) -> str:
    """The text of every JSON file of a run folder (UTF-8 kept readable, one-space indent)."""
    return json.dumps(data, ensure_ascii=False, indent=JSON_INDENT)


def write_json_atomic(path: str | Path, data: Any) -> Path:
    """Write `data` as JSON at `path`, all or nothing: the old file stays until the new one is
    complete, and no temporary file is left behind, even when serialising or writing fails."""
    out = Path(path)
    text = dumps_json(data)  # fails (unserialisable data) before anything touches the disk
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + TMP_SUFFIX)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


def read_json(path: str | Path) -> Any:
    """The JSON content of `path` (UTF-8); raises FileNotFoundError or json.JSONDecodeError."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder, and its JSON files read and written the one way."""

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def labels(self) -> Path:
        return self.path / LABELS_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def policy(self) -> Path:
        return self.path / POLICY_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def eval_dir(self) -> Path:
        return self.path / EVAL_DIR

    def has(self, name: str) -> bool:
        """Whether the folder holds the file `name` (e.g. `POLICY_FILE`: is it calibrated?)."""
        return (self.path / name).is_file()

    def is_run(self) -> bool:
        """A model run folder: it holds the resolved config the model is loaded from."""
        return self.has(CONFIG_FILE)

    def read_json(self, name: str) -> Any:
        return read_json(self.path / name)

    def write_json(self, name: str, data: Any) -> Path:
        return write_json_atomic(self.path / name, data)
