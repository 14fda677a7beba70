"""Errors of the terminologies area, all meant for the user (see `cimcoder.errors`)."""

from __future__ import annotations

from collections.abc import Sequence

from cimcoder.errors import CimcoderError


class TerminologyError(CimcoderError):
    """Base class of the errors raised by `cimcoder.terminologies`."""


class InvalidCodeError(TerminologyError, ValueError):
    """A string that cannot be a code of the terminology (malformed)."""

    def __init__(self, raw: object, terminology: str, reason: str = "") -> None:
        self.raw = raw
        self.terminology = terminology
        detail = f": {reason}" if reason else ""
        super().__init__(f"{raw!r} is not a valid {terminology.upper()} code{detail}")


class UnknownCodeError(TerminologyError, KeyError):
    """A well-formed code that the edition does not contain.

    `suggestions` holds the nearest valid codes (children of the same category, close
    spellings, neighbouring categories) so a caller can offer them.
    """

    def __init__(self, code: str, edition: str, suggestions: Sequence[str] = ()) -> None:
        self.code = code
        self.edition = edition
        self.suggestions: tuple[str, ...] = tuple(suggestions)
        message = f"unknown code {code} in {edition}"
        if self.suggestions:
            message += f"; nearest valid codes: {', '.join(self.suggestions)}"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


class TerminologyFileError(TerminologyError):
    """A terminology source file that cannot be read (missing, malformed line...)."""


class UnknownEditionError(TerminologyError):
    """An edition name that cannot be loaded."""
