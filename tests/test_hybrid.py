"""The hybrid coder on a tiny French corpus it is fitted on here: ranking, safety (never
auto-code a code whose mentions are all negated, hypothetical, a relative's or past
history), flags, DP choice, persistence, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from cimcoder.training.labels import LabelSpace
from cimcoder.training.models.hybrid import FLAG_NO_MENTION, HybridError, HybridParams, HybridScorer

CASES: list[tuple[str, list[str]]] = [
    ("Embolie pulmonaire bilatérale sous anticoagulants. HTA traitée.", ["I26.9", "I10"]),
    ("Embolie pulmonaire segmentaire. Pas de fibrillation auriculaire.", ["I26.9"]),
    ("Patient hypertendu. Embolie pulmonaire proximale confirmée.", ["I26.9", "I10"]),
    ("Embolie pulmonaire post-opératoire traitée par héparine.", ["I26.9"]),
    ("FA paroxystique découverte aux urgences, anticoagulée.", ["I48.0"]),
    ("Fibrillation auriculaire paroxystique. HTA ancienne.", ["I48.0", "I10"]),
    ("FA paroxystique symptomatique, cardioversion.", ["I48.0"]),
    ("Passage en FA paroxystique. Pas d'embolie pulmonaire.", ["I48.0"]),
    ("Pneumopathie franche lobaire aiguë à pneumocoque.", ["J13"]),
    ("Pneumopathie à pneumocoque, antigénurie positive. HTA.", ["J13", "I10"]),
    ("Pneumonie à pneumocoque traitée par amoxicilline.", ["J13"]),
    ("Pneumopathie à pneumocoque chez un patient hypertendu.", ["J13", "I10"]),
    ("DT2 sous metformine, équilibré. HTA traitée.", ["E11.98", "I10"]),
    ("Diabète de type 2 déséquilibré, HbA1c 9 %.", ["E11.98"]),
    ("DT2 connu. Pneumopathie à pneumocoque.", ["E11.98", "J13"]),
    ("Diabète de type 2 non insulinotraité. FA paroxystique.", ["E11.98", "I48.0"]),
    ("HTA essentielle mal contrôlée, adaptation du traitement.", ["I10"]),
    ("Hypertension artérielle sévère, crise hypertensive.", ["I10"]),
    ("Embolie pulmonaire chez une diabétique de type 2.", ["I26.9", "E11.98"]),
    ("HTA et DT2, bilan annuel.", ["I10", "E11.98"]),
]


@pytest.fixture(scope="module")
def space() -> LabelSpace:
    return LabelSpace.from_code_sets(
        [c for _, c in CASES], terminology="cim10", extra_codes=["I26.0", "I48.1", "E11.90", "R50.9", "F10.2", "J18.9", "J18.1", "Z92.1", "O80.0", "O70.1", "E11.28", "E11.38", "E11.78", "E14.2"]
    )


@pytest.fixture(scope="module")
def hybrid(space: LabelSpace) -> HybridScorer:
    params = HybridParams(
        folds=2, label_terms=False, cim11_titles=False, tfidf={"min_df": 1, "max_iter": 50},
        max_iter=40, min_samples_leaf=2, knn_k=3,
    )
    model = HybridScorer(space, params, seed=3)
    return model.fit([t for t, _ in CASES], [c for _, c in CASES])


def probabilities(labels: list[str], values: dict[str, float]) -> np.ndarray:
    """A probability vector over `labels`: `values` where given, 0 elsewhere."""
    probs = np.zeros(len(labels))
    for code, p in values.items():
        probs[labels.index(code)] = p
    return probs


def context_of(model: HybridScorer, text: str):
    """What the predictor's rules read of one report (its mentions, where they are written)."""
    from cimcoder.inference.predictor import _Context

    _, index = model.predict_scores_with_evidence([text])
    return _Context.of(index, 0)


def rejected(labels: list[str]) -> np.ndarray:
    """A decision vector with every code rejected."""
    return np.full(len(labels), "reject", dtype=object)


