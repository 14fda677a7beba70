"""CIM-10 FR, CIM-11 FR and the WHO crosswalk, on real codes and clinical cases."""

from __future__ import annotations

import dataclasses

import pytest

from cimcoder.errors import CimcoderError
from cimcoder.terminologies import (
    InvalidCodeError,
    Terminology,
    TerminologyError,
    UnknownCodeError,
    load_cim10,
    load_terminology,
    normalize_code,
)
from cimcoder.terminologies.cim11 import load_cim11
from cimcoder.terminologies.codes import undotted
from cimcoder.terminologies.crosswalk import load_crosswalk


# --- normalisation ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("I50.0", "I50.0"),  # insuffisance cardiaque congestive, as a DIM types it
        ("I500", "I50.0"),  # as the ATIH / edsnlp tables store it
        ("i50.0", "I50.0"),
        (" I50.0 ", "I50.0"),
        ("R609", "R60.9"),  # CodiEsp spelling: oedème, sans précision
        ("r60.9", "R60.9"),
        ("E1100", "E11.00"),  # DT2 insulinotraité avec coma: French 5th character
        ("C169+0", "C16.9+0"),  # T.M. estomac familiale CDH1
        ("R53+1", "R53+1"),  # malaise: no dot before '+'
        ("A00", "A00"),
        ("I50.", "I50"),
        ("I50,0", "I50.0"),  # French decimal comma
        ("G30.9†", "G30.9"),  # dagger/asterisk marks are not part of the code
        ("F00.9*", "F00.9"),
        ("I500  ", "I50.0"),  # ATIH padding to 6
    ],
)
def test_normalize_cim10_spellings(raw: str, canonical: str) -> None:
    assert normalize_code(raw) == canonical


@pytest.mark.parametrize(
    "raw", ["", "   ", "I5", "50.0", "I5.00", "I50.0.1", "HTA", "I5000000", "I50-I52"]
)
def test_normalize_rejects_malformed_cim10(raw: str) -> None:
    with pytest.raises(InvalidCodeError) as info:
        normalize_code(raw)
    assert isinstance(info.value, CimcoderError)
    assert "CIM10" in str(info.value)


def test_normalize_rejects_non_string() -> None:
    with pytest.raises(InvalidCodeError):
        normalize_code(500)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("ba00.z", "BA00.Z"),  # hypertension essentielle, sans précision
        ("BA00Z", "BA00.Z"),
        (" 1a00&xn8p1 ", "1A00&XN8P1"),  # choléra, Vibrio cholerae O1 biovar cholerae
        ("BA41.0&XK8G", "BA41.0&XK8G"),
        ("CB41.1Z", "CB41.1Z"),
    ],
)
def test_normalize_cim11(raw: str, canonical: str) -> None:
    assert normalize_code(raw, "cim11") == canonical


@pytest.mark.parametrize("raw", ["XK8G&BA00", "BI00", "I10", ""])
def test_normalize_rejects_malformed_cim11(raw: str) -> None:
    with pytest.raises(InvalidCodeError):
        normalize_code(raw, "cim11")


def test_every_table_code_is_a_fixed_point_of_normalisation() -> None:
    cim10, cim11 = load_cim10(), load_cim11()
    assert all(normalize_code(undotted(code)) == code for code in cim10.codes())
    assert all(normalize_code(code, "cim11") == code for code in cim11.codes())


# --- CIM-10 FR loading and hierarchy ---------------------------------------------------------
def test_cim10_loads_once_with_its_edition() -> None:
    cim10 = load_cim10()
    assert cim10 is load_cim10()
    assert load_terminology("cim10") is cim10
    assert isinstance(cim10, Terminology)
    assert cim10.edition.startswith("cim10-fr-edsnlp-")
    assert 40_000 < len(cim10.codes()) < 45_000
    assert len(cim10.chapters()) == 22


def test_heart_failure_labels_and_spellings() -> None:
    cim10 = load_cim10()
    concept = cim10["I500"]
    assert concept.code == "I50.0"
    assert concept.label == "Insuffisance cardiaque congestive"
    assert concept.short_label == "INSUF. CARD. CONGESTIVE"
    assert cim10.get(" i50.0 ") == concept
    assert "I50.0" in cim10 and "i500" in cim10
    assert "I50.3" not in cim10 and "n'importe quoi" not in cim10
    assert cim10.get("pas un code") is None


