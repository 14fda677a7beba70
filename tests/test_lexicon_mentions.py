"""The French clinical lexicon and the mention layer, on clinical sentences.

One test per kind of lexicon entry (ATIH label variant, CIM-11 title, curated abbreviation,
synonym, variant, eponym, learned phrase), then edsnlp's qualifiers and the CRH sections on
the sentences a DIM coder reads every day.
"""

from __future__ import annotations

import pytest

from cimcoder.terminologies.errors import TerminologyFileError
from cimcoder.terminologies.lexicon import (
    LEXICON_DIR,
    Lexicon,
    LexiconEntry,
    StillCurrent,
    check_entries,
    check_still_current,
    curated_entries,
    label_variants,
    load_lexicon,
    read_lexicon_file,
    still_current,
)


@pytest.fixture(scope="module")
def curated() -> Lexicon:
    return load_lexicon("cim10", labels=False, cim11_titles=False)


@pytest.fixture(scope="module")
def extractor(curated: Lexicon):
    from cimcoder.terminologies import load_cim10
    from cimcoder.terminologies.lexicon import label_entries
    from cimcoder.training.mentions import MentionExtractor

    # The curated files plus the labels of a few chapters: the real pipeline, built fast.
    cim10 = load_cim10()
    labels = [e for e in label_entries("cim10") if e.codes[0][:1] in "IJ" and e.codes[0] in cim10]
    return MentionExtractor(curated.with_entries(labels))


def codes_of(mentions, **qualifiers) -> set[str]:
    return {
        c for m in mentions for c in m.codes
        if all(getattr(m, k) == v for k, v in qualifiers.items())
    }


# --------------------------------------------------------------------------- lexicon


def test_curated_files_are_valid_and_sized_for_real_use(curated: Lexicon) -> None:
    entries = curated_entries()
    assert not check_entries(entries), check_entries(entries)[:5]
    assert {e.kind for e in entries} == {"abbreviation", "synonym", "variant", "eponym", "treatment"}
    codes = {c for e in entries for c in e.codes}
    assert len(codes) >= 600  # a few hundred diagnoses across the specialties, and more
    # Every specialty the PMSI sees most: a code of each chapter I..XIX and XXI.
    chapters = {c[:1] for c in codes}
    assert set("ABCDEFGIJKLMNORSZ") <= chapters


def test_abbreviations_are_case_sensitive_where_they_collide_with_words(extractor) -> None:
    assert "I10" in codes_of(extractor("Patient de 72 ans. HTA traitée par amlodipine."))
    # "fa" is a musical note and "ma" a possessive: only the capitalised forms are codes.
    assert "I48.0" in codes_of(extractor("FA paroxystique découverte aux urgences."))
    assert not codes_of(extractor("Ma fille chante en fa mineur."))


def test_synonym_variant_and_eponym_entries(extractor) -> None:
    assert "I10" in codes_of(extractor("Hypertension artérielle ancienne."))  # synonym
    assert "I48.2" in codes_of(extractor("Fibrillation auriculaire permanente."))  # label variant
    assert "I73.1" in codes_of(extractor("Maladie de Buerger connue."))  # eponym
    assert "J44.1" in codes_of(extractor("BPCO exacerbée sur virose."))  # abbreviation + qualifier


def test_a_fracture_is_found_said_closed_or_open(extractor) -> None:
    # CIM-10: a fracture not said open is closed (S72.00); the clinician may say which.
    assert "S72.00" in codes_of(extractor("Fracture du col fémoral gauche, Garden IV."))
    assert "S72.00" in codes_of(extractor("Fracture fermée du col fémoral gauche (Garden IV)."))
    assert "S72.01" in codes_of(extractor("Fracture ouverte du col fémoral droit."))
    assert "S72.00" not in codes_of(extractor("Fracture ouverte du col fémoral droit."))


def test_a_carotid_tia_is_the_carotid_syndrome(extractor) -> None:
    assert "G45.1" in codes_of(extractor("AIT carotidien gauche sur sténose de la carotide interne."))
    assert "G45.9" in codes_of(extractor("AIT il y a deux jours, bilan en cours."))


def test_a_stage_written_after_the_disease_names_its_code(extractor) -> None:
    assert codes_of(extractor("Escarre sacrée de stade IV.")) == {"L89.3"}
    assert codes_of(extractor("Insuffisance rénale chronique modérée, stade 4.")) == {"N18.4"}
    assert "L89.2" in codes_of(extractor("Pas d'escarre sacrée de stade III."), negated=True)
    assert "L89.9" in codes_of(extractor("Escarre. Cancer du sein stade 2."))  # another sentence


