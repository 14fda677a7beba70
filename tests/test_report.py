"""Automation report: figures on synthetic stays, the JSON contract, HTML twin, MLflow hook."""

from __future__ import annotations

import json
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest
from test_eval_synthetic import FREQUENT, synthetic_scores

from cimcoder.eval.metrics import macro_prf, micro_prf
from cimcoder.eval.policy import AUTO, REVIEW, DecisionPolicy
from cimcoder.eval.report import (
    REPORT_HTML,
    REPORT_JSON,
    AutoError,
    Report,
    build_report,
    read_report,
    render_html,
    write_report,
)

ROOT = Path(__file__).resolve().parents[1]

TITLES = {
    "I10": "Hypertension essentielle (primitive)",
    "I50.0": "Insuffisance cardiaque congestive",
    "E11.9": "Diabète sucré de type 2, sans complication",
    "J13": "Pneumopathie due à Streptococcus pneumoniae",
}


def make_report(n_fit: int = 2000, n_eval: int = 600) -> tuple[Report, DecisionPolicy, tuple]:
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
def built() -> tuple[Report, DecisionPolicy, tuple]:
    return make_report()


def test_headline_figures_match_a_direct_count(built) -> None:
    report, policy, (y, s, labels, n_gold) = built
    h = report.headline
    auto = policy.decide(policy.calibrate(s, labels), labels) == AUTO
    right = int((y & auto).sum())
    assert h.n_auto == int(auto.sum())
    assert h.n_auto_correct == right
    assert h.auto_precision == right / auto.sum()
    # Codes outside the label space are counted as not auto-coded.
    assert h.n_true_codes == int(n_gold.sum()) == int(y.sum()) + 60
    assert h.automation_rate == right / n_gold.sum()
    assert h.automation_rate_in_space == right / y.sum()
    assert h.auto_precision_lower_bound is not None and h.auto_precision is not None
    assert h.auto_precision_lower_bound < h.auto_precision
    assert h.share_stays_fully_auto_coded is not None and h.share_stays_without_review is not None
    assert 0 <= h.share_stays_fully_auto_coded <= h.share_stays_without_review <= 1
    assert h.goal == 0.9 and h.target_precision == 0.95


def test_auto_errors_are_listed_most_confident_first(built) -> None:
    report, *_ = built
    errors = report.auto_errors
    assert len(errors) == min(report.headline.n_auto_errors, 200) == report.n_auto_errors_listed
    assert errors, "the synthetic model makes some confident errors"
    assert set(errors[0].model_dump()) == {"stay_id", "code", "label", "score", "raw_score"}
    assert [e.score for e in errors] == sorted((e.score for e in errors), reverse=True)
    assert errors[0].stay_id.startswith("sejour-")


def test_curves_breakdowns_and_reliability(built) -> None:
    report, *_ = built
    curve = report.automation_curve.overall
    assert len(curve) > 10
    shares = [p.share for p in curve]
    assert shares == sorted(shares)  # lower thresholds automate more
    assert set(report.automation_curve.by_band) == {"frequent", "rare", "unseen"}
    assert {"IV", "IX", "X", "XI", "XIV"} <= set(report.automation_curve.by_chapter)
    assert report.automation_curve.by_chapter["IX"].title == "Appareil circulatoire"
    assert report.reliability.after.ece < report.reliability.before.ece
    met = report.metrics
    assert met.auto.micro_precision == pytest.approx(report.headline.auto_precision)
    assert met.auto_or_review.micro_recall is not None and met.auto.micro_recall is not None
    assert met.auto_or_review.micro_recall >= met.auto.micro_recall
    assert set(report.bands) == {"frequent", "rare", "unseen"}
    assert report.bands["rare"].recall == met.by_band["rare"].micro_recall
    assert report.bands["rare"].auto_recall == met.auto.by_band["rare"].micro_recall
    assert report.automation.headline == report.headline
    assert met.principal_diagnosis_accuracy is not None and 0 < met.principal_diagnosis_accuracy <= 1
    assert "IX" in met.by_chapter and "rare" in met.by_band


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
    assert again["headline"] == report.headline.model_dump()
    assert read_report(j) == read_report(j.parent) == report
    page = h.read_text(encoding="utf-8")
    assert "<script" not in page and "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    assert page.count("<svg") >= 3
    assert "Rapport d'automatisation du codage" in page
    assert tracker.metrics["auto.automation_rate"] == report.headline.automation_rate
    assert tracker.metrics["eval.p@5"] == report.metrics.p_at_5
    assert tracker.metrics["eval.auto.micro_f1"] == report.metrics.auto.micro_f1
    assert not any(isinstance(v, bool) for v in tracker.metrics.values())
    assert tracker.dirs == [(tmp_path / "eval", "eval/synth")]


