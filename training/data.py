"""What a run trains and validates on: the splits of its config, their codes in the target
terminology, and the label space.

`prepare_data(config)` is shared by the gradient loop (`cimcoder.training.trainer`) and the
models fitted in one call (`cimcoder.training.baselines.fit_baseline`), so every model of a
comparison sees the same stays, validation split and label space.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cimcoder import folds
from cimcoder.errors import CimcoderError
from cimcoder.folds import group_key
from cimcoder.training.labels import LabelSpace

if TYPE_CHECKING:
    from cimcoder.training.config import RunConfig


class TrainingError(CimcoderError):
    """Training cannot start or continue (bad data, incompatible run folder, ...)."""


@dataclass
class Example:
    id: str
    text: str
    codes: list[str]
    principal: str | None = None  # the DP, where the source records roles (hospital exports)
    group: str = ""  # `folds.group_key`: stays never split across folds (patient, template)


@dataclass
class TrainingData:
    train: list[Example]
    validation: list[Example]
    validation_source: str
    label_space: LabelSpace
    notes: dict[str, Any] = field(default_factory=dict)


def _load_stays(name: str) -> list[Any]:
    from cimcoder.training.corpora import load_dataset

    stays = list(load_dataset(name).stays)
    if not stays:
        raise TrainingError(f"data set {name!r} holds no stay")
    return stays


def _to_cim11(code_sets: list[list[str]]) -> tuple[list[list[str]], dict[str, int]]:
    """Gold CIM-10 codes carried over to CIM-11 through the WHO crosswalk."""
    try:
        from cimcoder.terminologies import load_crosswalk
    except ImportError:
        raise TrainingError(
            "data.labels.terminology=cim11 needs the CIM-10 -> CIM-11 crosswalk "
            "(cimcoder.terminologies.load_crosswalk), which is not available"
        ) from None
    crosswalk = load_crosswalk()
    unmapped = 0
    total = 0
    out: list[list[str]] = []
    for codes in code_sets:
        mapped: list[str] = []
        for code in codes:
            total += 1
            targets = crosswalk.to_cim11(code) or []
            if not targets:
                unmapped += 1
            for t in targets:
                c = getattr(t, "code", t)
                if c and c not in mapped:
                    mapped.append(str(c))
        out.append(mapped)
    return out, {"cim10_codes": total, "cim10_codes_without_cim11_target": unmapped}


def _holdout(stays: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Deterministic patient-grouped slice of the training stays."""

    def key(stay: Any) -> float:
        return folds.uniform(f"cimcoder-holdout-{seed}", group_key(stay))

    train = [s for s in stays if key(s) >= fraction]
    held = [s for s in stays if key(s) < fraction]
    if not held or not train:
        raise TrainingError("the training set is too small to hold out a validation slice")
    return train, held


def _principal(stay: Any, codes: list[str]) -> str | None:
    # Generated stays teach the DP of their templates ("Au total : [DP]."), not a hospital's:
    # learned from them, the DP model picked 16 right DPs of 60 hand-written hospital reports
    # where the ATIH guide's logic picks 26 (data/hospital-dev). Only real coded stays teach it.
    if getattr(stay, "synthetic", False):
        return None
    dps = [d.code for d in getattr(stay, "diagnoses", []) if d.role == "DP"]
    return dps[0] if dps and dps[0] in codes else None  # CIM-11 targets: no DP kept


def _examples(stays: list[Any], code_sets: list[list[str]]) -> list[Example]:
    return [
        Example(id=s.id, text=s.text, codes=c, principal=_principal(s, c), group=group_key(s))
        for s, c in zip(stays, code_sets, strict=True)
    ]


def prepare_data(config: RunConfig) -> TrainingData:
    """Load the splits, map codes to the target terminology, build the label space."""
    data = config.data
    stays = _load_stays(data.train)
    if data.max_train_stays:
        stays = stays[: data.max_train_stays]
    for extra_name in data.extra_train:
        if extra_name in (data.dev, data.train):
            raise TrainingError(f"data.extra_train names {extra_name!r}, already train or dev")
        stays = stays + _load_stays(extra_name)
    if data.validation == "train_holdout":
        stays, held = _holdout(stays, data.holdout_fraction, config.training.seed)
        source = f"{data.train} (held-out {data.holdout_fraction:.0%})"
    else:
        assert data.dev is not None
        held = _load_stays(data.dev)
        source = data.dev
    train_codes = [list(s.codes) for s in stays]
    val_codes = [list(s.codes) for s in held]
    notes: dict[str, Any] = {}
    terminology = data.labels.terminology
    if terminology == "cim11":
        train_codes, notes["train_crosswalk"] = _to_cim11(train_codes)
        val_codes, notes["validation_crosswalk"] = _to_cim11(val_codes)
    extra: list[str] = []
    edition = None
    try:
        from cimcoder.terminologies import load_terminology

        term = load_terminology(terminology)
        edition = getattr(term, "edition", None)
        if data.labels.include == "train+terminology":
            extra = list(term.codes())
            if data.labels.max_extra_codes is not None:
                seen = {c for codes in train_codes for c in codes}
                extra = [c for c in extra if c not in seen][: data.labels.max_extra_codes]
        elif data.labels.include == "train+lexicon":
            extra = lexicon_codes(term)
    except ImportError:
        if data.labels.include == "train+terminology":
            raise TrainingError("include=train+terminology needs cimcoder.terminologies") from None
    label_space = LabelSpace.from_code_sets(
        train_codes,
        terminology=terminology,
        edition=edition,
        min_count=data.labels.min_count,
        extra_codes=extra,
    )
    return TrainingData(
        train=_examples(stays, train_codes),
        validation=_examples(held, val_codes),
        validation_source=source,
        label_space=label_space,
        notes=notes,
    )


def lexicon_codes(term: Any) -> list[str]:
    """Codes of the curated lexicon in `term`'s terminology, with their parents and codable
    children (a mention of "diabète de type 2" may be coded E11.9 by one corpus, E11.98 by
    a DIM), and the codes the mention layer and the predictor derive from them: the
    insulin-treated sibling of a diabetes code (E11.38 -> E11.30) and the CIM-10 combination
    codes (J13, A41.0)."""
    from cimcoder.terminologies.combinations import combinations
    from cimcoder.terminologies.lexicon import load_lexicon
    from cimcoder.training.mentions import insulin_siblings

    # Without labels and CIM-11 titles the lexicon holds the curated entries alone.
    lexicon = load_lexicon(term.name, labels=False, cim11_titles=False)
    curated = {c for e in lexicon.entries for c in e.codes}
    curated |= {code for _, _, code in combinations(term.name).rules}
    out: set[str] = set()
    for code in curated:
        if code not in term:
            continue
        out.add(code)
        out.update(a for a in term.ancestors(code) if "-" not in a and any(ch.isdigit() for ch in a))
        out.update(term.children(code))
    siblings = insulin_siblings(term.name)
    out |= {siblings[c] for c in out if c in siblings}
    return sorted(out)
