"""The ATIH yearly LIBCIM10MULTI loader, and the on-disk cache of built terminologies."""

from __future__ import annotations

from pathlib import Path

import pytest

from cimcoder.terminologies import TerminologyFileError, UnknownEditionError, load_cim10
from cimcoder.terminologies.cache import cached

# A few lines of a LIBCIM10MULTI file: code padded to 6, type MCO/HAD, SMR profile, type PSY,
# short label, long label; ISO-8859-1.
_LINES = [
    "A00   |3|NNNN|3|CHOLERA|Choléra",
    "A000  |0|NOOO|0|CHOLERA A VIBRIO CHOLERAE 01, BIOVAR CHOLERAE|Choléra à Vibrio cholerae 01, biovar cholerae",
    "A001  |0|NOOO|0|*** SU19 ***|*** SU19 ***",
    "A009  |0|NOOO|0|CHOLERA, SAI|Choléra, sans précision",
    "I10   |0|NOOO|0|HYPERTENSION ESSENTIELLE|Hypertension essentielle (primitive)",
    "I50   |3|NNNN|3|INSUF. CARD.|Insuffisance cardiaque",
    "I501  |3|NNNN|3|INSUF. VENTRICULAIRE GAUCHE|Insuffisance ventriculaire gauche",
    "I5010 |0|NOOO|0|IVG FEVG >= 50|Insuffisance ventriculaire gauche, avec FEVG supérieure ou égale à 50",
    "R53   |3|NNNN|3|MALAISE ET FATIGUE|Malaise et fatigue",
    "R53+1 |0|NONO|0|MALAISE|Malaise",
    "V01   |3|NNNN|3|PIET. BLES. DS COLL. AV. CYCL.|Piéton blessé dans une collision avec un cycle",
    "V010  |2|NNNO|1|PIET. BLES. DS COLL. AV. CYCL., AHC|Piéton blessé dans une collision avec un cycle",
]


def _write(path: Path, lines: list[str]) -> Path:
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("iso-8859-1"))
    return path


@pytest.fixture(autouse=True)
def _private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIMCODER_CACHE_DIR", str(tmp_path / "cache"))


def test_dim_loads_the_year_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "LIBCIM10MULTI.TXT", _LINES)
    cim10 = load_cim10(edition="2026", path=path)
    assert cim10 is load_cim10(edition="2026", path=str(path))
    assert cim10.edition == "cim10-fr-atih-2026"
    assert (
        cim10["A000"].label == "Choléra à Vibrio cholerae 01, biovar cholerae"
    )  # accents read in Latin-1
    assert cim10["R53+1"].parent == "R53"
    assert cim10.ancestors("I50.10") == ["I50.1", "I50", "I30-I52", "IX"]
    assert cim10.restrictions("V01.0").external_cause
    assert (
        cim10.restrictions("R53+1").describe_smr()
        == "autorisé en manifestation morbide principale, diagnostic associé"
    )
    assert "I50.1" in [hit.code for hit in cim10.search("insuffisance cardiaque gauche", limit=3)]


def test_deleted_codes_stay_but_are_not_offered(tmp_path: Path) -> None:
    cim10 = load_cim10(edition="2026", path=_write(tmp_path / "LIBCIM10MULTI.TXT", _LINES))
    deleted = cim10["A00.1"]
    assert deleted.deleted and deleted.deleted_in == "2019"
    assert "A00.1" not in cim10.codes()
    assert cim10.children("A00") == ("A00.0", "A00.9")
    assert "A00.1" not in [hit.code for hit in cim10.search("cholera", limit=10)]


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("I50   |3|NNNN", "line 4: expected 6 '|'-separated fields"),
        ("1234  |0|NOOO|0|X|X", "line 4: invalid code '1234'"),
        ("I11   |9|NOOO|0|X|X", "line 4: type MCO/HAD must be one of [0, 1, 2, 3, 4]"),
        ("I11   |0|NOXO|0|X|X", "line 4: SMR profile must be O/N flags"),
        ("I10   |0|NOOO|0|BIS|Doublon", "line 4: code I10 already given on line 3"),
    ],
)
def test_malformed_line_is_named(tmp_path: Path, bad_line: str, message: str) -> None:
    lines = [
        "A00   |3|NNNN|3|CHOLERA|Choléra",
        "A000  |0|NOOO|0|CHOLERA 01|Choléra 01",
        "I10   |0|NOOO|0|HTA|HTA",
    ]
    path = _write(tmp_path / "LIBCIM10MULTI_bad.TXT", [*lines, bad_line])
    with pytest.raises(TerminologyFileError) as info:
        load_cim10(edition="2027", path=path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_orphan_subcategory_is_refused(tmp_path: Path) -> None:
    path = _write(tmp_path / "orphan.txt", ["I500  |0|NOOO|0|IC|Insuffisance cardiaque congestive"])
    with pytest.raises(TerminologyFileError, match="no parent category I50"):
        load_cim10(edition="x", path=path)


def test_missing_or_empty_file(tmp_path: Path) -> None:
    with pytest.raises(TerminologyFileError, match="not found"):
        load_cim10(edition="2026", path=tmp_path / "absent.txt")
    empty = _write(tmp_path / "empty.txt", [""])
    with pytest.raises(TerminologyFileError, match="no CIM-10 code"):
        load_cim10(edition="2026", path=empty)


def test_unknown_bundled_edition() -> None:
    with pytest.raises(UnknownEditionError, match="not bundled"):
        load_cim10(edition="2031")


def test_cache_key_covers_the_code_of_every_pickled_class() -> None:
    import inspect

    from cimcoder.terminologies import load_cim10, load_cim11
    from cimcoder.terminologies.cache import _NOT_IN_KEY

    for table in (load_cim10(), load_cim11()):
        for cls in type(table).__mro__:
            if cls.__module__.startswith("cimcoder.terminologies"):
                # e.g. the ConceptTable base (table.py): a change there must rebuild the cache.
                assert Path(inspect.getfile(cls)).name not in _NOT_IN_KEY, cls


def test_disk_cache_builds_once_and_survives_corruption(tmp_path: Path) -> None:
    calls: list[int] = []

    def build() -> dict[str, str]:
        calls.append(1)
        return {"I10": "Hypertension essentielle (primitive)"}

    first = cached("unit", ["edition", "hash"], build)
    second = cached("unit", ["edition", "hash"], build)
    assert first == second and len(calls) == 1
    cached("unit", ["edition", "other-hash"], build)  # a new source file: rebuilt
    assert len(calls) == 2
    for entry in (tmp_path / "cache").glob("unit-*.pickle"):
        entry.write_bytes(b"not a pickle")
    assert cached("unit", ["edition", "hash"], build) == first
    assert len(calls) == 3


def test_cache_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CIMCODER_NO_CACHE", "1")
    calls: list[int] = []
    cached("off", ["k"], lambda: calls.append(1))
    cached("off", ["k"], lambda: calls.append(1))
    assert len(calls) == 2
    assert not list((tmp_path / "cache").glob("off-*"))