def test_unknown_code_suggests_the_category_children() -> None:
    with pytest.raises(UnknownCodeError) as info:
        load_cim10()["I50.3"]  # no I50.3 in CIM-10
    assert {"I50.0", "I50.1", "I50.9"} <= set(info.value.suggestions)
    assert "I50.1" in str(info.value)


def test_unknown_code_suggests_a_close_spelling() -> None:
    with pytest.raises(UnknownCodeError) as info:
        load_cim10()["J18.7"]  # pneumopathie: J18.9 meant
    assert "J18.9" in info.value.suggestions


def test_malformed_code_lookup_raises_invalid_code() -> None:
    with pytest.raises(InvalidCodeError):
        load_cim10()["insuffisance cardiaque"]


def test_hierarchy_of_heart_failure_with_preserved_ejection_fraction() -> None:
    cim10 = load_cim10()
    assert cim10.ancestors("I50.00") == ["I50.0", "I50", "I30-I52", "IX"]
    assert cim10.chapter("I50.00") == "IX"
    assert cim10.chapter_title("IX") == "Maladies de l'appareil circulatoire"
    assert cim10["I50.00"].block == "I30-I52"
    assert cim10.children("I50.0") == ("I50.00", "I50.01", "I50.02", "I50.09")
    assert cim10.is_leaf("I50.09") and not cim10.is_leaf("I50")


@pytest.mark.parametrize(
    ("code", "parent", "kind"),
    [
        ("C16.9+0", "C16.9", "extension"),  # cancer gastrique familial CDH1
        ("R53+1", "R53", "extension"),  # malaise
        ("E11.00", "E11.0", "extension"),  # DT2 insulinotraité avec coma
        ("J96.100", "J96.10", "extension"),  # IRespC obstructive de type I
        ("I10", "I10-I15", "category"),
        ("A00.0", "A00", "subcategory"),
    ],
)
def test_french_extensions_hang_under_their_parent(code: str, parent: str, kind: str) -> None:
    concept = load_cim10()[code]
    assert (concept.parent, concept.kind) == (parent, kind)


def test_chapter_of_a_well_formed_code_from_another_edition() -> None:
    # U07.1 (COVID-19) as WHO codes it; chapter XXII even where the edition lacks the code.
    assert load_cim10().chapter("U07.1") == "XXII"
    assert load_cim10().chapter("Z51.1") == "XXI"


def test_concepts_are_immutable() -> None:
    cim10 = load_cim10()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cim10["I10"].label = "HTA"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cim10.concepts["I10"] = cim10["I11"]  # type: ignore[index]


# --- PMSI restrictions --------------------------------------------------------------------
def test_type_2_diabetes_category_may_not_be_coded() -> None:
    # "Diabète de type 2" alone: E11 and E11.9 are parents, the DIM codes E11.90 / E11.98.
    cim10 = load_cim10()
    for code in ("E11", "E11.9"):
        restrictions = cim10.restrictions(code)
        assert restrictions.mco_type == 3 and not restrictions.codable
        assert not restrictions.allows("DAS")
    assert cim10.restrictions("E11.98").allows("DP")
    assert "E11.98" in cim10.codable_codes() and "E11" not in cim10.codable_codes()


def test_external_cause_is_not_a_principal_diagnosis() -> None:
    # Piéton blessé dans une collision avec un cycle: cause externe, DAS only.
    restrictions = load_cim10().restrictions("V01.0")
    assert restrictions.external_cause
    assert not restrictions.allows("DP") and not restrictions.allows("DR")
    assert restrictions.allows("DAS")
    assert restrictions.describe().startswith("cause externe")


def test_sequelae_may_not_be_principal_diagnosis() -> None:
    restrictions = load_cim10().restrictions("B90.0")  # séquelles de tuberculose du SNC
    assert restrictions.mco_type == 4
    assert (
        not restrictions.allows("DP") and restrictions.allows("DR") and restrictions.allows("DAS")
    )
    assert restrictions.describe_smr() == "autorisé en affection étiologique, diagnostic associé"


def test_essential_hypertension_is_allowed_everywhere() -> None:
    restrictions = load_cim10().restrictions("I10")
    assert all(restrictions.allows(role) for role in ("DP", "DR", "DAS"))
    assert restrictions.describe() == "autorisé en DP, DR et DAS"