def test_html_escapes_stay_ids_and_labels() -> None:
    report, *_ = make_report(n_fit=1500, n_eval=200)
    error = AutoError(stay_id="<img src=x>", code="I10", label="HTA & <b>", score=0.99, raw_score=0.99)
    report = report.model_copy(update={"auto_errors": [error, *report.auto_errors],
                                       "notes": ["Séjours <script>alert(1)</script>"]})
    page = render_html(report)
    assert "<img src=x>" not in page and "&lt;img src=x&gt;" in page
    assert "HTA &amp; &lt;b&gt;" in page and "<script" not in page


def test_verdict_when_nothing_reaches_the_target() -> None:
    # A model no better than chance ("Pas d'HTA connue" scored like "HTA") certifies nothing.
    rng = np.random.default_rng(3)
    y = rng.random((300, 4)) < 0.3
    s = rng.random((300, 4))
    labels = ["I10", "E11.9", "J13", "I50.0"]
    policy = DecisionPolicy.fit(y, s, labels, min_positives=10, confidence=0.95)
    sweep = [{"target_precision": 0.5, "measured_precision": 0.55, "automation_rate": 0.04, "n_auto": 20},
             {"target_precision": 0.7, "measured_precision": 0.66, "automation_rate": 0.01, "n_auto": 5},
             {"target_precision": 0.95, "measured_precision": None, "automation_rate": 0.0, "n_auto": 0}]
    report = build_report(y, s, labels, policy, stay_ids=[f"s{i}" for i in range(300)],
                          target_sweep=sweep)
    h = report.headline
    assert h.n_auto == 0 and h.auto_precision is None
    assert h.nothing_auto_reason == "model_precision_too_low"
    assert h.min_auto_for_margin == 52  # 52/52 right is the least that certifies 95 %
    assert h.best_target_with_automation is not None
    assert h.best_target_with_automation.target_precision == 0.7
    text = h.statement_fr
    assert "rien n'est auto-codé" in text and "précision du modèle est trop faible" in text
    assert "À une cible plus basse de 70 %, 1,0 % des diagnostics" in text
    assert "À 50 %, ce serait 4,0 %" in text and "objectif national" in text
    page = render_html(report)
    assert "rien n'est auto-codé" in page
    # Without a sweep, the curve of these stays gives the indication.
    bare = build_report(y, s, labels, policy, stay_ids=[f"s{i}" for i in range(300)])
    assert bare.headline.best_target_with_automation is not None
    assert bare.headline.best_target_with_automation.source == "curve"


def test_too_few_stays_is_told_apart_from_a_weak_model() -> None:
    # A perfect model ("HTA" only when HTA is coded) on 30 stays: 30/30 right cannot
    # certify 95 % (52 are needed), so the reason is the amount of data, not the model.
    y = np.zeros((30, 2), dtype=bool)
    y[:, 0] = True
    s = np.where(y, 0.9, 0.1)
    labels = ["I10", "E11.9"]
    policy = DecisionPolicy.fit(y, s, labels, min_positives=5, confidence=0.95,
                                fitted_on={"n_stays": 30, "n_gold_in_space": 30})
    report = build_report(y, s, labels, policy, stay_ids=[f"s{i}" for i in range(30)])
    h = report.headline
    assert h.n_auto == 0 and h.nothing_auto_reason == "too_few_stays"
    assert "trop peu de séjours" in h.statement_fr and "30 séjours" in h.statement_fr


