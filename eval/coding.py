"""Coding quality on expert-coded reports: exact codes, the DP, and traps that must not be coded.

A *coded folder* is the format of `crh-dev` (and of a hospital's own evaluation set):

    text/<doc_id>.txt    one report per file, UTF-8; the file stem is the doc_id
    gold.tsv             doc_id, code, role (DP / DR / DAS): the expert coding
    must_not.tsv         doc_id, code, reason (optional): traps, codes that must NOT be coded

`load_coded_folder` reads it; `coding_metrics` compares it with ranked predictions, given per
report as (code, decision, role) in rank order, best first (a `StayPrediction.codes` list
turned into tuples):

- `suggested` (decision auto or review) and `auto`: micro precision / recall / F1 on exact
  codes, each report's codes taken as a set; and how many traps were emitted, on the exact
  code and at category level (the trap's 3-character category is that of an emitted code).
  A trap whose category is also a gold category of its report cannot be judged at category
  level (a right code would count as a trap): it is left out of that count's denominator.
- `dp`: share of reports whose proposed DP (the code with role "DP") is the gold DP, exactly
  and on the first 4 characters of the undotted code (`I50.02` vs `I50.09`: both `I500`).
- `recall_at`: R@k of gold codes in the ranking whatever the decision, averaged over reports
  as `cimcoder.eval.metrics.recall_at_k`; a gold code missing from the list counts as missed.

Codes are compared undotted and upper-case after `normalize_code` (`I50.02`, `I5002`, `i5002`
are one code; `Z99.2+0` is `Z992+0`).
"""

from __future__ import annotations

import contextlib
import csv
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from cimcoder.errors import CimcoderError
from cimcoder.metrics import PRF, micro_prf
from cimcoder.terminologies import normalize_code
from cimcoder.terminologies.errors import InvalidCodeError

logger = logging.getLogger(__name__)

TEXT_DIR = "text"
GOLD_FILE = "gold.tsv"
TRAPS_FILE = "must_not.tsv"
GOLD_HEADER = ("doc_id", "code", "role")
TRAPS_HEADER = ("doc_id", "code", "reason")
GOLD_ROLES = ("DP", "DR", "DAS")
SUGGESTED = frozenset({"auto", "review"})
AUTO = frozenset({"auto"})
RECALL_KS = (5, 10, 30)


class CodedFolderError(CimcoderError):
    """A coded folder (text/, gold.tsv, must_not.tsv) is missing or malformed."""


class CodingInputError(CimcoderError):
    """Predictions do not match the reports they are measured on."""


class GoldCode(NamedTuple):
    code: str  # canonical spelling (normalize_code), e.g. "I50.02"
    role: str  # DP, DR or DAS


class Trap(NamedTuple):
    code: str  # canonical spelling
    reason: str  # negated, ruled_out, suspected, family, past_history, ...


class PredictedCode(NamedTuple):
    code: str
    decision: str  # auto, review or reject
    role: str  # DP or DAS


@dataclass(frozen=True)
class CodedReport:
    """One report with its expert coding and its traps."""

    doc_id: str
    text: str
    gold: tuple[GoldCode, ...]
    traps: tuple[Trap, ...] = ()

    @property
    def dp(self) -> str | None:
        return next((g.code for g in self.gold if g.role == "DP"), None)


# --------------------------------------------------------------------------- codes


def code_key(code: str) -> str:
    """The spelling codes are compared in: normalised, undotted, upper-case (`I5002`)."""
    with contextlib.suppress(InvalidCodeError):  # a code of another form still equals itself
        code = normalize_code(code)
    return code.replace(".", "").strip().upper()


def category(code: str) -> str:
    """The 3-character category of a code (`I50.02` -> `I50`)."""
    return code_key(code)[:3]


# --------------------------------------------------------------------------- loading


