"""One assignment of stays to folds, halves, held-out slices and QC draws (cimcoder.folds)."""

from __future__ import annotations

from collections import Counter

import pytest

from cimcoder import folds
from cimcoder.eval.runner import stay_fold, stay_half
from cimcoder.serving.review.workflow import qc_draw
from cimcoder.training.corpora.schema import Document, Stay


def test_draws_are_fixed_by_salt_and_key_and_spread_evenly() -> None:
    keys = [f"sej-{i}" for i in range(4000)]
    assert [folds.fold("s", k, 5) for k in keys] == [folds.fold("s", k, 5) for k in reversed(keys)][::-1]
    counts = Counter(folds.fold("s", k, 5) for k in keys)
    assert sorted(counts) == [0, 1, 2, 3, 4] and min(counts.values()) > 700
    assert all(0.0 <= folds.uniform("s", k) < 1.0 for k in keys)
    share = sum(folds.uniform("s", k) < 0.25 for k in keys) / len(keys)
    assert 0.22 < share < 0.28
    # Another purpose (salt) draws independently.
    same = sum(folds.fold("s", k, 2) == folds.fold("t", k, 2) for k in keys) / len(keys)
    assert 0.45 < same < 0.55
    with pytest.raises(ValueError):
        folds.fold("s", "x", 0)


def test_every_purpose_uses_the_one_draw() -> None:
    assert stay_fold("sej-1", 5) == folds.fold("cimcoder-crossfit-v1", "sej-1", 5)
    assert stay_half("sej-1") == "AB"[folds.fold("cimcoder-calibration-v2", "sej-1", 2)]
    assert qc_draw("sej-1") == folds.uniform("cimcoder-qc", "sej-1")


def test_stays_of_one_patient_share_their_group() -> None:
    doc = [Document(text="Compte rendu.")]
    a, b = Stay(id="s1", patient_id="p9", documents=doc), Stay(id="s2", patient_id="p9", documents=doc)
    alone = Stay(id="s3", documents=doc)
    assert folds.group_key(a) == folds.group_key(b) == "p9" and folds.group_key(alone) == "s3"
