"""cimcoder.terminologies: CIM-10 FR, CIM-11 MMS (French) and the WHO crosswalk.

Nothing is loaded at import time; every loader caches its result for the process.
"""

from cimcoder.terminologies.cim10 import Cim10Fr, load_cim10
from cimcoder.terminologies.cim11 import Cim11, load_cim11
from cimcoder.terminologies.codes import normalize_code
from cimcoder.terminologies.crosswalk import Crosswalk, CrosswalkTarget, load_crosswalk
from cimcoder.terminologies.errors import (
    InvalidCodeError,
    TerminologyError,
    TerminologyFileError,
    UnknownCodeError,
    UnknownEditionError,
)
from cimcoder.terminologies.model import Concept, Restrictions, SearchHit, Terminology
from cimcoder.terminologies.registry import load_terminology

__all__ = [
    "Cim10Fr",
    "Cim11",
    "Concept",
    "Crosswalk",
    "CrosswalkTarget",
    "InvalidCodeError",
    "Restrictions",
    "SearchHit",
    "Terminology",
    "TerminologyError",
    "TerminologyFileError",
    "UnknownCodeError",
    "UnknownEditionError",
    "load_cim10",
    "load_cim11",
    "load_crosswalk",
    "load_terminology",
    "normalize_code",
]
