"""`load_terminology(name)`: one entry point for every terminology."""

from __future__ import annotations

from cimcoder.terminologies.errors import UnknownEditionError
from cimcoder.terminologies.model import Terminology


def load_terminology(name: str) -> Terminology:
    """The default edition of `name` ("cim10" or "cim11"), cached."""
    if name == "cim10":
        from cimcoder.terminologies.cim10 import load_cim10

        return load_cim10()
    if name == "cim11":
        from cimcoder.terminologies.cim11 import load_cim11

        return load_cim11()
    raise UnknownEditionError(f"unknown terminology {name!r} (expected cim10 or cim11)")