def top(model: HybridScorer, text: str, k: int = 2) -> list[str]:
    scores = model.predict_scores([text])[0]
    return [model.labels[j] for j in np.argsort(-scores, kind="stable")[:k]]


def test_ranks_the_codes_written_in_a_new_report(hybrid: HybridScorer) -> None:
    assert set(top(hybrid, "Embolie pulmonaire massive. HTA connue et traitée.")) == {"I26.9", "I10"}
    assert top(hybrid, "FA paroxystique, mise sous anticoagulant.", 1) == ["I48.0"]


def test_negated_mention_is_never_auto_coded_and_says_why(hybrid: HybridScorer) -> None:
    text = "Pas d'embolie pulmonaire à l'angioscanner. FA paroxystique."
    scores, index = hybrid.predict_scores_with_evidence([text])
    j_ep, j_fa = hybrid.labels.index("I26.9"), hybrid.labels.index("I48.0")
    assert index.vetoes[0, j_ep] and not index.vetoes[0, j_fa]
    assert index.flags(0, ["I26.9", "I48.0"]) == {"I26.9": ["mention niée"]}
    assert scores[0, j_fa] > scores[0, j_ep]
    # The evidence of the affirmed code is the mention itself.
    (start, end), *_ = index.spans(0, ["I48.0"])["I48.0"]
    assert text[start:end] == "FA paroxystique"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("Suspicion d'embolie pulmonaire, non confirmée.", "hypothèse non confirmée"),
        ("Sa mère a fait une embolie pulmonaire.", "antécédent familial"),
    ],
)
def test_qualified_mentions_veto_auto_coding(hybrid: HybridScorer, text: str, reason: str) -> None:
    _, index = hybrid.predict_scores_with_evidence([text])
    j = hybrid.labels.index("I26.9")
    assert index.vetoes[0, j]
    assert reason in index.flags(0, ["I26.9"])["I26.9"]


def test_garbage_is_never_auto_coded(hybrid: HybridScorer) -> None:
    scores, vetoes = hybrid.predict_scores_and_vetoes(["zzzz qqqq xxxx 12345 ###", "\x00\x00\x00"])
    assert vetoes.all()
    assert np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()


def test_a_status_read_from_a_drug_is_never_auto_coded(hybrid: HybridScorer) -> None:
    # apixaban -> Z92.1 (long-term anticoagulation): the DIM decides whether the PMSI codes it.
    _, vetoes = hybrid.predict_scores_and_vetoes(["FA paroxystique sous apixaban 5 mg x2."])
    labels = hybrid.labels
    assert vetoes[0, labels.index("Z92.1")] and not vetoes[0, labels.index("I48.0")]


def test_dp_weights_follow_the_conclusion_and_demote_explained_symptoms(hybrid: HybridScorer) -> None:
    text = "MOTIF : HTA connue.\n\nCONCLUSION : Embolie pulmonaire bilatérale.\n"
    _, index = hybrid.predict_scores_with_evidence([text])
    w = index.dp_weights(0, ["I26.9", "I10"])
    assert w["I26.9"] > 1.0 and w["I10"] > 1.0
    past = "ANTÉCÉDENTS :\n- HTA\n\nCONCLUSION : Embolie pulmonaire.\n"
    _, index = hybrid.predict_scores_with_evidence([past])
    w = index.dp_weights(0, ["I26.9", "I10"])
    assert w["I26.9"] > w["I10"]


def test_save_load_gives_identical_scores(hybrid: HybridScorer, tmp_path) -> None:
    text = "Pneumopathie à pneumocoque. DT2."
    hybrid.save(tmp_path)
    again = HybridScorer.load(tmp_path)
    np.testing.assert_array_equal(hybrid.predict_scores([text]), again.predict_scores([text]))
    assert (tmp_path / "learned_phrases.tsv").is_file()


