"""CIM-10 combination codes: one code for a disease and the agent that causes it.

The agents of chapter I (B95-B97: "cause de maladies classées dans d'autres chapitres") are
for diseases whose code does not name the agent. Where CIM-10 has a code that does ("Pneumonie
due à Streptococcus pneumoniae", J13; "Sepsis à staphylocoques dorés", A41.0), a DIM codes it
instead of the disease "sans précision" (J18.9, A41.9) and the agent (B95.3, B95.6). The curated
file `data/combinations.tsv` (disease codes or categories, agent codes, the combination code,
a note) lists them; `combination(disease, agent)` answers one pair. CIM-10 only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from cimcoder.terminologies.errors import TerminologyFileError
from cimcoder.terminologies.lexicon import read_curated_table

COMBINATIONS_FILE = Path(__file__).parent / "data" / "combinations.tsv"
COLUMNS = ["disease", "agent", "code", "note"]


@dataclass(frozen=True)
class Combinations:
    """(disease prefix, agent code) -> combination code."""

    rules: tuple[tuple[str, str, str], ...]

    def combination(self, disease: str, agent: str) -> str | None:
        """The code that says both, or None."""
        for prefix, known, code in self.rules:
            if agent == known and disease.startswith(prefix) and disease != code:
                return code
        return None

    def agents(self) -> set[str]:
        return {agent for _, agent, _ in self.rules}

    @classmethod
    def read(cls, path: str | Path = COMBINATIONS_FILE) -> Combinations:
        rules: list[tuple[str, str, str]] = []
        for line_no, cells in read_curated_table(path, COLUMNS):
            if len(cells) != 4 or not cells[0].split() or not cells[1].split() or len(cells[2].split()) != 1:
                raise TerminologyFileError(
                    f"{path}:{line_no}: expected disease codes, agent codes, one code, a note"
                )
            rules += [(d, a, cells[2].strip()) for d in cells[0].split() for a in cells[1].split()]
        return cls(tuple(rules))


@functools.lru_cache(maxsize=2)
def combinations(terminology: str = "cim10") -> Combinations:
    """The shipped combinations (cached); none for CIM-11 (its codes post-coordinate)."""
    return Combinations.read() if terminology == "cim10" else Combinations(())


def check_combinations(path: str | Path = COMBINATIONS_FILE) -> list[str]:
    """What CIM-10 FR does not accept in the file: unknown codes, a combination code that
    cannot be coded."""
    from cimcoder.terminologies import load_terminology

    term = load_terminology("cim10")
    problems: list[str] = []
    for disease, agent, code in Combinations.read(path).rules:
        for c in (disease, agent, code):
            if term.get(c) is None:
                problems.append(f"{path}: unknown code {c}")
        concept = term.get(code)
        r = getattr(concept, "restrictions", None)
        if r is not None and not r.codable:
            problems.append(f"{path}: {code} cannot be coded (a category CIM-10 FR splits)")
    return sorted(set(problems))
