"""What CIM-10 FR and CIM-11 share: an immutable table of concepts with a hierarchy.

Each terminology says how it reads a code (`_key`) and how it suggests near codes
(`suggest`); look-ups, children and ancestors are the same for both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import ClassVar

from cimcoder.terminologies.codes import normalize_code
from cimcoder.terminologies.errors import InvalidCodeError, UnknownCodeError
from cimcoder.terminologies.model import Concept, SearchHit
from cimcoder.terminologies.search import SearchIndex


@dataclass(frozen=True)
class ConceptTable:
    """Concepts keyed by canonical code, with their children. Immutable."""

    terminology: ClassVar[str]

    name: str
    edition: str
    source: str
    _concepts: dict[str, Concept] = field(repr=False)
    _codes: tuple[str, ...] = field(repr=False)
    _children: dict[str, tuple[str, ...]] = field(repr=False)

    @property
    def concepts(self) -> Mapping[str, Concept]:
        """Every entry, groupings included, keyed by canonical code (read-only)."""
        return MappingProxyType(self._concepts)

    def normalize(self, raw: str) -> str:
        return normalize_code(raw, self.terminology)

    def _key(self, code: str) -> str | None:
        """Canonical key of `code`, or None when it cannot name an entry."""
        try:
            return normalize_code(code, self.terminology)
        except InvalidCodeError:
            return self._grouping_key(code.strip().upper() if isinstance(code, str) else "")

    def _grouping_key(self, key: str) -> str | None:
        """Key of a chapter or block, which are not codes."""
        return None

    def suggest(self, code: str) -> list[str]:
        raise NotImplementedError

    def _search_entries(self) -> list[tuple[str, str, str]]:
        """(code, secondary text, main French label) of every code, for the search index."""
        raise NotImplementedError

    def _exact_hit(self, concept: Concept) -> bool:
        """Whether a code typed as the query is itself a result (not a mere grouping)."""
        return True

    @cached_property
    def _index(self) -> SearchIndex:
        leaves = frozenset(c for c in self._codes if c not in self._children)
        return SearchIndex(self._search_entries(), leaves)

    def search(self, text: str, limit: int = 10) -> list[SearchHit]:
        """Codes whose French labels best match `text` (a code typed as such comes first)."""
        concept = self.get(text) if text.strip() else None
        exact = concept if concept is not None and self._exact_hit(concept) else None
        hits = [
            SearchHit(code, label, score)
            for code, label, score in self._index.search(text, limit)
            if exact is None or code != exact.code
        ]
        if exact is not None:
            best = max((hit.score for hit in hits), default=0.0)
            hits.insert(0, SearchHit(exact.code, exact.long_label, best + 1.0))
        return hits[:limit]

    def get(self, code: str) -> Concept | None:
        key = self._key(code)
        return self._concepts.get(key) if key else None

    def __getitem__(self, code: str) -> Concept:
        key = self._key(code)
        if key is None:
            normalize_code(code, self.terminology)  # raises InvalidCodeError with the reason
            raise AssertionError("unreachable")
        concept = self._concepts.get(key)
        if concept is None:
            raise UnknownCodeError(key, self.edition, self.suggest(key))
        return concept

    def __contains__(self, code: object) -> bool:
        return isinstance(code, str) and self.get(code) is not None

    def __len__(self) -> int:
        return len(self._codes)

    def codes(self) -> Sequence[str]:
        """Codes in table order, groupings (chapters, blocks) and deleted codes excluded."""
        return self._codes

    def children(self, code: str) -> tuple[str, ...]:
        return self._children.get(self[code].code, ())

    def ancestors(self, code: str) -> list[str]:
        """Parents up to the chapter, nearest first: I50.01 -> I50.0, I50, I30-I52, IX."""
        concept = self[code]
        chain: list[str] = []
        while concept.parent is not None:
            chain.append(concept.parent)
            concept = self._concepts[concept.parent]
        return chain

    def chapter_title(self, chapter: str) -> str:
        return self._concepts[chapter].label