def test_fitting_is_deterministic(space: LabelSpace, hybrid: HybridScorer) -> None:
    again = HybridScorer(space, hybrid.params, seed=3).fit([t for t, _ in CASES[::-1]], [c for _, c in CASES[::-1]])
    text = "Embolie pulmonaire. HTA. DT2."
    np.testing.assert_allclose(hybrid.predict_scores([text]), again.predict_scores([text]), atol=1e-6)


def test_bad_params_and_tiny_data_are_refused(space: LabelSpace) -> None:
    from cimcoder.training.models.hybrid import _parse

    with pytest.raises(HybridError, match=r"model\.params\.fold"):
        _parse({"fold": 3})
    with pytest.raises(HybridError, match="at least"):
        HybridScorer(space, HybridParams(folds=3)).fit(["HTA"], [["I10"]])
    with pytest.raises(HybridError, match="not fitted"):
        HybridScorer(space, HybridParams()).predict_scores(["HTA"])


def test_predictor_flags_and_roles(hybrid: HybridScorer) -> None:
    from cimcoder.inference.predictor import Predictor

    predictor = Predictor(hybrid, name="hybrid-test")
    [answer] = predictor.predict(["CONCLUSION : Embolie pulmonaire. Pas de FA paroxystique."])
    by_code = {c.code: c for c in answer.codes}
    assert by_code["I48.0"].flags[-1:] == ["mention niée"]
    assert by_code["I48.0"].decision == "reject"  # the record denies it: not even reviewed
    assert by_code["I26.9"].decision == "review"
    unwritten = [c for c in answer.codes if FLAG_NO_MENTION in c.flags]
    assert unwritten and all(c.decision == "reject" for c in unwritten)
    assert [c.code for c in answer.codes if c.role == "DP"] == ["I26.9"]
    assert all(c.decision != "auto" for c in answer.codes)  # no policy: review at best


def test_dp_is_learned_where_training_stays_have_roles(space: LabelSpace, hybrid: HybridScorer) -> None:
    # The first code of each case is its DP (the embolism, not the hypertension).
    learned = HybridScorer(space, hybrid.params, seed=3).fit(
        [t for t, _ in CASES], [c for _, c in CASES], principal=[c[0] for _, c in CASES]
    )
    assert learned.dp_model is not None and hybrid.dp_model is None
    _, index = learned.predict_scores_with_evidence(["Embolie pulmonaire. HTA traitée."])
    w = index.dp_weights(0, ["I26.9", "I10"])
    assert all(0.0 <= v <= 1.0 for v in w.values())
    assert w["I26.9"] > w["I10"]


def test_works_in_the_cim11_label_space() -> None:
    from cimcoder.terminologies import load_crosswalk

    crosswalk = load_crosswalk()

    def to11(code: str) -> str:
        return next(t.code.split("&")[0] for t in crosswalk.to_cim11(code) if t.primary)

    cases = [(t, [to11(c) for c in codes]) for t, codes in CASES]
    space = LabelSpace.from_code_sets([c for _, c in cases], terminology="cim11")
    params = HybridParams(folds=2, label_terms=False, cim11_titles=False,
                          tfidf={"min_df": 1, "max_iter": 50}, max_iter=40, min_samples_leaf=2, knn_k=3)
    model = HybridScorer(space, params, seed=3).fit([t for t, _ in cases], [c for _, c in cases])
    assert to11("I10") == "BA00.Z"
    assert "BA00.Z" in top(model, "HTA mal équilibrée, majoration du traitement.", 2)
    _, index = model.predict_scores_with_evidence(["Pas d'HTA connue. Embolie pulmonaire."])
    assert index.flags(0, ["BA00.Z"]) == {"BA00.Z": ["mention niée"]}


