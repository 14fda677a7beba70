"""Predictor: decoding, PMSI roles and flags, evidence, CIM-11, mismatch refusals.

The model is real: the `tfidf_lr` baseline fitted (through cimcoder.training's public API) on
a few dozen French notes over a handful of codes, with a decision policy fitted by
cimcoder.eval. `build_tiny_run` is reused by the CLI and API tests.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

# Clinical phrases per code; each training note mixes one to three of them.
PHRASES: dict[str, list[str]] = {
    "I50.09": [
        "insuffisance cardiaque congestive décompensée",
        "décompensation cardiaque globale sur insuffisance cardiaque congestive",
        "œdèmes des membres inférieurs et insuffisance cardiaque congestive",
    ],
    "I10": [
        "hypertension artérielle essentielle traitée",
        "HTA essentielle ancienne",
        "hypertension artérielle connue sous amlodipine",
    ],
    "J13": [
        "pneumopathie franche lobaire aiguë à pneumocoque",
        "pneumonie à pneumocoque du lobe inférieur droit",
    ],
    "B95.3": [
        "antigénurie pneumocoque positive",
        "hémocultures positives à Streptococcus pneumoniae",
    ],
    "E11.98": [
        "diabète de type 2 sous metformine",
        "diabète de type 2 non insulinotraité équilibré",
    ],
    "N17.9": [
        "insuffisance rénale aiguë fonctionnelle",
        "insuffisance rénale aiguë avec créatinine à 250",
    ],
    "W19.0": [
        "chute de sa hauteur à domicile",
        "chute mécanique au domicile",
    ],
}
FILLERS = [
    "Patient de 78 ans hospitalisé en médecine interne.",
    "Patiente de 64 ans adressée par les urgences.",
    "Retour à domicile prévu avec son médecin traitant.",
    "Bonne évolution clinique sous traitement.",
]
# Pneumococcal pneumonia and its germ go together, as in real stays.
TOGETHER = {"J13": "B95.3"}


def tiny_corpus(n: int = 48, seed: int = 7) -> tuple[list[str], list[list[str]]]:
    rng = random.Random(seed)
    codes = sorted(PHRASES)
    texts, code_sets = [], []
    for i in range(n):
        chosen = rng.sample(codes, k=1 + i % 3)
        for a, b in TOGETHER.items():
            if a in chosen and b not in chosen:
                chosen.append(b)
        parts = [rng.choice(FILLERS)] + [rng.choice(PHRASES[c]).capitalize() + "." for c in chosen]
        parts.append(rng.choice(FILLERS))
        texts.append(" ".join(parts))
        code_sets.append(sorted(chosen))
    return texts, code_sets


def build_tiny_run(run_dir: Path, *, with_policy: bool = True) -> Path:
    """Fit tfidf_lr on the tiny corpus and write a complete run folder (+ policy.json)."""
    from cimcoder.eval.policy import DecisionPolicy
    from cimcoder.terminologies import load_terminology
    from cimcoder.training import LabelSpace, build_model, dump_config
    from cimcoder.training.config import ModelConfig, RunConfig

    texts, code_sets = tiny_corpus()
    edition = load_terminology("cim10").edition
    label_space = LabelSpace.from_code_sets(code_sets, terminology="cim10", edition=edition)
    config = RunConfig(
        model=ModelConfig(
            name="tfidf_lr",
            params={"min_df": 1, "max_char_features": 0, "word_ngram_max": 2, "max_iter": 100},
        )
    )
    scorer = build_model(config, label_space)
    scorer.fit(texts, code_sets)  # type: ignore[attr-defined]
    run_dir.mkdir(parents=True, exist_ok=True)
    scorer.save(run_dir)
    dump_config(config, run_dir / "config.yaml")
    if with_policy:
        dev_texts, dev_sets = tiny_corpus(n=40, seed=11)
        y = np.asarray(label_space.encode(dev_sets), dtype=bool)
        scores = scorer.predict_scores(dev_texts)
        policy = DecisionPolicy.fit(
            y, scores, label_space.codes, target_precision=0.9, min_positives=3
        )
        policy.save(run_dir / "policy.json")
    return run_dir


NOTE = (
    "Patiente de 81 ans admise pour insuffisance cardiaque congestive décompensée. "
    "Antécédents : hypertension artérielle essentielle traitée. "
    "Antigénurie pneumocoque positive."
)


def test_contract_of_one_stay(predictor) -> None:  # type: ignore[no-untyped-def]
    result = predictor.predict_one(NOTE)
    data = json.loads(result.model_dump_json())
    assert set(data) == {"id", "codes", "model"}
    assert len(data["codes"]) == len(predictor.labels)  # fewer labels than 30: all of them
    for code in data["codes"]:
        assert {"code", "label", "score", "decision", "role", "cim11", "evidence"} <= set(code)
        assert code["decision"] in {"auto", "review", "reject"}
        assert code["role"] in {"DP", "DAS"}
        assert 0.0 <= code["score"] <= 1.0
    scores = [c["score"] for c in data["codes"]]
    assert scores == sorted(scores, reverse=True)
    model = data["model"]
    assert model["architecture"] == "tfidf_lr"
    assert model["terminology"] == "cim10"
    assert model["edition"].startswith("cim10-fr")
    assert model["calibrated"] is True
    assert model["thresholds_version"] == predictor.policy.version["hash"][:12]
    assert model["input"] == {"chars": len(NOTE), "chars_read": len(NOTE), "truncated": False}


def test_heart_failure_ranks_first_with_label_and_cim11(predictor) -> None:  # type: ignore[no-untyped-def]
    result = predictor.predict_one(NOTE)
    assert {c.code for c in result.codes[:3]} == {"I50.09", "I10", "B95.3"}
    dp = next(c for c in result.codes if c.role == "DP")
    assert dp.code in {"I50.09", "I10"}
    top = next(c for c in result.codes if c.code == "I50.09")
    assert top.label.startswith("Insuffisance cardiaque congestive")
    assert top.decision != "reject"
    # The crosswalk maps CIM-10 I50.0x to CIM-11 BD10 (congestive heart failure).
    assert any(code.startswith("BD10") for code in top.cim11)


def test_evidence_points_at_the_words_of_the_report(predictor) -> None:  # type: ignore[no-untyped-def]
    result = predictor.predict_one(NOTE)
    by_code = {c.code: c for c in result.codes}
    for code in result.codes:
        for span in code.evidence:
            assert NOTE[span.start : span.end] == span.text
    heart = " ".join(e.text.lower() for e in by_code["I50.09"].evidence)
    assert "cardiaque" in heart or "congestive" in heart
    hta = " ".join(e.text.lower() for e in by_code["I10"].evidence)
    assert "hypertension" in hta or "essentielle" in hta or "arterielle" in hta or "artérielle" in hta
    rejected = [c for c in result.codes if c.decision == "reject"]
    assert all(c.evidence == [] for c in rejected)


def test_dp_is_best_code_allowed_as_dp_and_germ_is_flagged(predictor) -> None:  # type: ignore[no-untyped-def]
    # The germ code B95.3 is "interdit en DP" (ATIH type 1): even when it scores first, the
    # proposed DP is the best suggested code allowed as DP.
    text = "Hémocultures positives à Streptococcus pneumoniae. Antigénurie pneumocoque positive."
    result = predictor.predict_one(text)
    roles = {c.code: c.role for c in result.codes}
    flags = {c.code: c.flags for c in result.codes}
    assert "interdit en DP" in flags["B95.3"]
    assert roles["B95.3"] == "DAS"
    assert "cause externe : en DAS uniquement" in flags["W19.0"]
    dps = [c for c in result.codes if c.role == "DP"]
    assert len(dps) <= 1
    if dps:
        assert dps[0].code not in {"B95.3", "W19.0"}
        suggested = [c for c in result.codes if c.decision != "reject"]
        allowed = [c for c in suggested if not c.flags]
        if allowed:
            assert dps[0].code == allowed[0].code


def test_stay_of_several_documents_scores_their_joined_text(predictor) -> None:  # type: ignore[no-untyped-def]
    from cimcoder.inference import StayInput

    docs = ["Chute mécanique au domicile.", "Insuffisance rénale aiguë fonctionnelle."]
    stay = StayInput.from_documents("sejour-9", docs)
    result = predictor.predict_one(stay)
    assert result.id == "sejour-9"
    assert result.model.input.chars == len(docs[0]) + 2 + len(docs[1])
    top2 = {c.code for c in result.codes[:2]}
    assert top2 == {"W19.0", "N17.9"}
    for code in result.codes:
        for span in code.evidence:
            assert stay.text[span.start : span.end] == span.text


def test_empty_report_is_a_clear_error(predictor) -> None:  # type: ignore[no-untyped-def]
    from cimcoder.inference import EmptyReportError

    with pytest.raises(EmptyReportError, match="empty"):
        predictor.predict(["Pas d'HTA connue.", "   \n "])


def test_without_policy_everything_is_review_and_said_so(tiny_run: Path, tmp_path: Path) -> None:
    from cimcoder.inference import Predictor

    bare = tmp_path / "bare"
    shutil.copytree(tiny_run, bare)
    (bare / "policy.json").unlink()
    result = Predictor.load(bare).predict_one(NOTE)
    assert {c.decision for c in result.codes} == {"review"}
    assert result.model.calibrated is False
    assert result.model.thresholds_version is None
    assert "policy.json" in (result.model.note or "")


def test_refuses_a_label_space_of_another_edition(tiny_run: Path, tmp_path: Path) -> None:
    from cimcoder.inference import ModelMismatchError, Predictor

    other = tmp_path / "other-edition"
    shutil.copytree(tiny_run, other)
    labels = json.loads((other / "labels.json").read_text(encoding="utf-8"))
    labels["edition"] = "cim10-fr-atih-2019"
    (other / "labels.json").write_text(json.dumps(labels), encoding="utf-8")
    with pytest.raises(ModelMismatchError, match="cim10-fr-atih-2019"):
        Predictor.load(other)


def test_refuses_a_policy_of_another_model(tiny_run: Path, tmp_path: Path) -> None:
    from cimcoder.errors import CimcoderError
    from cimcoder.inference import Predictor

    other = tmp_path / "other-policy"
    shutil.copytree(tiny_run, other)
    policy = json.loads((other / "policy.json").read_text(encoding="utf-8"))
    policy["labels"] = policy["labels"][:-1]
    policy["codes"].pop(next(reversed(policy["codes"])))
    (other / "policy.json").write_text(json.dumps(policy), encoding="utf-8")
    with pytest.raises(CimcoderError, match=r"label space|policy"):
        Predictor.load(other)


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    from cimcoder.inference import Predictor, PredictorError

    with pytest.raises(PredictorError, match="not found"):
        Predictor.load(tmp_path / "no-such-run")


def test_same_text_same_answer(predictor) -> None:  # type: ignore[no-untyped-def]
    a = predictor.predict([NOTE, "Diabète de type 2 sous metformine."])
    b = predictor.predict(["Diabète de type 2 sous metformine."])
    assert a[1].model_dump() == b[0].model_dump()


def test_unregistered_champion_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cimcoder.errors import CimcoderError
    from cimcoder.inference import DEFAULT_MODEL_URI, Predictor

    # An empty local MLflow store: no model is registered as cimcoder@champion yet.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path / 'registry.db'}")
    with pytest.raises(CimcoderError, match="cimcoder@champion"):
        Predictor.load(DEFAULT_MODEL_URI)
