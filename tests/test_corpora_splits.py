"""Splits: deterministic, grouped by patient, stratified for multi-label data, or by date."""

from __future__ import annotations

import datetime
from collections import Counter

import pytest

from cimcoder.training.corpora import CorpusError, Diagnosis, Document, Stay, split
from cimcoder.training.corpora.synth import generate_corpus


def _stay(i: int, codes: list[str], patient: str | None = None, date: datetime.date | None = None) -> Stay:
    return Stay(
        id=f"S{i}", patient_id=patient,
        documents=[Document(text=f"Compte rendu {i} : pneumopathie, HTA.", date=date)],
        diagnoses=[Diagnosis(code=c, role="DAS") for c in codes],
    )


def test_patients_never_cross_splits_and_result_is_deterministic() -> None:
    corpus = generate_corpus(600, seed=11)
    parts = split(corpus, seed=1)
    assert sum(len(p) for p in parts.values()) == 600
    owner: dict[str, str] = {}
    for name, part in parts.items():
        for stay in part:
            assert owner.setdefault(stay.patient_id, name) == name
    again = split(list(reversed(corpus.stays)), seed=1)  # input order does not matter
    assert {n: sorted(s.id for s in p) for n, p in parts.items()} == {n: sorted(s.id for s in p) for n, p in again.items()}
    other = split(corpus, seed=2)
    assert sorted(s.id for s in other["test"]) != sorted(s.id for s in parts["test"])


def test_stratified_split_keeps_label_proportions() -> None:
    # 100 stays: J18.9 in 40, I10 in 20, K35.8 in 10 (one stay per patient).
    stays = [_stay(i, [c for c, every in (("J18.9", 5), ("I10", 10), ("K35.8", 20)) if i % 10 < 10 * 2 // every]) for i in range(100)]
    counts = Counter(code for s in stays for code in s.codes)
    assert counts == {"J18.9": 40, "I10": 20, "K35.8": 10}
    parts = split(stays, fractions={"train": 0.5, "test": 0.5}, seed=0)
    assert len(parts["train"]) == len(parts["test"]) == 50
    for code, total in counts.items():
        in_train = sum(code in s.codes for s in parts["train"])
        assert in_train == total / 2, code


def test_random_split_sizes() -> None:
    stays = [_stay(i, ["I10"]) for i in range(200)]
    parts = split(stays, method="random", fractions={"train": 0.8, "dev": 0.1, "test": 0.1})
    assert [len(parts[n]) for n in ("train", "dev", "test")] == [160, 20, 20]


def test_date_split_puts_earliest_stays_first() -> None:
    start = datetime.date(2023, 1, 1)
    stays = [_stay(i, ["I10"], patient=f"P{i}", date=start + datetime.timedelta(days=i)) for i in range(10)]
    parts = split(stays, method="date", fractions={"train": 0.6, "dev": 0.2, "test": 0.2})
    assert [s.id for s in parts["train"]] == [f"S{i}" for i in range(6)]
    assert [s.id for s in parts["test"]] == ["S8", "S9"]
    undated = [*stays, _stay(99, ["I10"], patient="P99")]
    with pytest.raises(CorpusError, match="no document date"):
        split(undated, method="date")


def test_bad_split_arguments() -> None:
    stays = [_stay(1, ["I10"]), _stay(1, ["J18.9"])]
    with pytest.raises(CorpusError, match="duplicated stay ids"):
        split(stays)
    with pytest.raises(CorpusError, match=">= 0"):
        split([_stay(1, [])], fractions={"train": -1, "test": 2})
    with pytest.raises(CorpusError, match="unknown split method"):
        split([_stay(1, [])], method="alphabetical")  # type: ignore[arg-type]