def test_an_unspecified_code_beside_a_specified_sibling_is_not_auto_coded(hybrid: HybridScorer) -> None:
    from cimcoder.inference.predictor import Predictor

    predictor = Predictor(hybrid, name="hybrid-test")
    labels = predictor.labels
    decisions = np.full(len(labels), "reject", dtype=object)
    decisions[labels.index("E11.98")] = "auto"  # "... non insulinotraité ou sans précision"
    decisions[labels.index("E11.90")] = "review"  # insulin-treated: the two cannot both hold
    decisions[labels.index("I10")] = "auto"
    vague = predictor._unspecified_rule(decisions)
    assert vague == {labels.index("E11.98")}
    assert decisions[labels.index("E11.98")] == "review" and decisions[labels.index("I10")] == "auto"
    alone = np.full(len(labels), "reject", dtype=object)
    alone[labels.index("E11.98")] = "auto"
    assert predictor._unspecified_rule(alone) == set() and alone[labels.index("E11.98")] == "auto"
    # Both "sans précision" (J18.1: of the germ), but J18.9 says nothing of the form either.
    pneumonia = np.full(len(labels), "reject", dtype=object)
    pneumonia[[labels.index("J18.9"), labels.index("J18.1")]] = "auto"
    assert predictor._unspecified_rule(pneumonia) == {labels.index("J18.9")}


def test_the_dp_goes_to_the_specified_sibling_not_the_unspecified_code(hybrid: HybridScorer) -> None:
    from cimcoder.inference.predictor import Predictor

    predictor = Predictor(hybrid, name="hybrid-test")
    labels = predictor.labels
    vague, precise = labels.index("E11.98"), labels.index("E11.90")
    probs = probabilities(labels, {"E11.98": 0.9, "E11.90": 0.5})
    pool = [vague, precise]
    assert predictor._principal(pool, probs, None)[0] == vague
    decisions = np.full(len(labels), "reject", dtype=object)
    decisions[pool] = "review"
    less_precise = predictor._unspecified_rule(decisions)
    assert predictor._principal(pool, probs, None, less_precise)[0] == precise


def test_a_more_precise_code_the_report_names_is_suggested_and_takes_the_dp(hybrid: HybridScorer) -> None:
    from cimcoder.inference.predictor import Predictor, _Context

    # The ranking kept "pneumopathie, sans précision" (J18.9) and left out J18.1, rare in the
    # training stays; the report says "lobaire": the DIM codes J18.1.
    predictor = Predictor(hybrid, name="hybrid-test")
    labels = predictor.labels
    vague, precise = labels.index("J18.9"), labels.index("J18.1")
    probs = probabilities(labels, {"J18.9": 0.9, "J18.1": 0.05})
    for text, expected in (
        ("CONCLUSION : Pneumopathie lobaire droite. HTA.\n", {precise: vague}),
        ("CONCLUSION : Pneumopathie droite. HTA.\n", {}),  # nothing more precise written
    ):
        context = context_of(hybrid, text)
        decisions = rejected(labels)
        decisions[vague] = "auto"
        finer = predictor._finer_sibling_rule(decisions, probs, context)
        assert finer == expected
        assert decisions[precise] == ("review" if finer else "reject")
    # The conclusion says "communautaire" (J18.9), the course "lobaire": the DP is J18.1,
    # with J18.9's probability and its place at the head of the conclusion.
    letter = "ÉVOLUTION : pneumopathie lobaire droite.\n\nCONCLUSION : Pneumopathie communautaire. HTA.\n"
    _, index = hybrid.predict_scores_with_evidence([letter])
    pool = [vague, precise]
    decisions = np.full(len(labels), "reject", dtype=object)
    decisions[pool] = ["auto", "review"]  # as the rule leaves them
    less_precise = predictor._unspecified_rule(decisions)
    assert less_precise == {vague} and decisions[vague] == "review"
    dp, _ = predictor._principal(pool, probs, _Context.of(index, 0), less_precise, {precise: vague})
    assert dp == precise


