"""On-disk cache of built terminologies (pickle in the user's cache directory).

Keyed by the edition, the hash of the source file and the hash of this package's code,
so a new ATIH file or a new cimcoder never reads a stale entry. Set
`CIMCODER_CACHE_DIR` to move it, `CIMCODER_NO_CACHE=1` to turn it off. The cache only
holds what this package wrote in the user's own directory.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")
# Modules whose code never shapes a pickled table. The key hashes every other module rather
# than a fixed list, which goes stale as soon as a base class moves to a new module.
_NOT_IN_KEY = frozenset({"__init__.py", "cli.py"})


def cache_dir() -> Path | None:
    if os.environ.get("CIMCODER_NO_CACHE", "").strip() not in ("", "0"):
        return None
    explicit = os.environ.get("CIMCODER_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cimcoder" / "terminologies"


def file_digest(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _code_digest() -> str:
    here = Path(__file__).parent
    digest = hashlib.sha256()
    for path in sorted(here.glob("*.py")):
        if path.name not in _NOT_IN_KEY:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def cached(kind: str, key_parts: Iterable[str], build: Callable[[], T]) -> T:
    """`build()`, or its pickled result from an earlier process with the same key."""
    directory = cache_dir()
    if directory is None:
        return build()
    key = hashlib.sha256("\0".join([kind, _code_digest(), *key_parts]).encode()).hexdigest()[:24]
    path = directory / f"{kind}-{key}.pickle"
    if path.is_file():
        try:
            with path.open("rb") as handle:
                value: T = pickle.load(handle)
            logger.debug("loaded %s from cache %s", kind, path)
            return value
        except Exception as exc:  # a truncated or foreign file: rebuild it
            logger.warning("ignoring unreadable terminology cache %s (%s)", path, exc)
    value = build()
    temporary: str | None = None
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=f".{kind}-", delete=False) as out:
            temporary = out.name
            pickle.dump(value, out, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(temporary, path)  # atomic: a concurrent reader never sees half a file
    except (OSError, pickle.PicklingError) as exc:
        logger.warning("cannot write the terminology cache in %s (%s)", directory, exc)
        if temporary is not None and os.path.exists(temporary):
            os.unlink(temporary)
    return value
