"""Synthetic scored stays with a known score/correctness relation, shared by the eval tests."""

from __future__ import annotations

import numpy as np

# Frequent codes of a cardiology / diabetology / pneumology ward, then rarer digestive codes.
FREQUENT = ["I10", "I50.0", "I50.1", "I48.2", "E11.9", "E66.0", "J13", "J18.9", "J44.1", "N18.3"]
RARE = [f"K{i:02d}.0" for i in range(20, 60)]
LABELS = FREQUENT + RARE


def synthetic_scores(
    n: int, seed: int, *, power: float = 0.4
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Gold [n, L] and over-confident scores (true probability ** power) of n stays."""
    rng = np.random.default_rng(seed)
    L = len(LABELS)
    rates = np.r_[np.full(len(FREQUENT), 0.2), np.full(len(RARE), 0.02)]
    y = rng.random((n, L)) < rates
    z = np.where(y, rng.normal(1.5, 1.2, (n, L)), rng.normal(-2.5, 1.2, (n, L)))
    scores = (1.0 / (1.0 + np.exp(-z))) ** power
    return y, scores, list(LABELS)
