"""The label space a model scores: which codes, in which terminology, how often seen in training.

It travels with the model as `labels.json` (like `id2label` in a Hugging Face config), so
inference can refuse a model whose terminology or edition does not match.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cimcoder.errors import CimcoderError
from cimcoder.run_folder import LABELS_FILE, read_json, write_json_atomic

logger = logging.getLogger(__name__)

# Frequency bands, from the number of training stays carrying the code. The cut-offs follow
# the medical-coding literature's split of long-tail codes: a code seen >= 10 times is
# "frequent", 1-9 times "rare", never seen "unseen" (only reachable through label text).
FREQUENT_MIN_COUNT = 10
RARE_MIN_COUNT = 1

Band = Literal["frequent", "rare", "unseen"]


class LabelSpaceError(CimcoderError):
    """A label space file is missing, malformed, or does not match what is expected."""


@dataclass
class LabelSpace:
    """Ordered codes scored by a model, plus their training frequencies.

    `codes[i]` is the label of output column `i`.
    """

    terminology: Literal["cim10", "cim11"]
    edition: str | None
    codes: list[str]
    train_counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(set(self.codes)) != len(self.codes):
            dupes = sorted(c for c, n in Counter(self.codes).items() if n > 1)
            raise LabelSpaceError(f"duplicate codes in the label space: {dupes[:10]}")
        self._index = {code: i for i, code in enumerate(self.codes)}

    def __len__(self) -> int:
        return len(self.codes)

    def __contains__(self, code: object) -> bool:
        return code in self._index

    def index(self, code: str) -> int:
        """Column of `code`; raises LabelSpaceError when the code is not in the space."""
        try:
            return self._index[code]
        except KeyError:
            raise LabelSpaceError(f"code {code!r} is not in the label space") from None

    def count(self, code: str) -> int:
        return int(self.train_counts.get(code, 0))

    def band(self, code: str) -> Band:
        """'frequent' (>= 10 training stays), 'rare' (1-9) or 'unseen' (0)."""
        n = self.count(code)
        if n >= FREQUENT_MIN_COUNT:
            return "frequent"
        if n >= RARE_MIN_COUNT:
            return "rare"
        return "unseen"

    def bands(self) -> list[Band]:
        """Band of each column, in label order."""
        return [self.band(c) for c in self.codes]

    def encode(self, code_sets: Iterable[Iterable[str]]) -> list[list[int]]:
        """Multi-hot rows (lists of 0/1); codes outside the space are dropped (counted in log)."""
        rows: list[list[int]] = []
        dropped = 0
        for codes in code_sets:
            row = [0] * len(self.codes)
            for code in codes:
                i = self._index.get(code)
                if i is None:
                    dropped += 1
                else:
                    row[i] = 1
            rows.append(row)
        if dropped:
            logger.info("%d gold code occurrences are outside the label space", dropped)
        return rows

    @classmethod
    def from_code_sets(
        cls,
        code_sets: Sequence[Iterable[str]],
        *,
        terminology: Literal["cim10", "cim11"] = "cim10",
        edition: str | None = None,
        min_count: int = 1,
        extra_codes: Iterable[str] = (),
    ) -> LabelSpace:
        """Label space of the codes seen at least `min_count` times, plus `extra_codes`.

        Seen codes come first, most frequent first (ties by code) so the order is stable;
        `extra_codes` (e.g. the whole terminology, for zero-shot) follow, sorted.
        """
        counts: Counter[str] = Counter()
        for codes in code_sets:
            counts.update(set(codes))
        kept = sorted((c for c, n in counts.items() if n >= min_count), key=lambda c: (-counts[c], c))
        kept_set = set(kept)
        extras = sorted({c for c in extra_codes if c not in kept_set})
        return cls(
            terminology=terminology,
            edition=edition,
            codes=kept + extras,
            train_counts={c: counts[c] for c in sorted(counts)},
        )

    def to_dict(self) -> dict:
        return {
            "terminology": self.terminology,
            "edition": self.edition,
            "codes": list(self.codes),
            "train_counts": dict(self.train_counts),
        }

    def save(self, run_dir: str | Path) -> Path:
        return write_json_atomic(Path(run_dir) / LABELS_FILE, self.to_dict())

    @classmethod
    def load(cls, run_dir_or_file: str | Path) -> LabelSpace:
        path = Path(run_dir_or_file)
        if path.is_dir():
            path = path / LABELS_FILE
        if not path.is_file():
            raise LabelSpaceError(f"no label space file at {path}")
        try:
            data = read_json(path)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LabelSpaceError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise LabelSpaceError(f"{path} must hold a JSON object, not {type(data).__name__}")
        missing = {"terminology", "codes"} - set(data)
        if missing:
            raise LabelSpaceError(f"{path} lacks {sorted(missing)}")
        if data["terminology"] not in ("cim10", "cim11"):
            raise LabelSpaceError(f"{path}: unknown terminology {data['terminology']!r}")
        return cls(
            terminology=data["terminology"],
            edition=data.get("edition"),
            codes=[str(c) for c in data["codes"]],
            train_counts={str(k): int(v) for k, v in (data.get("train_counts") or {}).items()},
        )


def describe_codes(
    codes: Sequence[str],
    terminology: Literal["cim10", "cim11"],
    field_name: Literal["long_label", "label"] = "long_label",
) -> list[str]:
    """French text of each code from the terminology (the code itself when unknown).

    Used to initialise label representations from label text, so rare and unseen codes start
    from what their label means rather than from noise.
    """
    try:
        from cimcoder import terminologies
    except ImportError:  # pragma: no cover - terminologies is part of the package
        return list(codes)
    loader = getattr(terminologies, "load_cim10" if terminology == "cim10" else "load_cim11", None)
    if loader is None:
        logger.warning("terminology %s is not available; label texts fall back to codes", terminology)
        return list(codes)
    term = loader()
    texts: list[str] = []
    missing = 0
    for code in codes:
        concept = term.get(code)
        text = None
        if concept is not None:
            text = getattr(concept, field_name, None) or getattr(concept, "label", None)
        if not text:
            missing += 1
            text = code
        texts.append(str(text))
    if missing:
        logger.info("%d of %d codes have no %s label text", missing, len(codes), terminology)
    return texts
