"""Phrases learned from coded stays, on a few dozen French notes written here."""

from __future__ import annotations

import math
import time

import pytest

from cimcoder.training.vocabulary import (
    NEGATION_CUES,
    STOPWORDS,
    LearnedPhrase,
    VocabularyError,
    fold,
    load_phrases,
    mine_phrases,
    save_phrases,
    tokenize,
)

LABELS = {
    "I50.1": ["Insuffisance ventriculaire gauche"],
    "I10": ["Hypertension essentielle (primitive)"],
    "J18.1": ["Pneumopathie lobaire, sans précision"],
    "I48.0": ["Fibrillation auriculaire paroxystique"],
    "E11.9": ["Diabète sucré de type 2, sans complication"],
}

# (report, codes). The ward writes "IC gauche décompensée" for I50.1, always with a denied
# fever; every report says "patient"; the FA is coded once only.
STAYS: list[tuple[str, list[str]]] = [
    (
        "Patient de 82 ans admis pour IC gauche décompensée. Pas de fièvre. HTA traitée.",
        ["I50.1", "I10"],
    ),
    ("Patient admis pour dyspnée : IC gauche décompensée, sans fièvre.", ["I50.1"]),
    ("Patient connu. IC gauche décompensée sur écart de régime. Pas de fièvre.", ["I50.1"]),
    ("Chez ce patient, IC gauche décompensée. Absence de fièvre.", ["I50.1", "E11.9"]),
    (
        "Patient de 75 ans. IC gauche décompensée ; œdèmes des membres inférieurs. Sans fièvre.",
        ["I50.1"],
    ),
    ("Patient insuffisant cardiaque : IC gauche décompensée. Pas de fièvre.", ["I50.1", "I10"]),
    ("Patient hypertendu. Hypertension artérielle mal équilibrée, pas d'IC.", ["I10"]),
    ("Patient suivi pour hypertension artérielle, pas de fièvre.", ["I10"]),
    ("Patient avec hypertension artérielle et diabète de type 2.", ["I10", "E11.9"]),
    ("Patient diabétique de type 2 sous metformine, diabète équilibré.", ["E11.9"]),
    ("Patient diabétique de type 2, HbA1c à 7 %. Metformine poursuivie.", ["E11.9"]),
    (
        "Patient fébrile. Pneumopathie franche lobaire aiguë à pneumocoque du lobe inférieur droit.",
        ["J18.1"],
    ),
    ("Patient toussant. Pneumopathie franche lobaire aiguë, antibiothérapie.", ["J18.1"]),
    ("Patient fébrile. Pneumopathie franche lobaire aiguë droite.", ["J18.1"]),
    ("Patient admis pour palpitations : fibrillation auriculaire paroxystique.", ["I48.0"]),
    ("Patient admis pour chute mécanique, bilan sans particularité.", []),
    ("Patient admis pour malaise, aucun antécédent notable.", []),
    ("Patient revu en consultation, pas de douleur thoracique.", []),
]


def _mine(stays: list[tuple[str, list[str]]] = STAYS, **options: object) -> list[LearnedPhrase]:
    texts = [text for text, _ in stays]
    codes = [c for _, c in stays]
    return mine_phrases(texts, codes, LABELS, **options)  # type: ignore[arg-type]


def _by_phrase(phrases: list[LearnedPhrase], code: str) -> dict[str, LearnedPhrase]:
    return {p.phrase: p for p in phrases if p.code == code}


def test_fold_strips_accents_case_and_punctuation() -> None:
    assert fold("Décompensée") == "decompensee"
    assert fold("IC  gauche -- DÉCOMPENSÉE !") == "ic gauche decompensee"
    assert fold("Œdème aigu du poumon") == "oedeme aigu du poumon"
    assert fold("HbA1c à 7,5 %") == "hba1c a 7 5"


def test_tokenize_stops_at_clause_breaks_and_drops_single_letters() -> None:
    assert tokenize("IC gauche. Pas d'HTA ; FA : oui\nDT2") == [
        ["ic", "gauche"],
        ["pas", "hta"],
        ["fa"],
        ["oui"],
        ["dt2"],
    ]
    assert tokenize("Diabète de type 2") == [["diabete", "de", "type", "2"]]


def test_learns_the_ward_phrase_aligned_with_the_label() -> None:
    learned = _by_phrase(_mine(), "I50.1")
    # Six stays hold the phrase, all coded I50.1: aligned with the label through "gauche".
    assert learned["ic gauche decompensee"] == LearnedPhrase(
        code="I50.1",
        phrase="ic gauche decompensee",
        support=6,
        precision=1.0,
        npmi=1.0,  # phrase and code occur in exactly the same stays
        aligned=True,
    )
    # Its sub-phrases occur in the same six stays only: the longer phrase says it all.
    for inner in ("ic gauche", "gauche decompensee", "gauche", "decompensee", "ic"):
        assert inner not in learned


def test_support_precision_and_npmi_are_stay_frequencies() -> None:
    stays = [
        ("Hypertension artérielle.", ["I10"]),
        ("Hypertension artérielle connue.", ["I10"]),
        ("Hypertension artérielle gravidique.", []),
        ("Diabète de type 2.", ["E11.9"]),
    ]
    learned = _by_phrase(_mine(stays), "I10")
    # "hypertension arterielle" in 3 of 4 stays, I10 in 2, both in 2.
    p = learned["hypertension arterielle"]
    assert (p.support, p.precision, p.aligned) == (2, round(2 / 3, 6), True)
    assert p.npmi == pytest.approx(math.log((2 * 4) / (3 * 2)) / -math.log(2 / 4), abs=1e-6)


