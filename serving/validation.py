"""Input rules shared by the coding API and the review API: stay ids, paging, free text.

A report reaches a tokenizer, a database (SQLite, PostgreSQL) and a browser: a NUL byte
(PostgreSQL refuses it in text), a lone UTF-16 surrogate (not encodable as UTF-8) or a text of
control characters only would fail somewhere deep with a 500. They are refused at the door
with a 422 that says which rule the text breaks.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated

from pydantic import AfterValidator, Field

STAY_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
STAY_ID_RULE = "1 to 128 letters, digits, '.', '_', ':' or '-'"
# Far beyond any queue; keeps OFFSET within a 64-bit integer on every database.
MAX_OFFSET = 1_000_000


def _check_unicode(value: str) -> str:
    if "\x00" in value:
        raise ValueError("the text contains a NUL byte (\\u0000): remove it")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            "the text contains a lone UTF-16 surrogate (e.g. \\ud800): not valid Unicode, "
            "send UTF-8 text"
        ) from None
    return value


def check_plain_text(value: str) -> str:
    """A short free-text field (unit, reason, label): no NUL byte, no lone surrogate."""
    return _check_unicode(value)


def check_report_text(value: str) -> str:
    """A report: valid Unicode without NUL, and at least one readable character."""
    _check_unicode(value)
    # A blank text is left to each schema's own "empty" rule.
    stripped = value.strip()
    if stripped and all(
        ch.isspace() or unicodedata.category(ch) in {"Cc", "Cf"} for ch in stripped
    ):
        raise ValueError("the report text holds only control characters, no readable text")
    return value


StayId = Annotated[
    str, Field(pattern=STAY_ID_PATTERN, description=f"Stay identifier: {STAY_ID_RULE}.")
]
PlainText = Annotated[str, AfterValidator(check_plain_text)]
ReportText = Annotated[str, AfterValidator(check_report_text)]
