"""Turning source codes into canonical terminology codes, reporting those that fail.

Policy (`unknown_codes`):
- "drop" (default): a code that is not a code at all ("invalid") or is absent from the
  terminology ("unknown") is left out of the stay's diagnoses and listed in the LoadReport,
  so the label space only holds real codes and nothing disappears unnoticed;
- "keep": unknown but well-formed codes stay in the diagnoses (still reported); invalid ones
  are always left out;
- "error": the first invalid or unknown code raises CorpusError.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Literal

from cimcoder.errors import CimcoderError
from cimcoder.training.corpora.errors import CorpusError
from cimcoder.training.corpora.schema import CodeIssue, Diagnosis, LoadReport, Role

if TYPE_CHECKING:
    from cimcoder.terminologies import Terminology

UnknownPolicy = Literal["drop", "keep", "error"]
TerminologyName = Literal["cim10", "cim11"]


class CodeResolver:
    """Normalises and checks codes against one terminology; memoises per raw spelling."""

    def __init__(
        self,
        report: LoadReport,
        terminology: TerminologyName = "cim10",
        unknown_codes: UnknownPolicy = "drop",
    ) -> None:
        if unknown_codes not in ("drop", "keep", "error"):
            raise CorpusError(f"unknown_codes must be drop, keep or error, not {unknown_codes!r}")
        self.report = report
        self.terminology_name = terminology
        self.unknown_codes = unknown_codes
        self._cache: dict[str, tuple[str | None, Literal["invalid", "unknown"] | None]] = {}

    @cached_property
    def terminology(self) -> Terminology:
        from cimcoder.terminologies import load_terminology

        return load_terminology(self.terminology_name)

    @property
    def edition(self) -> str | None:
        return getattr(self.terminology, "edition", None)

    def _lookup(self, raw: str) -> tuple[str | None, Literal["invalid", "unknown"] | None]:
        if raw not in self._cache:
            from cimcoder.terminologies import normalize_code

            try:
                code = normalize_code(raw, self.terminology_name)
            except (CimcoderError, ValueError):
                self._cache[raw] = (None, "invalid")
            else:
                self._cache[raw] = (code, None if code in self.terminology else "unknown")
        return self._cache[raw]

    def diagnosis(
        self,
        raw: str,
        role: Role,
        *,
        stay_id: str,
        source_code: str | None = None,
        file: str | None = None,
        line: int | None = None,
        span: tuple[int, int] | None = None,
    ) -> Diagnosis | None:
        """The Diagnosis for `raw`, or None when the policy leaves it out (it is reported)."""
        source = source_code if source_code is not None else raw
        code, problem = self._lookup(raw.strip())
        if problem is None and code is not None:
            return Diagnosis(code=code, role=role, source_code=source, span=span)
        if self.unknown_codes == "error":
            where = f"{file or self.report.source}" + (f", line {line}" if line else "")
            raise CorpusError(f"{where}: stay {stay_id}: {problem} {self.terminology_name} code {raw!r}")
        keep = problem == "unknown" and self.unknown_codes == "keep" and code is not None
        self.report.code_issues.append(
            CodeIssue(problem or "invalid", stay_id, source, keep, file, line)
        )
        if keep and code is not None:
            return Diagnosis(code=code, role=role, source_code=source, span=span)
        return None

    def unmapped(self, source_code: str, *, stay_id: str, file: str | None, line: int | None) -> None:
        """Record a source code that has no equivalent in the terminology."""
        self.report.code_issues.append(CodeIssue("unmapped", stay_id, source_code, False, file, line))