def test_a_qualifier_written_further_on_makes_the_diagnosis_precise(extractor) -> None:
    # French puts qualifiers after the noun, often several: the head of the mention and a
    # later word of the clause form the lexicon's more precise term.
    assert codes_of(extractor("FA rapide paroxystique.")) == {"I48.0"}
    assert codes_of(extractor("Pneumopathie aiguë communautaire lobaire inférieure droite.")) == {"J18.1"}
    assert "I63.4" in codes_of(extractor("Infarctus cérébral sylvien gauche d'origine cardio-embolique."))
    # denied qualifiers, another clause, or a vaguer code leave the diagnosis as written
    assert codes_of(extractor("Pneumopathie aiguë communautaire non lobaire.")) == {"J18.9"}
    assert codes_of(extractor("FA rapide. Paroxystique selon le patient.")) == {"I48.9"}
    [m] = extractor("Pas de FA rapide paroxystique.")
    assert m.codes == ("I48.0",) and m.negated


def test_label_variants_unfold_brackets_and_cut_tails() -> None:
    got = label_variants("Fibrillation auriculaire chronique [permanente]")
    assert "Fibrillation auriculaire permanente" in got
    assert "Fibrillation auriculaire chronique" in got
    assert "Diabète sucré de type 2" in label_variants("Diabète sucré de type 2, sans précision")
    assert not label_variants("Autres maladies précisées")


def test_cim11_titles_bring_modern_phrasings() -> None:
    from cimcoder.terminologies.lexicon import cim11_title_entries

    entries = [e for e in cim11_title_entries() if e.term == "Cardiomyopathie dilatée"]
    assert entries and entries[0].codes == ("I42.0",)  # ATIH: "Myocardiopathie avec dilatation"


def test_lexicon_maps_to_cim11(curated: Lexicon) -> None:
    cim11 = curated.for_terminology("cim11")
    hta = [e for e in cim11.entries if e.term == "HTA" and e.match == "exact"]
    assert hta and hta[0].codes == ("BA00.Z",)


