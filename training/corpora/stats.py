"""Descriptive statistics of a corpus (`cimcoder data stats`).

Tokens are whitespace-separated words (`str.split()`), not model tokens.
Frequency bands count each code's number of stays in this corpus.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

from cimcoder.training.corpora.schema import ROLES, Corpus

# (name, lowest count, highest count): stays per code.
FREQUENCY_BANDS: tuple[tuple[str, int, int | None], ...] = (
    ("frequent (>=50 stays)", 50, None),
    ("common (10-49 stays)", 10, 49),
    ("rare (2-9 stays)", 2, 9),
    ("singleton (1 stay)", 1, 1),
)


def _distribution(values: list[int]) -> dict[str, float]:
    if not values:
        return {"total": 0, "mean": 0.0, "min": 0, "median": 0.0, "max": 0}
    return {
        "total": sum(values),
        "mean": round(statistics.fmean(values), 2),
        "min": min(values),
        "median": float(statistics.median(values)),
        "max": max(values),
    }


def corpus_stats(corpus: Corpus, top: int = 10) -> dict[str, Any]:
    """Counts of stays, documents, tokens, codes, roles and frequency bands."""
    stays = corpus.stays
    tokens = [sum(len(doc.text.split()) for doc in stay.documents) for stay in stays]
    per_stay = [len(stay.codes) for stay in stays]
    code_stays: Counter[str] = Counter(code for stay in stays for code in stay.codes)
    roles: Counter[str] = Counter(diag.role for stay in stays for diag in stay.diagnoses)
    bands: dict[str, dict[str, float]] = {}
    occurrences = sum(code_stays.values())
    for name, low, high in FREQUENCY_BANDS:
        members = [c for c, n in code_stays.items() if n >= low and (high is None or n <= high)]
        hits = sum(code_stays[c] for c in members)
        bands[name] = {
            "codes": len(members),
            "share_of_assignments": round(hits / occurrences, 4) if occurrences else 0.0,
        }
    patients = {stay.patient_id for stay in stays if stay.patient_id is not None}
    report = corpus.report
    return {
        "name": corpus.name,
        "stays": len(stays),
        "patients": len(patients),
        "synthetic_stays": sum(stay.synthetic for stay in stays),
        "documents": sum(len(stay.documents) for stay in stays),
        "tokens": {"unit": "whitespace-separated words", **_distribution(tokens)},
        "terminologies": dict(Counter(stay.terminology for stay in stays)),
        "editions": sorted({stay.edition for stay in stays if stay.edition}),
        "codes": {
            "distinct": len(code_stays),
            "assignments": occurrences,
            "stays_without_code": sum(1 for n in per_stay if n == 0),
            "label_cardinality": round(statistics.fmean(per_stay), 3) if per_stay else 0.0,
            "max_per_stay": max(per_stay, default=0),
            "top": [{"code": c, "stays": n} for c, n in code_stays.most_common(top)],
        },
        "frequency_bands": bands,
        "roles": {role: roles.get(role, 0) for role in ROLES},
        "load_report": {
            "skipped": len(report.skipped),
            "unknown_or_invalid_codes": len(report.unknown_codes),
            "unmapped_source_codes": len(report.unmapped_codes),
        },
    }


def format_stats(stats: dict[str, Any]) -> str:
    """Human-readable rendering of `corpus_stats`."""
    tok, codes = stats["tokens"], stats["codes"]
    lines = [
        f"data set        {stats['name']}",
        f"stays           {stats['stays']} ({stats['synthetic_stays']} synthetic), "
        f"patients {stats['patients']}",
        f"documents       {stats['documents']}",
        f"tokens (words)  total {tok['total']}, per stay mean {tok['mean']}, "
        f"median {tok['median']}, min {tok['min']}, max {tok['max']}",
        f"codes           {codes['distinct']} distinct, {codes['assignments']} assignments, "
        f"label cardinality {codes['label_cardinality']}, "
        f"{codes['stays_without_code']} stays without code",
        "frequency bands " + "; ".join(
            f"{name}: {band['codes']} codes, {band['share_of_assignments']:.1%} of assignments"
            for name, band in stats["frequency_bands"].items()
        ),
        "roles           " + ", ".join(f"{r} {n}" for r, n in stats["roles"].items()),
        "top codes       " + ", ".join(f"{t['code']} ({t['stays']})" for t in codes["top"]),
        "load report     " + ", ".join(f"{k} {v}" for k, v in stats["load_report"].items()),
    ]
    return "\n".join(lines)