def test_a_single_co_occurrence_is_not_learned() -> None:
    phrases = _mine()
    # The FA stay is the only one coded I48.0.
    assert not [p for p in phrases if p.code == "I48.0"]
    assert not [p for p in phrases if "fibrillation" in p.phrase]
    assert _by_phrase(_mine(min_support=1), "I48.0")


def test_a_word_of_every_report_is_not_learned() -> None:
    phrases = _mine()
    assert not [p for p in phrases if p.phrase == "patient"]
    assert all(p.precision >= 0.5 and p.support >= 2 for p in phrases)


def test_negations_and_stopwords_stay_out_of_phrases() -> None:
    phrases = _mine(min_precision=0.0, min_npmi_unaligned=-1.0, max_phrases_per_code=1000)
    assert phrases
    for p in phrases:
        tokens = p.phrase.split()
        assert not set(tokens) & NEGATION_CUES, p
        assert tokens[0] not in STOPWORDS and tokens[-1] not in STOPWORDS, p
        assert not all(t.isdigit() for t in tokens), p
    # "sans fièvre" / "pas de fièvre" follow every I50.1 report. Only the cue is kept out:
    # "fievre" itself is still counted there (no negation scope, see the module docstring).
    assert not [p for p in phrases if "sans" in p.phrase or "pas" in p.phrase]


def test_unaligned_phrases_need_a_strong_association() -> None:
    strict = _mine(min_npmi_unaligned=1.01)
    assert strict
    assert all(p.aligned for p in strict)
    # "metformine" shares no stem with "Diabète sucré de type 2", but occurs only with E11.9:
    # in 2 of 18 stays, E11.9 in 4, npmi = log(2 * 18 / (2 * 4)) / -log(2 / 18) = 0.684.
    learned = _by_phrase(_mine(), "E11.9")["metformine"]
    assert (learned.support, learned.precision, learned.aligned) == (2, 1.0, False)
    assert learned.npmi == pytest.approx(math.log(4.5) / math.log(9), abs=1e-6)
    assert "metformine" not in _by_phrase(_mine(min_npmi_unaligned=0.7), "E11.9")
    assert _by_phrase(_mine(min_npmi_unaligned=0.7), "E11.9")["diabetique de type 2"].aligned


def test_at_most_max_phrases_per_code_aligned_first() -> None:
    phrases = _mine(min_npmi_unaligned=-1.0, max_phrases_per_code=2)
    by_code: dict[str, list[LearnedPhrase]] = {}
    for p in phrases:
        by_code.setdefault(p.code, []).append(p)
    assert by_code
    assert all(len(v) <= 2 for v in by_code.values())
    assert "ic gauche decompensee" in {p.phrase for p in by_code["I50.1"]}


def test_output_is_sorted_and_deterministic() -> None:
    phrases = _mine()
    assert phrases == sorted(phrases, key=lambda p: (p.code, -p.npmi, p.phrase))
    assert _mine() == phrases
    assert _mine(STAYS[::-1]) == phrases
    assert _mine(STAYS[7:] + STAYS[:7]) == phrases
    # Codes listed twice or in another order within a stay change nothing either.
    assert _mine([(t, [*reversed(c), *c]) for t, c in STAYS]) == phrases


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(VocabularyError, match="2 texts but 1 code sets"):
        mine_phrases(["IC gauche", "HTA"], [["I50.1"]], LABELS)
    with pytest.raises(VocabularyError):
        mine_phrases("IC gauche", [["I50.1"]], LABELS)
    with pytest.raises(VocabularyError):
        _mine(min_precision=1.5)
    assert mine_phrases([], [], LABELS) == []


def test_save_load_round_trip(tmp_path) -> None:
    phrases = _mine()
    path = tmp_path / "phrases.tsv"
    save_phrases(phrases, path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "code\tphrase\tsupport\tprecision\tnpmi\taligned"
    assert "I50.1\tic gauche decompensee\t6\t1.0\t1.0\ttrue" in lines
    assert load_phrases(path) == phrases


def test_load_refuses_a_malformed_file(tmp_path) -> None:
    path = tmp_path / "phrases.tsv"
    path.write_text("code\tphrase\nI10\thta\n", encoding="utf-8")
    with pytest.raises(VocabularyError, match="header"):
        load_phrases(path)
    path.write_text(
        "code\tphrase\tsupport\tprecision\tnpmi\taligned\nI10\thta\tdeux\t1.0\t1.0\ttrue\n",
        encoding="utf-8",
    )
    with pytest.raises(VocabularyError, match="line 2"):
        load_phrases(path)
    with pytest.raises(VocabularyError):
        load_phrases(tmp_path / "missing.tsv")


@pytest.mark.slow
def test_mines_the_shipped_codiesp_training_set(capsys: pytest.CaptureFixture[str]) -> None:
    from cimcoder.terminologies import load_cim10
    from cimcoder.training.corpora import load_dataset

    corpus = load_dataset("codiesp-fr/train")
    cim10 = load_cim10()
    texts = [stay.text for stay in corpus]
    code_sets = [stay.codes for stay in corpus]
    labels: dict[str, list[str]] = {}
    for code in {c for codes in code_sets for c in codes}:
        concept = cim10.get(code)
        if concept is not None:
            labels[code] = sorted({concept.long_label, concept.label} - {""})

    start = time.perf_counter()
    phrases = mine_phrases(texts, code_sets, labels)
    assert time.perf_counter() - start < 30
    assert len(phrases) >= 100
    assert any(p.aligned for p in phrases)
    assert all(p.support >= 2 and p.precision >= 0.5 for p in phrases)
    assert capsys.readouterr() == ("", "")