def test_comparison_metrics_use_the_fitted_f1_threshold_on_raw_scores(built) -> None:
    report, policy, (y, s, _, n_gold) = built
    met = report.metrics
    t = policy.f1_threshold
    assert met.f1_threshold == t is not None
    assert met.micro_f1 == pytest.approx(micro_prf(y, s >= t, n_gold).f1)
    assert met.macro_f1 == pytest.approx(macro_prf(y, s >= t).f1)
    # The figures the pipeline's comparison table reads.
    for value in (met.map, met.micro_f1, met.macro_f1, met.p_at_5):
        assert isinstance(value, float)
    for band in ("frequent", "rare", "unseen"):
        assert isinstance(report.bands[band].recall, float)
    # The usual micro-F1 is far above the auto-only one, which trades recall for precision.
    assert met.auto.micro_f1 is not None
    assert met.micro_f1 > met.auto.micro_f1 - 0.2


def tiny_policy_and_stays() -> tuple[DecisionPolicy, np.ndarray, np.ndarray, list[str]]:
    labels = ["I10", "E11.9", "J13"]
    # Fitting stays ("HTA", "DT2", "HTA + pneumopathie à pneumocoque", nothing coded).
    # Pairs by raw score: 0.9 0.8 0.7 (gold) 0.6 0.5 (not) 0.4 (gold) ...; 4 gold codes:
    # F1 after 3 pairs = 6/7, the best (after 6 pairs: 8/10) -> threshold 0.7.
    y_fit = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0]], dtype=bool)
    s_fit = np.array([[0.9, 0.2, 0.1], [0.3, 0.8, 0.2], [0.7, 0.6, 0.4], [0.5, 0.1, 0.35]])
    policy = DecisionPolicy.fit(y_fit, s_fit, labels, calibration="none", min_positives=1)
    # Measured stays: "HTA, diabète de type 2" and "pneumopathie à pneumocoque".
    y = np.array([[1, 1, 0], [0, 0, 1]], dtype=bool)
    s = np.array([[0.75, 0.65, 0.1], [0.7, 0.2, 0.9]])
    return policy, y, s, labels


def test_micro_and_macro_f1_hand_computed() -> None:
    policy, y, s, labels = tiny_policy_and_stays()
    assert policy.f1_threshold == 0.7
    bands = {"I10": "frequent", "E11.9": "frequent", "J13": "rare"}
    # Stay 1 also has a code outside the label space.
    report = build_report(y, s, labels, policy, stay_ids=["s1", "s2"], n_gold=[3, 1], bands=bands)
    met = report.metrics
    # At 0.7: I10 in s1 (right), I10 in s2 (wrong), J13 in s2 (right); E11.9 and the
    # out-of-space code are missed: P = 2/3, R = 2/4.
    assert met.micro_precision == pytest.approx(2 / 3)
    assert met.micro_recall == pytest.approx(2 / 4)
    assert met.micro_f1 == pytest.approx(4 / 7)
    # Per code F1: I10 2/3, E11.9 0, J13 1.
    assert met.macro_f1 == pytest.approx(5 / 9)
    assert report.bands["frequent"].recall == pytest.approx(1 / 2)
    assert report.bands["rare"].recall == pytest.approx(1.0)
    # An explicit threshold (e.g. chosen for an older policy) replaces the policy's.
    other = build_report(y, s, labels, policy, stay_ids=["s1", "s2"], n_gold=[3, 1], f1_threshold=0.6)
    assert other.metrics.micro_recall == pytest.approx(3 / 4)