def _read_tsv(path: Path, header: tuple[str, ...]) -> Iterable[tuple[int, list[str]]]:
    """(line number, fields) of each non-blank line after a checked header."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as exc:
        raise CodedFolderError(f"{path} is not UTF-8 text ({exc.reason})") from None
    if not rows or tuple(f.strip() for f in rows[0]) != header:
        expected = "\t".join(header)
        found = repr("\t".join(rows[0])) if rows else "an empty file"
        raise CodedFolderError(
            f"{path}: the first line must be the tab-separated header {expected!r}, found {found}"
        )
    for number, row in enumerate(rows[1:], start=2):
        fields = [f.strip() for f in row]
        if not any(fields):
            continue
        if len(fields) != len(header):
            raise CodedFolderError(
                f"{path}:{number}: expected {len(header)} tab-separated fields "
                f"({', '.join(header)}), found {len(fields)}"
            )
        if not all(fields):
            raise CodedFolderError(f"{path}:{number}: empty field in {row!r}")
        yield number, fields


def _canonical(raw: str, where: str) -> str:
    try:
        return normalize_code(raw)
    except InvalidCodeError as exc:
        raise CodedFolderError(f"{where}: {exc}") from None


def _read_texts(folder: Path) -> dict[str, str]:
    text_dir = folder / TEXT_DIR
    if not text_dir.is_dir():
        raise CodedFolderError(f"{folder} has no {TEXT_DIR}/ folder of reports (<doc_id>.txt)")
    texts: dict[str, str] = {}
    for path in sorted(text_dir.glob("*.txt")):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise CodedFolderError(f"{path} is not UTF-8 text ({exc.reason})") from None
        if not text.strip():
            raise CodedFolderError(f"{path} is empty: every report needs a text")
        texts[path.stem] = text
    if not texts:
        raise CodedFolderError(f"{text_dir} holds no report (<doc_id>.txt)")
    return texts


def _read_gold(path: Path, texts: Mapping[str, str]) -> dict[str, list[GoldCode]]:
    gold: dict[str, list[GoldCode]] = {}
    for number, (doc_id, raw_code, role) in _read_tsv(path, GOLD_HEADER):
        where = f"{path}:{number}"
        if doc_id not in texts:
            raise CodedFolderError(f"{where}: no report {TEXT_DIR}/{doc_id}.txt for {doc_id!r}")
        if role not in GOLD_ROLES:
            raise CodedFolderError(f"{where}: role {role!r} is not one of {', '.join(GOLD_ROLES)}")
        code = _canonical(raw_code, where)
        codes = gold.setdefault(doc_id, [])
        if any(code_key(g.code) == code_key(code) for g in codes):
            raise CodedFolderError(f"{where}: {raw_code} is already coded for {doc_id}")
        if role == "DP" and any(g.role == "DP" for g in codes):
            raise CodedFolderError(f"{where}: {doc_id} already has a DP (one DP per report)")
        codes.append(GoldCode(code, role))
    uncoded = sorted(set(texts) - set(gold))
    if uncoded:
        more = f" (and {len(uncoded) - 5} more)" if len(uncoded) > 5 else ""
        raise CodedFolderError(
            f"{path}: no gold code for {', '.join(uncoded[:5])}{more}: every report in "
            f"{TEXT_DIR}/ needs its coding"
        )
    return gold


def _read_traps(
    path: Path, texts: Mapping[str, str], gold: Mapping[str, list[GoldCode]]
) -> dict[str, list[Trap]]:
    traps: dict[str, list[Trap]] = {}
    if not path.is_file():
        return traps
    for number, (doc_id, raw_code, reason) in _read_tsv(path, TRAPS_HEADER):
        where = f"{path}:{number}"
        if doc_id not in texts:
            raise CodedFolderError(f"{where}: no report {TEXT_DIR}/{doc_id}.txt for {doc_id!r}")
        code = _canonical(raw_code, where)
        if any(code_key(g.code) == code_key(code) for g in gold[doc_id]):
            raise CodedFolderError(
                f"{where}: {raw_code} is both a gold code and a trap of {doc_id}"
            )
        listed = traps.setdefault(doc_id, [])
        if any(code_key(t.code) == code_key(code) for t in listed):
            raise CodedFolderError(f"{where}: {raw_code} is already a trap of {doc_id}")
        listed.append(Trap(code, reason))
    return traps


def load_coded_folder(path: str | Path) -> list[CodedReport]:
    """The reports of a coded folder (text/, gold.tsv, optional must_not.tsv), by doc_id."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise CodedFolderError(f"coded folder not found: {folder}")
    gold_path = folder / GOLD_FILE
    if not gold_path.is_file():
        raise CodedFolderError(f"{folder} has no {GOLD_FILE} (doc_id, code, role)")
    texts = _read_texts(folder)
    gold = _read_gold(gold_path, texts)
    traps = _read_traps(folder / TRAPS_FILE, texts, gold)
    return [
        CodedReport(doc_id, text, tuple(gold[doc_id]), tuple(traps.get(doc_id, ())))
        for doc_id, text in texts.items()
    ]


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class TrapCount:
    """Traps emitted, on the exact code and at category level."""

    traps: int
    exact: int
    category: int
    category_traps: int  # traps judgeable at category level (no gold code of that category)

    @property
    def exact_rate(self) -> float:
        return self.exact / self.traps if self.traps else 0.0

    @property
    def category_rate(self) -> float:
        return self.category / self.category_traps if self.category_traps else 0.0


