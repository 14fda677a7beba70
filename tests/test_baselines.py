"""Baselines on tiny French clinical notes: TF-IDF + logistic regression, edsnlp matcher."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cimcoder.training.baselines import (
    BaselineError,
    EdsnlpMatcherScorer,
    MatcherParams,
    TfidfLrParams,
    TfidfLrScorer,
    fit_baseline,
)
from cimcoder.training.config import RunConfig, dump_config, load_config
from cimcoder.training.labels import LabelSpace
from cimcoder.training.registry import build_model, load_scorer, registered_models

# A few dozen short notes over five codes; several phrasings per code so that a model
# must generalise to held-out wordings.
NOTES: list[tuple[str, set[str]]] = [
    ("Pneumopathie franche lobaire aiguë à pneumocoque, fièvre à 39.", {"J13"}),
    ("Pneumopathie à pneumocoque du lobe inférieur droit traitée par amoxicilline.", {"J13"}),
    ("Foyer de pneumopathie à pneumocoque, antigénurie positive.", {"J13"}),
    ("Infection pulmonaire à pneumocoque avec condensation alvéolaire.", {"J13"}),
    ("Pneumocoque isolé dans les hémocultures, pneumopathie lobaire.", {"J13"}),
    ("Patient diabétique de type 2 sous metformine, HbA1c à 8 %.", {"E11.9"}),
    ("Diabète de type 2 non insulinotraité, équilibre glycémique correct.", {"E11.9"}),
    ("Diabète de type 2 ancien, glycémie à jeun élevée, metformine majorée.", {"E11.9"}),
    ("Suivi d'un diabète de type 2 sous antidiabétiques oraux.", {"E11.9"}),
    ("Découverte d'un diabète de type 2, HbA1c à 9 %, régime et metformine.", {"E11.9"}),
    ("Hypertension artérielle essentielle traitée par amlodipine.", {"I10"}),
    ("HTA essentielle ancienne sous inhibiteur de l'enzyme de conversion.", {"I10"}),
    ("Hypertension artérielle mal contrôlée, pression à 170/95.", {"I10"}),
    ("Hypertension artérielle connue, traitement antihypertenseur poursuivi.", {"I10"}),
    ("Poussée hypertensive sur hypertension artérielle essentielle.", {"I10"}),
    ("Fracture du col du fémur droit après chute de sa hauteur.", {"S72.0"}),
    ("Fracture cervicale du fémur gauche, prothèse intermédiaire posée.", {"S72.0"}),
    ("Chute à domicile avec fracture du col fémoral, ostéosynthèse.", {"S72.0"}),
    ("Fracture du col du fémur opérée, rééducation à la marche.", {"S72.0"}),
    ("Fracture du col fémoral après chute, anesthésie rachidienne.", {"S72.0"}),
    ("Insuffisance cardiaque congestive décompensée, oedèmes des membres inférieurs.", {"I50.0"}),
    ("Décompensation cardiaque globale, furosémide intraveineux.", {"I50.0"}),
    ("Insuffisance cardiaque avec dyspnée d'effort et BNP élevé.", {"I50.0"}),
    ("Insuffisance cardiaque congestive, cardiomégalie radiologique.", {"I50.0"}),
    ("Oedème pulmonaire sur insuffisance cardiaque, diurétiques.", {"I50.0"}),
    ("Diabète de type 2 et hypertension artérielle essentielle chez un patient âgé.", {"E11.9", "I10"}),
    ("Insuffisance cardiaque congestive chez un hypertendu connu.", {"I50.0", "I10"}),
]

HELD_OUT: list[tuple[str, str]] = [
    ("Pneumopathie lobaire à pneumocoque chez un homme de 70 ans.", "J13"),
    ("Diabète de type 2 déséquilibré sous metformine.", "E11.9"),
    ("Hypertension artérielle essentielle équilibrée.", "I10"),
    ("Chute avec fracture du col du fémur droit.", "S72.0"),
    ("Insuffisance cardiaque congestive, majoration des diurétiques.", "I50.0"),
]


@pytest.fixture(scope="module")
def space() -> LabelSpace:
    return LabelSpace.from_code_sets([sorted(c) for _, c in NOTES])


@pytest.fixture(scope="module")
def tfidf(space: LabelSpace) -> TfidfLrScorer:
    params = TfidfLrParams(min_df=1, max_word_features=5000, max_char_features=5000)
    model = TfidfLrScorer(space, params)
    return model.fit([t for t, _ in NOTES], [sorted(c) for _, c in NOTES])


def test_both_baselines_are_registered() -> None:
    assert {"tfidf_lr", "edsnlp_matcher"} <= set(registered_models())


def test_tfidf_ranks_the_right_code_first_on_unseen_wordings(tfidf: TfidfLrScorer) -> None:
    scores = tfidf.predict_scores([t for t, _ in HELD_OUT])
    assert scores.shape == (len(HELD_OUT), len(tfidf.labels))
    assert scores.dtype == np.float32
    assert np.all((scores >= 0) & (scores <= 1))
    top = [tfidf.labels[int(i)] for i in scores.argmax(axis=1)]
    assert top == [code for _, code in HELD_OUT]
    # The winning code is clearly ahead, not a tie among near-constant scores.
    for row in scores:
        best, second = np.sort(row)[-1], np.sort(row)[-2]
        assert best - second > 0.1


def test_tfidf_explain_points_at_the_supporting_words(tfidf: TfidfLrScorer) -> None:
    text = "Chute avec fracture du col du fémur droit."
    spans = tfidf.explain(text, ["S72.0"], top_k=2)["S72.0"]
    assert 1 <= len(spans) <= 2
    words = " ".join(text[s:e].lower() for s, e in spans)
    assert any(w in words for w in ("fracture", "fémur", "col", "chute"))
    for s, e in spans:
        assert 0 <= s < e <= len(text)


def test_tfidf_save_load_gives_identical_scores(tfidf: TfidfLrScorer, tmp_path: Path) -> None:
    tfidf.save(tmp_path)
    again = TfidfLrScorer.load(tmp_path)
    texts = [t for t, _ in HELD_OUT]
    np.testing.assert_array_equal(tfidf.predict_scores(texts), again.predict_scores(texts))
    assert again.labels == tfidf.labels


def test_code_with_a_single_class_gets_a_constant_score() -> None:
    space = LabelSpace(terminology="cim10", edition=None, codes=["I10", "R52", "Z99.9"])
    texts = ["Hypertension artérielle.", "Douleur thoracique.", "HTA et douleur."]
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=bool)
    model = TfidfLrScorer(space, TfidfLrParams(min_df=1)).fit(texts, y)
    scores = model.predict_scores(["Hypertension", "Douleur abdominale"])
    assert np.all(scores[:, 2] == 0.0)


def test_tfidf_refuses_targets_of_the_wrong_shape(space: LabelSpace) -> None:
    with pytest.raises(BaselineError, match="targets of shape"):
        TfidfLrScorer(space, TfidfLrParams(min_df=1)).fit(["a b", "c d"], np.zeros((2, 1)))


def test_unknown_model_param_fails_loudly(space: LabelSpace) -> None:
    config = load_config(None, ["model.name=tfidf_lr", "model.params.max_iterations=3"])
    with pytest.raises(BaselineError, match=r"model.params.max_iterations: unknown key"):
        build_model(config, space)


# ------------------------------------------------------------------ edsnlp matcher


@pytest.fixture(scope="module")
def matcher() -> EdsnlpMatcherScorer:
    space = LabelSpace(
        terminology="cim10",
        edition=None,
        codes=["E11.9", "E11", "I10", "J18.9", "I50.0"],
        train_counts={"E11.9": 5, "I10": 3},
    )
    return EdsnlpMatcherScorer(space, MatcherParams())


def test_matcher_finds_type_2_diabetes(matcher: EdsnlpMatcherScorer) -> None:
    text = "Patiente suivie pour un diabète de type 2 depuis 2010."
    scores = matcher.predict_scores([text])[0]
    col = {c: i for i, c in enumerate(matcher.labels)}
    assert scores[col["E11"]] == 1.0
    # The mention names E11; the more specific E11.9 gets a lower, rank-only score.
    assert 0 < scores[col["E11.9"]] < 1.0
    assert scores[col["I10"]] == 0.0
    spans = matcher.explain(text, ["E11"])["E11"]
    assert [text[s:e].lower() for s, e in spans] == ["diabète de type 2"]


@pytest.mark.parametrize(
    "text",
    [
        "Pas de diabète de type 2.",
        "Sa mère a un diabète de type 2.",
        "Suspicion de diabète de type 2 à confirmer.",
    ],
)
def test_matcher_drops_negated_family_and_hypothetical_mentions(
    matcher: EdsnlpMatcherScorer, text: str
) -> None:
    scores = matcher.predict_scores([text])[0]
    assert not scores.any(), dict(zip(matcher.labels, scores.tolist(), strict=True))


def test_matcher_scores_a_specific_code_and_its_category(matcher: EdsnlpMatcherScorer) -> None:
    scores = matcher.predict_scores(["Insuffisance cardiaque congestive. HTA essentielle."])[0]
    col = {c: i for i, c in enumerate(matcher.labels)}
    assert scores[col["I50.0"]] == 1.0
    assert scores[col["E11"]] == 0.0


# ------------------------------------------------------------------ harness


def _write_dataset(root: Path, notes: list[tuple[str, set[str]]]) -> Path:
    path = root / "notes.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i, (text, codes) in enumerate(notes):
            record = {"id": f"sejour-{i}", "text": text, "codes": sorted(codes)}
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


def test_fit_baseline_writes_a_loadable_run_folder(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "dev").mkdir()
    train = _write_dataset(tmp_path / "train", NOTES)
    dev = _write_dataset(tmp_path / "dev", [(t, {c}) for t, c in HELD_OUT])
    config = load_config(
        None,
        [
            "model.name=tfidf_lr",
            f"data.train={train}",
            f"data.dev={dev}",
            f"output_dir={tmp_path / 'runs'}",
            "tracking.experiment=notes",
            "tracking.run_name=tfidf",
            "model.params.min_df=1",
        ],
    )
    run_dir = fit_baseline(config)
    assert run_dir == tmp_path / "runs" / "notes" / "tfidf"
    for name in ("config.yaml", "labels.json", "baseline.joblib", "metrics.json"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["map"] == pytest.approx(1.0)
    assert metrics["p@1"] == pytest.approx(1.0)
    # Every held-out code was seen 5-7 times in training: all five gold codes are "rare".
    assert metrics["n_gold_rare"] == 5 and metrics["n_gold_frequent"] == 0
    assert metrics["threshold_rule"].startswith("global, max micro-F1")
    scorer = load_scorer(run_dir)
    assert isinstance(scorer, TfidfLrScorer)
    scores = scorer.predict_scores(["Fracture du col du fémur après une chute."])
    assert scorer.labels[int(scores[0].argmax())] == "S72.0"


def test_fit_baseline_refuses_a_transformer_config(tmp_path: Path) -> None:
    config = load_config(None, ["model.name=plm_icd", f"output_dir={tmp_path}"])
    with pytest.raises(BaselineError, match="not fitted in one call"):
        fit_baseline(config)


def test_shipped_baseline_configs_are_valid() -> None:
    root = Path(__file__).resolve().parents[1] / "configs" / "codiesp-fr"
    for name in ("tfidf_lr", "edsnlp_matcher", "hybrid", "hybrid-codiesp"):
        config = load_config(root / f"{name}.yaml")
        assert config.model.name == name.split("-")[0]
        assert config.experiment_name == "codiesp-fr"
        space = LabelSpace(terminology="cim10", edition=None, codes=["I10"])
        build_model(config, space)  # params validate against the model's own config class


def test_dump_config_round_trip_keeps_params(tmp_path: Path) -> None:
    config = load_config(None, ["model.name=tfidf_lr", "model.params.C=3.5"])
    dump_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml").model.params == {"C": 3.5}


def _notes_config(tmp_path: Path, run_name: str) -> RunConfig:
    (tmp_path / "train").mkdir(exist_ok=True)
    (tmp_path / "dev").mkdir(exist_ok=True)
    train = _write_dataset(tmp_path / "train", NOTES)
    dev = _write_dataset(tmp_path / "dev", [(t, {c}) for t, c in HELD_OUT] + NOTES[-2:])
    return load_config(None, [
        "model.name=tfidf_lr", f"data.train={train}", f"data.dev={dev}",
        f"output_dir={tmp_path / 'runs'}", "tracking.experiment=notes",
        f"tracking.run_name={run_name}", "model.params.min_df=1",
    ])


def test_train_fits_a_baseline_by_the_same_path_as_fit_baseline(tmp_path: Path) -> None:
    from cimcoder.training import train

    by_fit = fit_baseline(_notes_config(tmp_path, "fit"))
    by_train = train(_notes_config(tmp_path, "train"))
    timings = {"fit_seconds", "score_seconds"}
    metrics = [
        {k: v for k, v in json.loads((run / "metrics.json").read_text()).items() if k not in timings}
        for run in (by_fit, by_train)
    ]
    assert metrics[0] == metrics[1]
    # One metrics.json: what the baselines wrote and what the gradient loop writes.
    assert {"map", "micro_f1", "p@5", "threshold", "threshold_rule", "recall_rare", "validation",
            "validation_metric", "dev_metric", "n_train", "n_validation", "num_labels",
            "gold_outside_label_space"} | timings <= set(json.loads((by_fit / "metrics.json").read_text()))
    assert metrics[0]["validation_metric"] == "map" and metrics[0]["dev_metric"] == metrics[0]["map"]
    assert (metrics[0]["n_train"], metrics[0]["n_validation"]) == (len(NOTES), len(HELD_OUT) + 2)


def test_baseline_threshold_is_the_reports_best_f1_cut(tmp_path: Path) -> None:
    from cimcoder.metrics import best_f1_threshold

    run = fit_baseline(_notes_config(tmp_path, "cut"))
    metrics = json.loads((run / "metrics.json").read_text())
    dev = [(t, {c}) for t, c in HELD_OUT] + NOTES[-2:]
    scorer = load_scorer(run)
    scores = scorer.predict_scores([t for t, _ in dev])
    y = np.asarray(scorer.label_space.encode([sorted(c) for _, c in dev]), dtype=bool)
    threshold, f1 = best_f1_threshold(y, scores)
    assert metrics["threshold"] == pytest.approx(threshold)
    assert metrics["micro_f1"] == pytest.approx(f1)
    decided = scores >= threshold
    assert metrics["micro_precision"] == pytest.approx((decided & y).sum() / decided.sum())


def test_fit_dual_logistic_matches_scikit_learn(space: LabelSpace) -> None:
    # The same objective: balanced class weights, L2 of strength 1/C, intercept not penalised.
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from cimcoder.training.baselines import fit_dual_logistic

    x = TfidfVectorizer(sublinear_tf=True).fit_transform([t for t, _ in NOTES]).astype(np.float64)
    y = np.asarray(space.encode([sorted(c) for _, c in NOTES]), dtype=bool)
    kernel = (x @ x.T).toarray()
    alpha, intercepts, _ = fit_dual_logistic(kernel, y, C=10.0, balanced=True, max_iter=1000, tol=1e-8)
    for j in range(y.shape[1]):
        clf = LogisticRegression(C=10.0, class_weight="balanced", tol=1e-10, max_iter=10_000).fit(x, y[:, j])
        w = x.T @ alpha[:, j]
        np.testing.assert_allclose(w, clf.coef_[0], atol=2e-3 * np.abs(clf.coef_).max())
        assert intercepts[j] == pytest.approx(clf.intercept_[0], abs=2e-3)
        np.testing.assert_allclose(x @ w + intercepts[j], clf.decision_function(x), atol=1e-2)