def test_bad_lexicon_files_are_refused_with_their_line(tmp_path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_text("codes\tterm\tkind\tmatch\tnote\nI10\tHTA\tslang\texact\t\n", encoding="utf-8")
    with pytest.raises(TerminologyFileError, match=r"bad.tsv:2: kind 'slang'"):
        read_lexicon_file(path)
    path.write_text("code\tterm\n", encoding="utf-8")
    with pytest.raises(TerminologyFileError, match="header"):
        read_lexicon_file(path)
    # A code the edition does not know is reported, not silently kept.
    problems = check_entries([LexiconEntry(("I50.0",), "IC", "abbreviation", "exact", "x.tsv")])
    assert problems and "not codable" in problems[0][1]
    assert LEXICON_DIR.is_dir()


def test_learned_phrases_enter_the_lexicon(curated: Lexicon) -> None:
    from cimcoder.training.mentions import MentionExtractor

    learned = LexiconEntry(("I50.19",), "ic gauche decompensee", "learned", "fold", "run")
    ex = MentionExtractor(Lexicon("cim10", curated.edition, (learned,)), measurements=False)
    found = ex("Hospitalisé pour IC gauche décompensée.")
    assert [(m.codes, m.kind) for m in found] == [(("I50.19",), "learned")]


# --------------------------------------------------------------------------- qualifiers


@pytest.mark.parametrize(
    ("sentence", "qualifier"),
    [
        ("Pas d'embolie pulmonaire à l'angioscanner.", "negated"),
        ("Absence de fibrillation auriculaire sur le holter.", "negated"),
        ("Suspicion d'embolie pulmonaire.", "hypothesis"),
        ("Sa mère avait une BPCO.", "family"),
        ("Antécédent d'embolie pulmonaire en 2015.", "history"),
    ],
)
def test_qualified_mentions(extractor, sentence: str, qualifier: str) -> None:
    mentions = extractor(sentence)
    assert mentions, sentence
    assert all(getattr(m, qualifier) for m in mentions), [(m.codes, m) for m in mentions]
    assert not any(m.affirmed for m in mentions)
    assert all(m.reason() for m in mentions)


@pytest.mark.parametrize(
    ("sentence", "code"),
    [
        ("Pneumopathie lobaire droite non compliquée.", "J18.1"),
        ("Embolie pulmonaire non grave, sans cœur pulmonaire aigu.", "I26.9"),
        ("FA paroxystique non valvulaire.", "I48.0"),
        ("Insuffisance cardiaque non ischémique.", "I50.9"),
        ("Hypertension artérielle non contrôlée sous bithérapie.", "I10"),
        ("Embolie pulmonaire sur FA paroxystique non anticoagulée.", "I26.9"),
        ("Pneumopathie lobaire à germe non identifié.", "J18.1"),
        ("Rétinopathie diabétique non proliférante modérée.", "H36.0"),
    ],
)
def test_non_before_a_qualifier_denies_the_qualifier_not_the_diagnosis(extractor, sentence, code) -> None:
    # edsnlp reads a "non" written after a term as its negation; "non compliquée", "non
    # valvulaire" qualify the diagnosis just named.
    assert code in codes_of(extractor(sentence), negated=False)


def test_non_before_a_diagnosis_still_denies_it(extractor) -> None:
    assert "I48.0" in codes_of(extractor("Patient non connu pour une FA paroxystique."), negated=True)
    assert "I26.9" in codes_of(extractor("Embolie pulmonaire : non."), negated=True)


def test_affirmed_mention_has_no_reason(extractor) -> None:
    mentions = extractor("Embolie pulmonaire bilatérale confirmée.")
    assert mentions and all(m.affirmed and m.reason() is None for m in mentions)


def test_treated_chronic_diseases_in_the_history_stay_current_acute_events_do_not(extractor) -> None:
    text = (
        "ANTÉCÉDENTS :\n- HTA\n- FA paroxystique sous anticoagulant\n"
        "- embolie pulmonaire en 2015\n\n"
        "CONCLUSION : décompensation cardiaque.\n"
    )
    mentions = extractor(text)
    assert codes_of(mentions, affirmed=True, still_current=True) >= {"I10", "I48.0"}
    past = [m for m in mentions if "I26.9" in m.codes]
    assert past and all(m.history and not m.affirmed and m.reason() == "antécédent" for m in past)
    # A negation still wins over the chronic disease: "pas d'HTA" is no HTA.
    assert "I10" in codes_of(extractor("Antécédents : pas d'HTA."), negated=True)


def test_insulin_in_the_treatment_makes_the_diabetes_insulin_treated(extractor) -> None:
    treated = extractor("Diabète de type 2 déséquilibré.\nTraitement de sortie : Lantus 20 UI le soir.")
    assert "E11.90" in codes_of(treated, affirmed=True)
    assert any(m.kind == "treatment" for m in treated)
    oral = extractor("Diabète de type 2 sous metformine. Pas d'insuline.")
    assert "E11.98" in codes_of(oral) and "E11.90" not in codes_of(oral)
    said = extractor("Diabète de type 2 non insulinotraité.")
    assert "E11.90" not in codes_of(said)
    for text in (
        "Diabète de type 2 équilibré sans nécessité d'insuline.",
        "Diabète de type 2 déséquilibré par l'infection : insulinothérapie transitoire.",
    ):
        assert "E11.90" not in codes_of(extractor(text)), text


def test_anticoagulant_treatment_is_a_long_term_use_mention(extractor) -> None:
    taken = extractor("TRAITEMENT DE SORTIE :\nApixaban 5 mg matin et soir.\nBisoprolol 2,5 mg.")
    assert "Z92.1" in codes_of(taken, affirmed=True, kind="treatment")
    assert "Z92.1" in codes_of(extractor("FA paroxystique sous AVK (Préviscan)."), affirmed=True)
    assert "Z92.1" not in codes_of(extractor("Pas d'anticoagulant oral."), affirmed=True)


def test_what_the_antecedents_sections_list_is_history_or_family(extractor) -> None:
    text = (
        "ANTÉCÉDENTS :\n- pneumopathie\n- HTA\n\n"
        "ANTÉCÉDENTS FAMILIAUX :\n- BPCO\n\n"
        "HISTOIRE DE LA MALADIE :\nEmbolie pulmonaire bilatérale.\n"
    )
    mentions = extractor(text)
    assert "J18.9" in codes_of(mentions, history=True)  # past, by where it is written
    assert "I10" in codes_of(mentions, affirmed=True, still_current=True)  # treated, current
    assert "J44.9" in codes_of(mentions, family=True)
    assert "I26.9" in codes_of(mentions, affirmed=True)  # the current episode is no history


def test_longest_match_wins_and_its_qualifiers_with_it(extractor) -> None:
    mentions = extractor("Insuffisance rénale chronique stade 3a. DT2 non insulinotraité.")
    assert codes_of(mentions) >= {"N18.3", "E11.98"}
    assert "N19" not in codes_of(mentions)  # "insuffisance rénale" inside the longer term
    assert "E11.98" not in codes_of(mentions, negated=True)  # "non" belongs to "non insulinotraité"


def test_a_diagnosis_considered_then_not_kept_is_negated(extractor) -> None:
    mentions = extractor("Une pneumopathie évoquée à la radiographie n'a pas été retenue.")
    assert codes_of(mentions) and not codes_of(mentions, affirmed=True)


def test_still_current_file_is_valid_and_read_strictly(tmp_path) -> None:
    assert check_still_current() == []
    table = still_current("cim10")
    assert table.covers(["I10", "E11.98"], "history")
    assert not table.covers(["I10", "I21.9"], "history")  # one acute code: not all current
    assert table.covers(["Z80.3"], "family") and not table.covers(["I10"], "family")
    assert not table.covers([], "history")
    assert still_current("cim11").prefixes == {}
    bad = tmp_path / "still.tsv"
    bad.write_text("codes\tqualifier\tnote\nI10\tnegation\tno\n", encoding="utf-8")
    with pytest.raises(TerminologyFileError, match=":2:"):
        StillCurrent.read(bad)


def test_sections_of_a_compte_rendu(extractor) -> None:
    text = (
        "MOTIF D'HOSPITALISATION : dyspnée.\n\n"
        "ANTÉCÉDENTS :\n- HTA\n\n"
        "ÉVOLUTION\nBonne évolution sous diurétiques.\n\n"
        "CONCLUSION : Embolie pulmonaire. FA paroxystique.\n"
    )
    by_code = {c: m.section for m in extractor(text) for c in m.codes}
    assert by_code["I10"] == "antecedents"
    assert by_code["I26.9"] == "conclusion"
    assert by_code["I48.0"] == "conclusion"


def test_measurements_name_disorders_only_outside_the_norm(extractor) -> None:
    assert "E87.68" in codes_of(extractor("Kaliémie à 2,9 mmol/l."), kind="measurement")
    assert "E87.60" in codes_of(extractor("K+ 2,1 mmol/l"), kind="measurement")
    assert not codes_of(extractor("Kaliémie à 4,1 mmol/l."), kind="measurement")
    fevg = codes_of(extractor("ETT : FEVG à 35 %."), kind="measurement")
    assert "I50.02" in fevg and "I50.12" in fevg


def test_a_measurement_beside_the_named_disease_gives_its_french_extension(extractor) -> None:
    mentions = extractor("Insuffisance cardiaque congestive. ETT : FEVG à 32 %.")
    measured = [m.codes for m in mentions if m.kind == "measurement"]
    assert ("I50.02",) in measured and any(len(codes) > 1 for codes in measured)
    alone = extractor("ETT : FEVG à 32 %.")
    assert all(len(m.codes) > 1 for m in alone if m.kind == "measurement")


def test_garbage_and_odd_unicode_give_no_mention(extractor) -> None:
    assert extractor("\x00\x00 ��� 🙂 zzzz qqqq") == []
    assert extractor("") == []


def test_huge_report_is_read_in_segments_with_true_offsets(extractor) -> None:
    from cimcoder.training import mentions as m

    block = "Examen sans particularité. " * 200 + "\n\n"
    text = block * 30 + "CONCLUSION : Embolie pulmonaire.\n"
    assert len(text) > m.MAX_SEGMENT_CHARS
    found = [x for x in extractor(text) if "I26.9" in x.codes]
    assert found and all(text[x.start:x.end].lower() == "embolie pulmonaire" for x in found)


def test_the_lexicon_label_space_holds_what_the_mentions_and_rules_derive() -> None:
    from cimcoder.terminologies import load_terminology
    from cimcoder.training.data import lexicon_codes

    codes = set(lexicon_codes(load_terminology("cim10")))
    assert {"E11.38", "E11.2"} <= codes  # a curated code and its parent
    assert {"E11.30", "E11.70"} <= codes  # insulin-treated siblings (insulin in the report)
    assert {"J15.3", "A41.3"} <= codes  # combination codes (disease + agent)