def test_a_disease_written_with_its_cause_is_reviewed_not_auto_coded(hybrid: HybridScorer) -> None:
    from cimcoder.inference.predictor import Predictor

    predictor = Predictor(hybrid, name="hybrid-test")
    labels = predictor.labels
    vague, cause = labels.index("J18.9"), labels.index("J13")
    for text, expected in (
        ("CONCLUSION : Pneumonie secondaire à une pneumopathie à pneumocoque.\n", {vague}),
        ("CONCLUSION : Pneumonie. Pneumopathie à pneumocoque.\n", set()),  # no link written
    ):
        context = context_of(hybrid, text)
        decisions = rejected(labels)
        decisions[[vague, cause]] = "auto"
        assert predictor._explained_rule(decisions, context) == expected
        assert decisions[vague] == ("review" if expected else "auto") and decisions[cause] == "auto"


def test_a_disease_written_with_its_agent_gets_the_combination_code(hybrid: HybridScorer) -> None:
    from cimcoder.inference.predictor import Predictor

    # CIM-10 codes "pneumonie ... à pneumocoque" J13, not J18.1 and B95.3.
    predictor = Predictor(hybrid, name="hybrid-test")
    labels = predictor.labels
    lobar, combined = labels.index("J18.1"), labels.index("J13")
    for text, expected in (
        ("CONCLUSION : Pneumonie lobaire droite à pneumocoque, hémocultures positives.\n", {combined: lobar}),
        ("CONCLUSION : Pneumonie lobaire droite. Portage de pneumocoque.\n", {}),  # not its agent
    ):
        context = context_of(hybrid, text)
        decisions = rejected(labels)
        decisions[lobar] = "auto"
        found, parts = predictor._combination_rule(decisions, context)
        assert found == expected
        assert decisions[combined] == ("review" if found else "reject")
        assert decisions[lobar] == ("review" if found else "auto") and (lobar in parts) == bool(found)


def test_a_diagnosis_the_conclusion_states_is_reviewed_however_low_it_ranks(hybrid: HybridScorer) -> None:
    from cimcoder.inference.predictor import Predictor

    # ATIH guide: the conclusion states the diagnoses retained; a code rare in the training
    # stays, ranked low, still reaches the coder when the conclusion names it.
    predictor = Predictor(hybrid, name="hybrid-test")
    labels = predictor.labels
    lobar, fever = labels.index("J18.1"), labels.index("R50.9")
    for text, expected in (
        ("CONCLUSION : Pneumopathie lobaire droite. Fièvre.\n", {lobar}),  # no symptom
        ("ÉVOLUTION : pneumopathie lobaire droite.\n", set()),  # not retained as a conclusion
        ("CONCLUSION : Pas de pneumopathie lobaire.\n", set()),  # denied
    ):
        context = context_of(hybrid, text)
        decisions = rejected(labels)
        assert predictor._stated_rule(decisions, context) == expected
        assert set(np.flatnonzero(decisions == "review")) == expected
        assert decisions[fever] == "reject"


def test_the_dp_is_where_the_report_puts_it_not_how_sure_the_model_is(hybrid: HybridScorer) -> None:
    from cimcoder.inference.predictor import Predictor, _Context

    # A diagnosis rare in the training stays ranks low; the conclusion opens with it.
    predictor = Predictor(hybrid, name="hybrid-test")
    labels = predictor.labels
    lobar, embolism = labels.index("J18.1"), labels.index("I26.9")
    _, index = hybrid.predict_scores_with_evidence(
        ["CONCLUSION : Pneumopathie lobaire droite. Embolie pulmonaire.\n"])
    probs = probabilities(labels, {"J18.1": 0.05, "I26.9": 0.95})
    assert predictor._principal([embolism, lobar], probs, _Context.of(index, 0))[0] == lobar
    assert predictor._principal([embolism, lobar], probs, None)[0] == embolism  # no places: probability