def test_review_workload_and_what_the_cap_costs(built) -> None:
    report, policy, (_, s, labels, _) = built
    h = report.headline
    d = policy.decide(policy.calibrate(s, labels), labels)
    per_stay = (d == REVIEW).sum(axis=1)
    assert h.max_review_per_stay == policy.max_review_per_stay == 10
    assert h.review_per_stay_mean == pytest.approx(per_stay.mean())
    assert h.review_per_stay_p90 == pytest.approx(np.percentile(per_stay, 90))
    assert per_stay.max() <= 10
    assert h.recall_auto_or_review is not None and h.recall_auto_or_review_uncapped is not None
    assert h.recall_auto_or_review <= h.recall_auto_or_review_uncapped
    assert h.review_per_stay_mean <= h.review_per_stay_mean_uncapped
    rows = h.review_cap_tradeoff
    # The caps with the policy's floor and budget, the policy's cap without its budget (what
    # the budget costs), then nothing at all (the uncapped band of the headline).
    assert policy.review_budget is not None and h.review_budget == policy.review_budget
    assert [r.max_review_per_stay for r in rows] == [5, 10, 20, 50, None, 10, None]
    assert [r.min_review_probability for r in rows] == [0.05] * 6 + [0.0]
    assert [r.review_budget for r in rows] == [policy.review_budget] * 5 + [None, None]
    recalls = [r.recall_auto_or_review for r in rows]
    assert recalls[:5] == sorted(recalls[:5]) and recalls[5] >= recalls[1]
    assert recalls[-1] == max(recalls) == h.recall_auto_or_review_uncapped
    assert [r.policy for r in rows] == [False, True, False, False, False, False, False]
    page = render_html(report)
    assert 'id="review-tradeoff"' in page and "Charge de revue" in page


def test_headline_states_rate_precision_and_target_in_french(built) -> None:
    report, *_ = built
    h = report.headline
    text = h.statement_fr
    assert h.n_auto > 0 and h.nothing_auto_reason is None
    assert h.automation_rate is not None and h.auto_precision is not None
    assert f"{100 * h.automation_rate:.1f} %".replace(".", ",") in text
    assert f"{100 * h.auto_precision:.1f} %".replace(".", ",") in text
    assert "précision cible fixée par le DIM (95 %)" in text and "objectif national" in text
    assert "codes par séjour" in text


def _kpi(page: str, kpi: str) -> str:
    found = re.search(rf'id="{kpi}"><div class="value">([^<]*)</div>', page)
    assert found, kpi
    return found.group(1)


def test_html_shows_the_headline_figures_and_every_section(built) -> None:
    report, *_ = built
    h, page = report.headline, render_html(report)
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert h.automation_rate is not None and h.auto_precision is not None
    assert _kpi(page, "kpi-automation") == f"{100 * h.automation_rate:.1f} %".replace(".", ",")
    assert _kpi(page, "kpi-precision") == f"{100 * h.auto_precision:.1f} %".replace(".", ",")
    assert _kpi(page, "kpi-workload") == f"{h.review_per_stay_mean:.1f}".replace(".", ",")
    assert h.statement_fr in page  # the verdict, apostrophes and all
    assert f"<td>{h.n_true_codes}</td>" in page and f"<td>{h.n_auto_correct} / {h.n_auto_errors}</td>" in page
    for section in ("Charge de revue du codeur", "Cible du DIM contre précision mesurée",
                    "Courbe d'automatisation", "Par chapitre de la CIM-10",
                    "Par fréquence d'apprentissage", "Calibration des scores", "Métriques",
                    "Erreurs d'auto-codage", "Méthode"):
        assert f"<h2>{section}</h2>" in page, section
    # One curve for all codes and one per band; a bar and a table row per chapter.
    curve = page.split('id="automation-curve"')[1].split("</svg>")[0]
    assert curve.count('<polyline class="series"') == 1 + len(report.automation_curve.by_band)
    bars = page.split('id="chapter-bars"')[1].split("</svg>")[0]
    assert bars.count('<rect class="bar"') == len(report.automation_curve.by_chapter)
    chapters = page.split('id="chapter-table"')[1].split("</table>")[0]
    assert chapters.count("<tr>") == 1 + len(report.automation_curve.by_chapter)
    assert "IX – Appareil circulatoire" in chapters
    errors = page.split('id="errors-table"')[1].split("</table>")[0]
    assert errors.count("<tr>") == 1 + len(report.auto_errors)
    dp = report.metrics.principal_diagnosis_accuracy
    assert dp is not None
    assert f"Diagnostic principal classé en tête : {100 * dp:.1f} %".replace(".", ",") in page
    # The policy point sits on the curve: cx/cy of the marker are in the plot area.
    marker = re.search(r'<circle cx="([\d.]+)" cy="([\d.]+)"', curve)
    assert marker and 58 <= float(marker.group(1)) <= 720 - 150 and 30 <= float(marker.group(2)) <= 360 - 46