@dataclass(frozen=True)
class TrapHits:
    total: TrapCount
    by_reason: Mapping[str, TrapCount]


@dataclass(frozen=True)
class LevelMetrics(PRF):
    """The codes emitted at one decision level (suggested = auto or review; auto alone): micro
    precision / recall / F1 with their counts, how many codes, which traps."""

    emitted: int
    traps: TrapHits


@dataclass(frozen=True)
class DpAccuracy:
    """Reports whose proposed DP is the gold DP, over reports with a gold DP."""

    exact: float
    four_chars: float
    hits_exact: int
    hits_four_chars: int
    reports: int


@dataclass(frozen=True)
class CodingMetrics:
    reports: int
    gold_codes: int
    traps: int
    suggested: LevelMetrics
    auto: LevelMetrics
    dp: DpAccuracy
    recall_at: Mapping[int, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for level in ("suggested", "auto"):
            traps = getattr(self, level).traps
            data[level]["traps"] = {
                "total": _trap_dict(traps.total),
                "by_reason": {r: _trap_dict(c) for r, c in traps.by_reason.items()},
            }
        data["recall_at"] = {str(k): v for k, v in self.recall_at.items()}
        return data


def _trap_dict(count: TrapCount) -> dict[str, float | int]:
    return {**asdict(count), "exact_rate": count.exact_rate, "category_rate": count.category_rate}


def _as_predicted(items: Sequence[Any]) -> list[PredictedCode]:
    return [PredictedCode(*item) for item in items]


def _level_prf(gold: list[set[str]], emitted: list[set[str]]) -> PRF:
    vocab = {code: j for j, code in enumerate(sorted(set().union(*gold, *emitted)))}
    y = np.zeros((len(gold), len(vocab)), dtype=bool)
    d = np.zeros_like(y)
    for i, (g, e) in enumerate(zip(gold, emitted, strict=True)):
        y[i, [vocab[c] for c in g]] = True
        d[i, [vocab[c] for c in e]] = True
    return micro_prf(y, d)


def _trap_hits(reports: Sequence[CodedReport], emitted: list[set[str]]) -> TrapHits:
    traps: Counter[str] = Counter()
    exact: Counter[str] = Counter()
    cat: Counter[str] = Counter()
    judgeable: Counter[str] = Counter()
    for report, codes in zip(reports, emitted, strict=True):
        gold_categories = {category(g.code) for g in report.gold}
        emitted_categories = {c[:3] for c in codes}
        for trap in report.traps:
            traps[trap.reason] += 1
            exact[trap.reason] += code_key(trap.code) in codes
            if category(trap.code) not in gold_categories:
                judgeable[trap.reason] += 1
                cat[trap.reason] += category(trap.code) in emitted_categories

    def count(reasons: Iterable[str]) -> TrapCount:
        reasons = list(reasons)
        return TrapCount(
            traps=sum(traps[r] for r in reasons),
            exact=sum(exact[r] for r in reasons),
            category=sum(cat[r] for r in reasons),
            category_traps=sum(judgeable[r] for r in reasons),
        )

    return TrapHits(count(traps), {reason: count([reason]) for reason in sorted(traps)})


def _level(
    reports: Sequence[CodedReport],
    predictions: Sequence[list[PredictedCode]],
    gold: list[set[str]],
    decisions: frozenset[str],
) -> LevelMetrics:
    emitted = [
        {code_key(p.code) for p in preds if p.decision in decisions} for preds in predictions
    ]
    prf = _level_prf(gold, emitted)
    return LevelMetrics(**asdict(prf), emitted=sum(map(len, emitted)), traps=_trap_hits(reports, emitted))


def _dp_accuracy(
    reports: Sequence[CodedReport], predictions: Sequence[list[PredictedCode]]
) -> DpAccuracy:
    counted = hits_exact = hits_four = 0
    for report, preds in zip(reports, predictions, strict=True):
        if report.dp is None:
            continue
        counted += 1
        proposed = next((p.code for p in preds if p.role == "DP"), None)
        if proposed is None:
            continue
        gold_key, proposed_key = code_key(report.dp), code_key(proposed)
        hits_exact += proposed_key == gold_key
        hits_four += proposed_key[:4] == gold_key[:4]
    return DpAccuracy(
        exact=hits_exact / counted if counted else 0.0,
        four_chars=hits_four / counted if counted else 0.0,
        hits_exact=hits_exact,
        hits_four_chars=hits_four,
        reports=counted,
    )


def _recall_at(predictions: Sequence[list[PredictedCode]], gold: list[set[str]], k: int) -> float:
    if k < 1:
        raise CodingInputError(f"recall@k needs k >= 1, got {k}")
    recalls = []
    for preds, g in zip(predictions, gold, strict=True):
        if not g:
            continue
        top = {code_key(p.code) for p in preds[:k]}
        recalls.append(len(g & top) / len(g))
    return float(np.mean(recalls)) if recalls else 0.0


def coding_metrics(
    reports: Sequence[CodedReport],
    predictions: Sequence[Sequence[Any]],
    *,
    ks: Sequence[int] = RECALL_KS,
) -> CodingMetrics:
    """Compare ranked predictions, one list of (code, decision, role) per report, in order."""
    if len(predictions) != len(reports):
        raise CodingInputError(
            f"{len(predictions)} prediction lists for {len(reports)} reports: give one per report"
        )
    preds = [_as_predicted(items) for items in predictions]
    for report, items in zip(reports, preds, strict=True):
        bad = sorted({p.decision for p in items} - {"auto", "review", "reject"})
        if bad:
            raise CodingInputError(f"{report.doc_id}: unknown decision(s) {', '.join(bad)}")
    gold = [{code_key(g.code) for g in report.gold} for report in reports]
    return CodingMetrics(
        reports=len(reports),
        gold_codes=sum(map(len, gold)),
        traps=sum(len(report.traps) for report in reports),
        suggested=_level(reports, preds, gold, SUGGESTED),
        auto=_level(reports, preds, gold, AUTO),
        dp=_dp_accuracy(reports, preds),
        recall_at={k: _recall_at(preds, gold, k) for k in ks},
    )
