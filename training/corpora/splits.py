"""Deterministic splits, grouped by patient.

Every stay of a patient lands in the same split (a stay without `patient_id` is its own
group), so that a model never sees a patient at training time that it is evaluated on.

- "stratified" (default): iterative stratification for multi-label data (Sechidis, Tsoumakas
  and Vlahavas, 2011) applied to patient groups: the rarest label is placed first, each group
  goes to the split that most lacks that label;
- "random": shuffled groups cut at the fractions;
- "date": groups ordered by their first document date, the earliest in the first split.

The result depends only on the stays and the seed, not on the input order.
"""

from __future__ import annotations

import datetime
import random
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Literal

from cimcoder.training.corpora.errors import CorpusError
from cimcoder.training.corpora.schema import Corpus, LoadReport, Stay

SplitMethod = Literal["stratified", "random", "date"]
DEFAULT_FRACTIONS: Mapping[str, float] = {"train": 0.8, "dev": 0.1, "test": 0.1}


def _groups(stays: Sequence[Stay]) -> dict[str, list[Stay]]:
    groups: dict[str, list[Stay]] = defaultdict(list)
    for stay in stays:
        key = f"patient:{stay.patient_id}" if stay.patient_id is not None else f"stay:{stay.id}"
        groups[key].append(stay)
    return dict(sorted(groups.items()))


def _check_fractions(fractions: Mapping[str, float]) -> dict[str, float]:
    if not fractions:
        raise CorpusError("split fractions are empty")
    if any(value < 0 for value in fractions.values()):
        raise CorpusError(f"split fractions must be >= 0: {dict(fractions)}")
    total = sum(fractions.values())
    if total <= 0:
        raise CorpusError(f"split fractions must sum to more than 0: {dict(fractions)}")
    return {name: value / total for name, value in fractions.items()}


def _cut(keys: list[str], groups: dict[str, list[Stay]], fractions: dict[str, float]) -> dict[str, str]:
    """Assign ordered groups to splits in turn, up to each split's share of stays."""
    total = sum(len(groups[key]) for key in keys)
    names = list(fractions)
    bounds, running = [], 0.0
    for name in names:
        running += fractions[name] * total
        bounds.append(running)
    assignment, done, index = {}, 0, 0
    for key in keys:
        # A group goes to the split whose bound its middle falls under.
        middle = done + len(groups[key]) / 2
        while index < len(names) - 1 and middle > bounds[index]:
            index += 1
        assignment[key] = names[index]
        done += len(groups[key])
    return assignment


def _stratify(groups: dict[str, list[Stay]], fractions: dict[str, float], rng: random.Random) -> dict[str, str]:
    keys = list(groups)
    rng.shuffle(keys)
    labels = {key: Counter(code for stay in groups[key] for code in stay.codes) for key in keys}
    sizes = {key: len(groups[key]) for key in keys}
    label_groups: dict[str, list[str]] = defaultdict(list)
    remaining: Counter[str] = Counter()
    for key in keys:
        for code, count in labels[key].items():
            label_groups[code].append(key)
            remaining[code] += count
    names = list(fractions)
    want_label = {name: {code: fractions[name] * n for code, n in remaining.items()} for name in names}
    want_size = {name: fractions[name] * sum(sizes.values()) for name in names}
    assignment: dict[str, str] = {}

    def assign(key: str, name: str) -> None:
        assignment[key] = name
        want_size[name] -= sizes[key]
        for code, count in labels[key].items():
            want_label[name][code] -= count
            remaining[code] -= count

    while True:
        pending = [(count, code) for code, count in remaining.items() if count > 0]
        if not pending:
            break
        _, code = min(pending)
        for key in label_groups[code]:
            if key in assignment:
                continue
            best = max(
                names,
                key=lambda name: (want_label[name][code], want_size[name], rng.random()),
            )
            assign(key, best)
    for key in keys:  # groups without any code
        if key not in assignment:
            assign(key, max(names, key=lambda name: (want_size[name], rng.random())))
    return assignment


def _group_date(stays: list[Stay]) -> datetime.date | None:
    dates = [stay.date for stay in stays if stay.date is not None]
    return min(dates) if dates else None


def split(
    corpus: Corpus | Sequence[Stay],
    *,
    fractions: Mapping[str, float] | None = None,
    method: SplitMethod = "stratified",
    seed: int = 0,
) -> dict[str, Corpus]:
    """Split stays into named parts (default train/dev/test = 0.8/0.1/0.1), grouped by patient."""
    stays = list(corpus.stays if isinstance(corpus, Corpus) else corpus)
    report = corpus.report if isinstance(corpus, Corpus) else LoadReport(source="(stays)")
    shares = _check_fractions(fractions if fractions is not None else DEFAULT_FRACTIONS)
    ids = Counter(stay.id for stay in stays)
    duplicated = [stay_id for stay_id, n in ids.items() if n > 1]
    if duplicated:
        raise CorpusError(f"cannot split: duplicated stay ids {duplicated[:5]}")
    groups = _groups(stays)
    rng = random.Random(seed)
    if method == "stratified":
        assignment = _stratify(groups, shares, rng)
    elif method == "random":
        keys = list(groups)
        rng.shuffle(keys)
        assignment = _cut(keys, groups, shares)
    elif method == "date":
        dates = {key: _group_date(members) for key, members in groups.items()}
        undated = [key for key, date in dates.items() if date is None]
        if undated:
            raise CorpusError(
                f"cannot split by date: {len(undated)} patient group(s) have no document date "
                f"(first: {undated[0]})"
            )
        keys = sorted(groups, key=lambda key: (dates[key], key))
        assignment = _cut(keys, groups, shares)
    else:
        raise CorpusError(f"unknown split method {method!r} (expected stratified, random or date)")
    parts: dict[str, list[Stay]] = {name: [] for name in shares}
    for stay in stays:
        key = f"patient:{stay.patient_id}" if stay.patient_id is not None else f"stay:{stay.id}"
        parts[assignment[key]].append(stay)
    return {name: Corpus(stays=members, report=report, name=name) for name, members in parts.items()}