def test_json_keeps_its_layout(built) -> None:
    report, _, (y, *_) = built
    saved = report.model_dump(mode="json")
    assert list(saved) == ["report", "format", "created_at", "dataset", "run", "policy", "headline",
                           "target_sweep", "auto_errors", "n_auto_errors_listed", "automation_curve",
                           "reliability", "metrics", "bands", "automation", "notes"]
    assert saved["report"] == "cimcoder automation report" and saved["format"] == 1
    assert list(saved["headline"])[:3] == ["goal", "target_precision", "n_true_codes"]
    assert saved["headline"]["statement_fr"] == report.headline.statement_fr
    met = saved["metrics"]
    assert list(met)[:2] == ["decisions", "f1_threshold"]
    assert {"p@1", "r@1", "p@5", "r@5", "p@10", "r@10"} <= set(met) and "p_at_5" not in met
    assert set(met["by_band"]["rare"]) >= {"p@5", "n_codes"} and "p@10" not in met["by_band"]["rare"]
    assert met["n_stays_with_principal"] == int(y.any(axis=1).sum())  # stays with a gold DP
    # A row passed in keeps only its own keys.
    assert saved["target_sweep"] == [{"target_precision": 0.95, "measured_precision": 0.952,
                                      "automation_rate": 0.7}]
    assert set(saved["automation_curve"]["by_chapter"]["IX"]) == {"n_codes", "operating_point",
                                                                  "curve", "title"}
    assert "title" not in saved["automation_curve"]["by_band"]["rare"]
    # Without principal diagnoses, their two keys are absent (not null).
    policy, y, s, labels = tiny_policy_and_stays()
    bare = build_report(y, s, labels, policy, stay_ids=["s1", "s2"]).model_dump(mode="json")
    assert "principal_diagnosis_accuracy" not in bare["metrics"]
    assert "n_stays_with_principal" not in bare["metrics"]
    assert bare["bands"] == {} and bare["automation_curve"]["by_band"] == {}


def test_report_read_back_from_json_is_the_same_and_strict(tmp_path: Path, built) -> None:
    report, *_ = built
    with_folder = report.model_copy(update={"folder": str(tmp_path)})
    json_path, _ = write_report(with_folder, tmp_path)
    assert "folder" not in json.loads(json_path.read_text(encoding="utf-8"))
    again = read_report(tmp_path)
    assert again == report and again.folder is None
    assert again.metrics.p_at_5 == report.metrics.p_at_5
    assert again.automation_curve.overall == report.automation_curve.overall
    assert render_html(again) == render_html(report)
    broken = json.loads(json_path.read_text(encoding="utf-8"))
    broken["headline"]["automation_rte"] = 0.9  # a typo in a hand-edited file fails loudly
    with pytest.raises(ValueError, match="automation_rte"):
        Report.model_validate(broken)


def test_no_decision_figures_without_an_f1_threshold() -> None:
    policy, y, s, labels = tiny_policy_and_stays()
    policy = DecisionPolicy(**{**policy.__dict__, "f1_threshold": None})
    bands = {"I10": "frequent", "E11.9": "frequent", "J13": "rare"}
    report = build_report(y, s, labels, policy, stay_ids=["s1", "s2"], bands=bands)
    met = report.metrics
    assert met.f1_threshold is None and met.micro_f1 is None and met.macro_precision is None
    assert met.category_level.micro_recall is None and met.by_band["rare"].micro_f1 is None
    assert met.map > 0 and met.auto.micro_precision is not None  # rankings and auto stay
    page = render_html(report)
    assert "seuil F1 global sur scores bruts (–)" in page


def test_report_templates_ship_in_the_wheel() -> None:
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))[
        "tool"]["setuptools"]["package-data"]
    patterns = [*package_data.get("cimcoder.eval", []), *package_data.get("*", [])]
    templates = [p.relative_to(ROOT / "eval").as_posix()
                 for p in (ROOT / "eval" / "templates").iterdir()]
    assert {"templates/automation_report.html", "templates/charts.html"} <= set(templates)
    for name in templates:
        assert any(fnmatch(name, pattern) for pattern in patterns), name
