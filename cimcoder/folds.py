"""One way to assign stays to folds, halves, held-out slices and QC draws.

Every assignment in cimcoder is a salted SHA-256 of a key: the stay id, or the patient id where
stays have one (`group_key`: a patient's stays never sit on both sides of a split). The salt
names the purpose ("cimcoder-crossfit-v1", "cimcoder-qc"...), so that the draws of two purposes
are independent, and the same key always lands in the same place on any machine, in any order,
without a random state.
"""

from __future__ import annotations

import hashlib
from typing import Any

_SPAN = 2**64


def draw(salt: str, key: str) -> int:
    """A 64-bit integer fixed by (salt, key)."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big")


def uniform(salt: str, key: str) -> float:
    """A number in [0, 1) fixed by (salt, key): `uniform(...) < rate` samples `rate` of keys."""
    return draw(salt, key) / _SPAN


def fold(salt: str, key: str, n_folds: int) -> int:
    """The fold (0 .. n_folds - 1) of a key."""
    if n_folds < 1:
        raise ValueError(f"n_folds must be at least 1, got {n_folds}")
    return draw(salt, key) % n_folds


def group_key(stay: Any) -> str:
    """What a stay is grouped by: the template it was generated from (near-duplicate texts),
    else its patient when known, else itself."""
    return str(getattr(stay, "template", None) or getattr(stay, "patient_id", None) or stay.id)
