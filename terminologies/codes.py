"""Code normalisation: the one place where `I50.0`, `I500`, `i50.0`, ` I50.0 ` become one code.

Canonical CIM-10 form (used project-wide): a dot after the third character when more
characters follow (`I50.0`, `E11.00`, `C16.9+0`), no dot when the fourth character is a
`+` (`R53+1`), the bare category otherwise (`A00`).

Canonical CIM-11 form: the WHO spelling (`BA00.Z`, `1A00`, `XN8P1`); clusters keep their
`&` (extension) and `/` (stem) separators: `1A00&XN8P1`.
"""

from __future__ import annotations

import re
from typing import Literal

from cimcoder.terminologies.errors import InvalidCodeError

TerminologyName = Literal["cim10", "cim11"]

# Dagger/asterisk marks, and the spaces ATIH pads codes with, carry no meaning for the code.
_DROP = str.maketrans("", "", "†*‡ \t\u00a0")
# Category (letter + 2 digits), then up to 3 characters of French/WHO subdivision.
_CIM10_UNDOTTED = re.compile(r"^[A-Z][0-9]{2}(?:[0-9]{1,3}|\+[0-9]{1,2}|[0-9]\+[0-9]{1,2})?$")
# Stem: chapter char, letter, digit, char; optional '.' + 1-2 chars. Extension: X + 3-5 chars.
_CIM11_ALPHABET = "0-9A-HJ-NP-Z"
_CIM11_STEM = re.compile(
    rf"^[{_CIM11_ALPHABET}][A-HJ-NP-Z][0-9][{_CIM11_ALPHABET}](?:\.[{_CIM11_ALPHABET}]{{1,2}})?$"
)
_CIM11_STEM_UNDOTTED = re.compile(
    rf"^([{_CIM11_ALPHABET}][A-HJ-NP-Z][0-9][{_CIM11_ALPHABET}])([{_CIM11_ALPHABET}]{{1,2}})$"
)
_CIM11_EXTENSION = re.compile(rf"^X[{_CIM11_ALPHABET}]{{3,5}}$")


def normalize_code(raw: str, terminology: TerminologyName | str = "cim10") -> str:
    """Return the canonical spelling of a code, or raise `InvalidCodeError`.

    Only the form is checked here; whether the code exists is the terminology's business
    (`code in load_cim10()`).

    >>> normalize_code(" i500 ")
    'I50.0'
    >>> normalize_code("C169+0")
    'C16.9+0'
    """
    if terminology == "cim10":
        return _normalize_cim10(raw)
    if terminology == "cim11":
        return _normalize_cim11(raw)
    raise InvalidCodeError(raw, str(terminology), "unknown terminology (expected cim10 or cim11)")


def undotted(code: str) -> str:
    """CIM-10 code without its dot, as in the ATIH and edsnlp tables (`I50.0` -> `I500`)."""
    return code.replace(".", "")


def dotted_cim10(compact: str) -> str:
    """Insert the dot into an already validated, upper-case, undotted CIM-10 code."""
    head, rest = compact[:3], compact[3:]
    if not rest or rest.startswith("+"):
        return compact
    return f"{head}.{rest}"


def _normalize_cim10(raw: str) -> str:
    if not isinstance(raw, str):
        raise InvalidCodeError(raw, "cim10", "expected a string")
    text = raw.translate(_DROP).upper().replace(",", ".")
    if not text:
        raise InvalidCodeError(raw, "cim10", "empty code")
    if text.count(".") > 1 or ("." in text and text.index(".") != 3):
        raise InvalidCodeError(raw, "cim10", "the dot goes after the 3-character category (I50.0)")
    if text.endswith(".") and len(text) == 4:
        text = text[:3]  # "I50." is the category I50
    compact = text.replace(".", "")
    if not _CIM10_UNDOTTED.match(compact):
        raise InvalidCodeError(
            raw,
            "cim10",
            "expected a letter, 2 digits and up to 3 more characters (A00, I50.0, E11.00, R53+1)",
        )
    return dotted_cim10(compact)


def _normalize_cim11_part(part: str, raw: str) -> str:
    if _CIM11_STEM.match(part) or _CIM11_EXTENSION.match(part):
        return part
    match = _CIM11_STEM_UNDOTTED.match(part)
    if match:  # "BA00Z" -> "BA00.Z"
        return f"{match.group(1)}.{match.group(2)}"
    raise InvalidCodeError(
        raw, "cim11", f"{part!r} is neither a stem code (BA00.Z) nor an extension code (XK8G)"
    )


def _normalize_cim11(raw: str) -> str:
    if not isinstance(raw, str):
        raise InvalidCodeError(raw, "cim11", "expected a string")
    text = raw.translate(_DROP).upper()
    if not text:
        raise InvalidCodeError(raw, "cim11", "empty code")
    stems = []
    for stem_cluster in text.split("/"):
        parts = stem_cluster.split("&")
        if _CIM11_EXTENSION.match(parts[0]) and len(parts) > 1:
            raise InvalidCodeError(raw, "cim11", "an extension code never comes first in a cluster")
        stems.append("&".join(_normalize_cim11_part(p, raw) for p in parts))
    return "/".join(stems)