def test_chapters_carry_no_restrictions() -> None:
    with pytest.raises(TerminologyError, match="IX is a chapter"):
        load_cim10().restrictions("IX")


def test_chemotherapy_session_is_an_smr_main_purpose() -> None:
    # Z51.1 séance de chimiothérapie: the DP of a chemotherapy day, FPP in SMR.
    restrictions = load_cim10().restrictions("Z51.1")
    assert restrictions.allows("DP")
    assert restrictions.describe_smr().startswith(
        "autorisé en finalité principale de prise en charge"
    )


# --- search -------------------------------------------------------------------------------
def _codes(hits: list) -> list[str]:
    return [hit.code for hit in hits]


def test_search_left_heart_failure_ranks_i50_1_in_top_three() -> None:
    assert "I50.1" in _codes(load_cim10().search("insuffisance cardiaque gauche", limit=3))


@pytest.mark.parametrize(
    ("query", "expected", "within"),
    [
        ("HTA", "I10", 1),
        ("hta", "I10", 1),
        ("BPCO", "J44.9", 3),
        ("AVC", "I64", 3),
        ("EP", "I26.9", 3),
        ("embolie pulmonaire", "I26.9", 3),
        ("EMBOLIE PULMONAIRE", "I26.9", 3),
        ("pulmonaire embolie", "I26.9", 3),  # word order
        ("fibrillation auriculaire paroxystique", "I48.0", 1),
        ("FA paroxystique", "I48.0", 1),
        ("IRC", "N18.9", 3),
        ("AIT", "G45.9", 1),
        ("pneumopathie à pneumocoque", "J13", 3),
        ("Pneumopathie a pneumocoque", "J13", 3),  # accents dropped
        ("diabete type 2 insuline coma", "E11.00", 3),
        ("insuf card", "I50.9", 10),  # words being typed
        ("dénutrition sévère", "E43", 1),  # the label says "malnutrition ... grave"
        ("anémie ferriprive", "D50.9", 3),
        ("TVP", "I80.2", 1),
        ("PNA", "N10", 1),
        ("OAP", "I50.1", 1),
        ("I10", "I10", 1),  # a code typed in the search box
    ],
)
def test_search_clinical_queries(query: str, expected: str, within: int) -> None:
    assert expected in _codes(load_cim10().search(query, limit=within))


def test_search_respects_limit_and_returns_labels() -> None:
    hits = load_cim10().search("insuffisance", limit=5)
    assert len(hits) == 5
    assert all(hit.label and hit.score > 0 for hit in hits)
    assert load_cim10().search("zzzz qqqq") == []


def test_cim11_search_in_french() -> None:
    cim11 = load_cim11()
    assert "BA00.Z" in _codes(cim11.search("hypertension essentielle", limit=3))
    assert "BA41.0" in _codes(cim11.search("infarctus myocarde sus-décalage ST", limit=3))


# --- CIM-11 --------------------------------------------------------------------------------
def test_cim11_loads_french_and_english_titles() -> None:
    cim11 = load_cim11()
    assert cim11 is load_terminology("cim11")
    assert cim11.edition.startswith("cim11-mms-")
    concept = cim11["ba00.z"]
    assert concept.label == "Hypertension essentielle, sans précision"
    assert concept.label_en == "Essential hypertension, unspecified"
    assert cim11.ancestors("BA00.Z") == ["BA00", "11"]
    assert cim11.chapter("BA41.0") == "11"
    assert cim11.chapter_title("11") == "Maladies de l'appareil circulatoire"
    assert cim11["XK8G"].kind == "extension_code" and cim11["XK8G"].label == "Gauche"
    assert len(cim11.codes()) > 30_000


def test_cim11_cluster_titles() -> None:
    cim11 = load_cim11()
    assert [c.code for c in cim11.cluster("1A00&XN8P1")] == ["1A00", "XN8P1"]
    assert cim11.cluster_title("BA41.0&XK8G") == (
        "Infarctus du myocarde aigu avec sus-décalage du segment ST & Gauche"
    )


def test_cim11_unknown_code_suggests_neighbours() -> None:
    with pytest.raises(UnknownCodeError) as info:
        load_cim11()["BA00.7"]
    assert "BA00.Z" in info.value.suggestions


