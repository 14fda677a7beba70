"""Automation report: JSON figures on synthetic stays, HTML twin, MLflow logging hook."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cimcoder.eval.policy import AUTO, DecisionPolicy
from cimcoder.eval.report import REPORT_HTML, REPORT_JSON, build_report, render_html, write_report
from test_eval_synthetic import FREQUENT, synthetic_scores

TITLES = {
    "I10": "Hypertension essentielle (primitive)",
    "I50.0": "Insuffisance cardiaque congestive",
    "E11.9": "Diabète sucré de type 2, sans complication",
    "J13": "Pneumopathie due à Streptococcus pneumoniae",
}


def make_report(n_fit: int = 2000, n_eval: int = 600) -> tuple[dict, DecisionPolicy, tuple]:
    y, s, labels = synthetic_scores(n_fit, seed=10)
    policy = DecisionPolicy.fit(y, s, labels, fitted_on={"data": "synthétique", "half": "A"})
    y_new, s_new, _ = synthetic_scores(n_eval, seed=11)
    n_gold = y_new.sum(axis=1) + (np.arange(n_eval) % 10 == 0)  # 1 stay in 10 has an extra code
    bands = {c: ("frequent" if c in FREQUENT else "rare") for c in labels}
    bands["K59.0"] = "unseen"
    principal = [labels[int(np.argmax(row))] if row.any() else None for row in y_new]
    report = build_report(
        y_new, s_new, labels, policy, stay_ids=[f"sejour-{i:04d}" for i in range(n_eval)],
        n_gold=n_gold, principal=principal, bands=bands, code_titles=TITLES,
        dataset="synthétique/B", run="runs/test/plm",
        target_sweep=[{"target_precision": 0.95, "measured_precision": 0.952, "automation_rate": 0.7}],
    )
    return report, policy, (y_new, s_new, labels, n_gold)


@pytest.fixture(scope="module")
def built() -> tuple[dict, DecisionPolicy, tuple]:
    return make_report()


def test_headline_figures_match_a_direct_count(built) -> None:
    report, policy, (y, s, labels, n_gold) = built
    h = report["headline"]
    auto = policy.decide(policy.calibrate(s, labels), labels) == AUTO
    right = int((y & auto).sum())
    assert h["n_auto"] == int(auto.sum())
    assert h["n_auto_correct"] == right
    assert h["auto_precision"] == right / auto.sum()
    # Codes outside the label space are counted as not auto-coded.
    assert h["n_true_codes"] == int(n_gold.sum()) == int(y.sum()) + 60
    assert h["automation_rate"] == right / n_gold.sum()
    assert h["automation_rate_in_space"] == right / y.sum()
    assert h["auto_precision_lower_bound"] < h["auto_precision"]
    assert 0 <= h["share_stays_fully_auto_coded"] <= h["share_stays_without_review"] <= 1
    assert h["goal"] == 0.9 and h["target_precision"] == 0.95


def test_auto_errors_are_listed_most_confident_first(built) -> None:
    report, *_ = built
    errors = report["auto_errors"]
    assert len(errors) == min(report["headline"]["n_auto_errors"], 200)
    assert errors, "the synthetic model makes some confident errors"
    assert set(errors[0]) == {"stay_id", "code", "label", "score", "raw_score"}
    assert [e["score"] for e in errors] == sorted((e["score"] for e in errors), reverse=True)
    assert errors[0]["stay_id"].startswith("sejour-")


def test_curves_breakdowns_and_reliability(built) -> None:
    report, *_ = built
    curve = report["automation_curve"]["overall"]
    assert len(curve) > 10
    shares = [p["share"] for p in curve]
    assert shares == sorted(shares)  # lower thresholds automate more
    assert set(report["automation_curve"]["by_band"]) == {"frequent", "rare", "unseen"}
    assert {"IV", "IX", "X", "XI", "XIV"} <= set(report["automation_curve"]["by_chapter"])
    assert report["reliability"]["after"]["ece"] < report["reliability"]["before"]["ece"]
    met = report["metrics"]
    assert met["micro_precision"] == pytest.approx(report["headline"]["auto_precision"])
    assert met["auto_or_review"]["micro_recall"] >= met["micro_recall"]
    assert set(report["bands"]) == {"frequent", "rare", "unseen"}
    assert report["bands"]["rare"]["recall"] == met["by_band"]["rare"]["micro_recall"]
    assert report["automation"]["headline"] == report["headline"]
    assert 0 < met["principal_diagnosis_accuracy"] <= 1
    assert "IX" in met["by_chapter"] and "rare" in met["by_band"]


def test_written_json_and_html_twins(tmp_path: Path, built) -> None:
    report, *_ = built

    class FakeTracker:  # records what would go to MLflow
        def __init__(self) -> None:
            self.metrics: dict = {}
            self.dirs: list = []

        def log_metrics(self, metrics, step=None) -> None:
            self.metrics.update(metrics)

        def log_artifacts(self, local_dir, artifact_path=None) -> None:
            self.dirs.append((Path(local_dir), artifact_path))

    tracker = FakeTracker()
    j, h = write_report(report, tmp_path / "eval", tracker=tracker, artifact_path="eval/synth")
    assert j.name == REPORT_JSON and h.name == REPORT_HTML
    again = json.loads(j.read_text(encoding="utf-8"))
    assert again["headline"] == report["headline"]
    page = h.read_text(encoding="utf-8")
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    assert page.count("<svg") >= 3
    assert "Rapport d'automatisation du codage" in page
    assert tracker.metrics["auto.automation_rate"] == report["headline"]["automation_rate"]
    assert tracker.dirs == [(tmp_path / "eval", "eval/synth")]


def test_html_escapes_stay_ids_and_labels() -> None:
    report, *_ = make_report(n_fit=1500, n_eval=200)
    report["auto_errors"].insert(0, {"stay_id": "<img src=x>", "code": "I10",
                                     "label": "HTA & <b>", "score": 0.99, "raw_score": 0.99})
    page = render_html(report)
    assert "<img src=x>" not in page and "&lt;img src=x&gt;" in page


def test_verdict_when_nothing_reaches_the_target() -> None:
    # A model no better than chance ("Pas d'HTA connue" scored like "HTA") certifies nothing.
    rng = np.random.default_rng(3)
    y = rng.random((300, 4)) < 0.3
    s = rng.random((300, 4))
    labels = ["I10", "E11.9", "J13", "I50.0"]
    policy = DecisionPolicy.fit(y, s, labels, min_positives=10)
    report = build_report(y, s, labels, policy, stay_ids=[f"s{i}" for i in range(300)])
    assert report["headline"]["n_auto"] == 0 and report["headline"]["auto_precision"] is None
    page = render_html(report)
    assert "rien n'est auto-codé" in page