def test_a_normal_delivery_code_beside_a_complication_is_neither_auto_nor_dp(hybrid: HybridScorer) -> None:
    from cimcoder.inference.predictor import Predictor

    predictor = Predictor(hybrid, name="hybrid-test")
    labels = predictor.labels
    delivery, tear = labels.index("O80.0"), labels.index("O70.1")
    decisions = np.full(len(labels), "reject", dtype=object)
    decisions[[delivery, tear]] = "auto"
    normal = predictor._delivery_rule(decisions)
    assert normal == {delivery} and decisions[delivery] == "review" and decisions[tear] == "auto"
    probs = probabilities(labels, {"O80.0": 0.9, "O70.1": 0.4})
    assert predictor._principal([delivery, tear], probs, None, normal)[0] == tear
    alone = np.full(len(labels), "reject", dtype=object)
    alone[delivery] = "auto"
    assert predictor._delivery_rule(alone) == set() and alone[delivery] == "auto"


def test_a_diabetes_with_two_kinds_of_complications_is_e11_7(hybrid: HybridScorer) -> None:
    from cimcoder.inference.predictor import Predictor

    predictor = Predictor(hybrid, name="hybrid-test")
    labels = predictor.labels
    dt2, multiple = labels.index("E11.98"), labels.index("E11.78")
    probs = probabilities(labels, {"E11.98": 0.9, "E11.78": 0.01})
    for text, expected in (
        ("CONCLUSION : DT2 avec néphropathie diabétique et rétinopathie diabétique.\n", {multiple: dt2}),
        ("CONCLUSION : DT2 avec néphropathie diabétique.\n", {}),  # one kind: E11.28 says it
    ):
        context = context_of(hybrid, text)
        decisions = rejected(labels)
        decisions[dt2] = "auto"
        found, single = predictor._diabetes_rule(decisions, probs, context)
        assert found == expected
        assert (decisions[multiple], decisions[dt2]) == (("review", "review") if found else ("reject", "auto"))
        if found:  # "sans complication" leaves the DP to the multiple-complications code
            assert single == {dt2}
            assert predictor._principal([dt2, multiple], probs, context, single, found)[0] == multiple


def test_an_untyped_diabetes_code_beside_a_typed_one_is_rejected(hybrid: HybridScorer) -> None:
    from cimcoder.inference.predictor import FLAG_DIABETES_TYPED, Predictor

    predictor = Predictor(hybrid, name="hybrid-test")
    labels = predictor.labels
    typed, untyped = labels.index("E11.28"), labels.index("E14.2")
    decisions = np.full(len(labels), "reject", dtype=object)
    decisions[[typed, untyped]] = "review"
    assert predictor._untyped_diabetes_rule(decisions) == {untyped}
    assert decisions[untyped] == "reject" and decisions[typed] == "review"
    alone = np.full(len(labels), "reject", dtype=object)
    alone[untyped] = "review"
    assert predictor._untyped_diabetes_rule(alone) == set() and alone[untyped] == "review"
    assert "E14" in FLAG_DIABETES_TYPED


def test_a_code_the_atih_subdivides_is_sent_to_review_not_auto_coded(hybrid: HybridScorer) -> None:
    from cimcoder.inference.predictor import FLAG_SUBDIVIDED, Predictor

    # F10.2 "syndrome de dépendance" is accepted by the PMSI, yet CIM-10 FR splits it into
    # F10.20 ... F10.26: the coder picks the subdivision the record supports.
    predictor = Predictor(hybrid, name="hybrid-test")
    labels = predictor.labels
    decisions = np.full(len(labels), "reject", dtype=object)
    decisions[labels.index("F10.2")] = "auto"
    decisions[labels.index("I10")] = "auto"
    assert predictor._subdivided_rule(decisions) == {labels.index("F10.2")}
    assert decisions[labels.index("F10.2")] == "review" and decisions[labels.index("I10")] == "auto"
    assert FLAG_SUBDIVIDED.startswith("subdivisé")