# --- crosswalk -------------------------------------------------------------------------------
def test_essential_hypertension_maps_to_ba00_z() -> None:
    (target,) = [t for t in load_crosswalk().to_cim11("I10") if t.primary]
    assert (target.code, target.relation) == ("BA00.Z", "Equivalent")
    assert target.title == "Hypertension essentielle, sans précision"
    assert target.via is None


def test_cholera_maps_to_a_post_coordinated_target() -> None:
    target = load_crosswalk().to_cim11("A00.0")[0]
    assert target.code == "1A00&XN8P1" and target.post_coordinated
    assert target.parts == (("1A00", "Choléra"), ("XN8P1", "Vibrio cholerae O1, biovar cholerae"))


@pytest.mark.parametrize(
    ("code", "via", "target"),
    [
        ("E11.00", "E11.0", "5A11"),  # DT2 insulinotraité avec coma
        ("C16.9+0", "C16.9", "2B72.Z"),  # estomac, familial CDH1
        ("I50.01", "I50.0", "BD10.Z"),  # IC congestive FEVG 40-49
    ],
)
def test_french_extensions_map_through_their_who_parent(code: str, via: str, target: str) -> None:
    first = load_crosswalk().to_cim11(code)[0]
    assert (first.code, first.via, first.source) == (target, via, code)
    assert first.relation == "Subclass"  # the French code is narrower than the target


def test_malaise_has_no_who_one_category_mapping() -> None:
    crosswalk = load_crosswalk()
    targets = crosswalk.to_cim11("R53+1")
    assert not any(t.primary for t in targets)
    assert "NoMapping" in (crosswalk.no_mapping_reason("R53+1") or "")
    assert crosswalk.no_mapping_reason("I10") is None


def test_reverse_mapping_to_cim10() -> None:
    crosswalk = load_crosswalk()
    assert crosswalk.to_cim10("BA00.Z")[0].code == "I10"
    assert crosswalk.to_cim10("BA00.Z")[0].title == "Hypertension essentielle (primitive)"
    cholera = crosswalk.to_cim10("1A00&XN8P1")
    assert cholera[0].code == "A00.0" and cholera[0].primary
    stemi = crosswalk.to_cim10("BA41.0&XK8G")[0]  # STEMI, left: maps through its stem
    assert (stemi.code, stemi.via) == ("I21", "BA41.0")


def test_crosswalk_unknown_codes() -> None:
    with pytest.raises(UnknownCodeError):
        load_crosswalk().to_cim11("I50.3")
    with pytest.raises(InvalidCodeError):
        load_crosswalk().to_cim10("I10")


def test_crosswalk_coverage() -> None:
    stats = load_crosswalk().stats()
    assert stats["cim10_codes"] == len(load_cim10().codes())
    assert 0.9 < stats["cim10_coverage"] <= 1.0
    assert (
        stats["cim10_mapped_direct"] + stats["cim10_mapped_via_parent"] + stats["cim10_no_mapping"]
        == stats["cim10_codes"]
    )
    assert 0.5 < stats["cim11_coverage"] <= 1.0


def test_combination_codes_file_is_valid_and_answers_pairs(tmp_path) -> None:
    from cimcoder.terminologies.combinations import Combinations, check_combinations, combinations
    from cimcoder.terminologies.errors import TerminologyFileError

    assert check_combinations() == []
    table = combinations("cim10")
    assert table.combination("J18.9", "B95.3") == "J13"  # pneumonie à pneumocoque
    assert table.combination("A41.9", "B96.2") == "A41.5"  # sepsis à E. coli
    assert table.combination("N39.0", "B96.2") is None  # an urinary infection keeps its agent code
    assert combinations("cim11").rules == ()
    bad = tmp_path / "combinations.tsv"
    bad.write_text("disease\tagent\tcode\tnote\nJ18\tB95.3\n", encoding="utf-8")
    with pytest.raises(TerminologyFileError, match=":2:"):
        Combinations.read(bad)
    bad.write_text("disease\tagent\tcode\tnote\nJ18\tB95.3\tJ15\tcatégorie\nJ18\tB95.3\tZZZ.9\tinconnu\n",
                   encoding="utf-8")
    problems = check_combinations(bad)
    assert any("J15 cannot be coded" in p for p in problems) and any("unknown code ZZZ.9" in p for p in problems)