def test_the_guide_dp_is_the_first_diagnosis_of_the_conclusion_or_the_reason_for_the_stay(
    hybrid: HybridScorer,
) -> None:
    letter = (
        "ANTÉCÉDENTS :\n- HTA\n- DT2 sous metformine\n\n"
        "CONCLUSION : Pneumopathie à pneumocoque. FA paroxystique.\n"
    )
    _, index = hybrid.predict_scores_with_evidence([letter])
    w = index.dp_weights(0, ["J13", "I48.0", "I10", "E11.98"])
    assert w["J13"] > w["I48.0"] > w["I10"]  # conclusion order; a treated chronic disease last
    said = "Patient hospitalisé pour une embolie pulmonaire. HTA et FA paroxystique connues."
    _, index = hybrid.predict_scores_with_evidence([said])
    w = index.dp_weights(0, ["I26.9", "I48.0", "I10"])
    assert w["I26.9"] == max(w.values())


def test_a_symptom_written_with_its_cause_hands_the_cause_its_place(hybrid: HybridScorer) -> None:
    # ATIH guide: the symptom is no DP when its cause is known; the cause, written right after
    # it ("fièvre sur pneumopathie"), takes the symptom's place at the head of the conclusion.
    letter = "MOTIF : HTA.\n\nCONCLUSION : Fièvre sur pneumopathie à pneumocoque. HTA.\n"
    _, index = hybrid.predict_scores_with_evidence([letter])
    w = index.dp_weights(0, ["R50.9", "J13", "I10"])
    assert w["J13"] > w["I10"] > w["R50.9"]
    assert w["R50.9"] < 1.0  # explained: none of its place counts


def test_a_chronic_disease_at_the_head_of_the_conclusion_is_the_stay_s_subject(
    hybrid: HybridScorer,
) -> None:
    # Listed in the antécédents, a treated chronic disease is a DAS; but when the conclusion
    # opens with it (its decompensation), it is what the stay was for.
    letter = "ANTÉCÉDENTS :\n- DT2 sous metformine\n\nCONCLUSION : DT2 déséquilibré. HTA.\n"
    _, index = hybrid.predict_scores_with_evidence([letter])
    w = index.dp_weights(0, ["E11.98", "I10"])
    assert w["E11.98"] > w["I10"]


def _links(text: str, spans: list[tuple[str, str]]) -> dict[str, str]:
    from cimcoder.terminologies import load_terminology
    from cimcoder.training.mentions import Mention
    from cimcoder.training.models.hybrid import _causal_links, _StayView

    mentions = []
    for code, phrase in spans:
        start = text.index(phrase)
        mentions.append(Mention((code,), start, start + len(phrase), "synonym", section="conclusion"))
    view = _StayView(text, mentions, np.zeros(1), np.zeros(1), {})
    return _causal_links(view, [c for c, _ in spans], load_terminology("cim10").get)


def test_an_unspecified_disease_gives_way_only_to_a_cause_stated_as_such() -> None:
    hypothyroidism = [("E03.9", "Hypothyroïdie"), ("E06.3", "thyroïdite auto-immune")]
    assert _links("Hypothyroïdie profonde par thyroïdite auto-immune.", hypothyroidism) == {"E03.9": "E06.3"}
    assert _links("Hypothyroïdie secondaire à une thyroïdite auto-immune.", hypothyroidism) == {"E03.9": "E06.3"}
    assert _links("Hypothyroïdie. Une thyroïdite auto-immune.", hypothyroidism) == {}  # two sentences
    # "sur" names the ground, not the cause, of a disease: the heart failure stays the DP
    heart = [("I50.9", "Insuffisance cardiaque"), ("I48.9", "fibrillation auriculaire")]
    assert _links("Insuffisance cardiaque sur fibrillation auriculaire.", heart) == {}
    # nor does a disease of another chapter take the place of an unspecified one
    other = [("F05.9", "Confusion"), ("N39.0", "infection urinaire")]
    assert _links("Confusion secondaire à une infection urinaire.", other) == {}
    # a symptom takes any link, "de" or "sur" included
    ascites = [("R18", "Ascite"), ("K70.3", "cirrhose alcoolique")]
    assert _links("Ascite d'une cirrhose alcoolique.", ascites) == {"R18": "K70.3"}


def test_the_dp_does_not_depend_on_evidence(hybrid: HybridScorer) -> None:
    from cimcoder.inference.predictor import Predictor

    predictor = Predictor(hybrid, name="hybrid-test")
    text = "ANTÉCÉDENTS :\n- HTA\n\nCONCLUSION : Embolie pulmonaire bilatérale.\n"
    with_evidence, without = (predictor.predict([text], evidence=e)[0] for e in (True, False))
    roles = [[(c.code, c.role) for c in a.codes] for a in (with_evidence, without)]
    assert roles[0] == roles[1] and ("I26.9", "DP") in roles[0]
    assert all(not c.evidence for c in without.codes)


def test_near_duplicates_share_a_cross_fitting_fold(space: LabelSpace, hybrid: HybridScorer) -> None:
    from cimcoder.folds import group_key
    from cimcoder.training.corpora.synth import iter_stays
    from cimcoder.training.models.hybrid import _fold_of

    stays = [s.stay for s in iter_stays(40, seed=5)]
    by_template: dict[str, set[int]] = {}
    for stay in stays:
        assert stay.template is not None and group_key(stay) == stay.template
        by_template.setdefault(stay.template, set()).add(_fold_of(group_key(stay), 3, 13))
    assert all(len(folds) == 1 for folds in by_template.values())
    assert len(set().union(*by_template.values())) == 3  # and the templates spread over folds
    with pytest.raises(HybridError, match="one group per report"):
        HybridScorer(space, hybrid.params).fit([t for t, _ in CASES], [c for _, c in CASES], groups=["a"])


def test_a_symptom_the_conclusion_explains_is_not_suggested(hybrid: HybridScorer) -> None:
    from cimcoder.inference.predictor import Predictor

    predictor = Predictor(hybrid, name="hybrid-test")
    explained = "HISTOIRE : fièvre à 39 °C.\n\nCONCLUSION : Pneumopathie à pneumocoque.\n"
    kept = "HISTOIRE : toux.\n\nCONCLUSION : Fièvre. Pneumopathie à pneumocoque.\n"
    decisions = [
        {c.code: c.decision for c in predictor.predict([text])[0].codes}.get("R50.9")
        for text in (explained, kept)
    ]
    assert decisions[0] in (None, "reject")  # explained by the retained pneumonia
    assert decisions[1] == "review"  # the doctor retained it in the conclusion too


def test_a_more_general_mention_does_not_auto_code_the_codes_under_it(hybrid: HybridScorer) -> None:
    from cimcoder.training.mentions import Mention
    from cimcoder.training.models.hybrid import _StayView, candidates_and_features

    general = Mention(("I26",), 0, 17, "label")  # "embolie pulmonaire": which I26.x is not said
    specific = Mention(("I26.9",), 20, 54, "label")
    n = len(hybrid.labels)
    strict = hybrid.params.model_copy(update={"auto_requires_mention": True})

    def vetoes(mentions: list[Mention]) -> dict[str, bool]:
        by_code = {c: [m for m in mentions if c in m.codes] for m in mentions for c in m.codes}
        view = _StayView("x" * 60, mentions, np.zeros(n), np.zeros(n), {}, by_code)
        cols, _, veto = candidates_and_features(
            view, hybrid.label_space, hybrid._hier(), hybrid._code_info(), strict
        )
        return {hybrid.labels[j]: bool(v) for j, v in zip(cols, veto, strict=True)}

    assert vetoes([general])["I26.9"] and vetoes([general])["I26.0"]
    both = vetoes([general, specific])
    assert not both["I26.9"] and both["I26.0"]
    # One phrase naming every code of its category says no more than the category.
    many = Mention(("I48.0", "I48.1", "I48.2"), 0, 27, "label_variant")
    assert all(vetoes([many])[c] for c in ("I48.0", "I48.1"))
    assert not vetoes([Mention(("I48.0",), 0, 15, "abbreviation")])["I48.0"]
