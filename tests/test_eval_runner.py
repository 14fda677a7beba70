"""`cimcoder calibrate` / `cimcoder evaluate` end to end on a real (TF-IDF) model.

The stays are short French discharge summaries generated here over eight codes, with
paraphrases, negations ("Pas d'HTA connue") and codes left implicit, so the model is good
but not perfect.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from cimcoder.cli import main
from cimcoder.eval.policy import DecisionPolicy
from cimcoder.eval.report import read_report
from cimcoder.eval.runner import (
    EvalDataError,
    calibrate_run,
    evaluate_run,
    parse_data_spec,
    select_half,
    stay_half,
)

MENTIONS = {
    "I10": ["Hypertension artérielle essentielle traitée par amlodipine.",
            "HTA ancienne sous bithérapie.", "HTA équilibrée sous IEC."],
    "E11.9": ["Diabète de type 2 sous metformine, HbA1c à 7,2 %.",
              "DT2 non insulinotraité, équilibré."],
    "J13": ["Pneumopathie franche lobaire aiguë à pneumocoque, antigénurie positive.",
            "Pneumonie à Streptococcus pneumoniae traitée par amoxicilline."],
    "I50.0": ["Insuffisance cardiaque congestive décompensée, BNP à 1200.",
              "Décompensation cardiaque globale avec œdèmes des membres inférieurs."],
    "N39.0": ["Infection urinaire à E. coli traitée par ceftriaxone.",
              "ECBU positif à Escherichia coli, pyélonéphrite évoquée puis infection urinaire retenue."],
    "E87.6": ["Hypokaliémie à 2,9 mmol/l corrigée par KCl IV.", "Hypokaliémie supplémentée."],
    "R55": ["Syncope inaugurale sans prodrome, bilan négatif.", "Malaise avec perte de connaissance brève."],
    "D50.0": ["Anémie ferriprive sur saignement chronique, transfusion de 2 CGR.",
              "Anémie microcytaire ferriprive, fer injectable."],
}
NEGATIONS = {
    "I10": "Pas d'HTA connue.", "E11.9": "Pas de diabète.", "J13": "Pas de foyer pulmonaire.",
    "I50.0": "Absence de signe d'insuffisance cardiaque.", "N39.0": "ECBU stérile.",
    "E87.6": "Kaliémie normale.", "R55": "Pas de malaise rapporté.", "D50.0": "Pas d'anémie.",
}
FILLER = ["Patient de 72 ans hospitalisé via les urgences.", "Retour à domicile à J5.",
          "Examen clinique sans particularité par ailleurs.", "Suivi par le médecin traitant."]


def write_stays(path: Path, n: int, seed: int) -> None:
    rng = random.Random(seed)
    codes = list(MENTIONS)
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            gold = rng.sample(codes, rng.randint(1, 4))
            parts = [rng.choice(FILLER)]
            for c in gold:
                if rng.random() < 0.9:  # 1 in 10 coded diagnoses is not written out
                    parts.append(rng.choice(MENTIONS[c]))
            for c in rng.sample([c for c in codes if c not in gold], 2):
                parts.append(NEGATIONS[c])
            if rng.random() < 0.1:  # a coded-looking mention the coder did not code
                parts.append(rng.choice(MENTIONS[rng.choice(codes)]))
            rng.shuffle(parts)
            f.write(json.dumps({"id": f"sej{seed}-{i:04d}", "text": " ".join(parts),
                                "dp": gold[0], "das": ";".join(gold[1:])},
                               ensure_ascii=False) + "\n")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cimcoder.training import load_config
    from cimcoder.training.baselines import fit_baseline

    root = tmp_path_factory.mktemp("evalrun")
    write_stays(root / "train.jsonl", 400, seed=1)
    write_stays(root / "dev.jsonl", 700, seed=2)
    cfg = root / "tfidf.yaml"
    cfg.write_text(
        f"data:\n  train: {root / 'train.jsonl'}\n  dev: {root / 'dev.jsonl'}\n"
        # Word n-grams only, few iterations: a small, quick model is enough here.
        "model:\n  name: tfidf_lr\n  params:\n    max_char_features: 0\n    max_iter: 50\n"
        "tracking:\n  experiment: synth\n  run_name: tfidf\n"
        f"output_dir: {root / 'runs'}\n",
        encoding="utf-8",
    )
    config = load_config(cfg)
    return fit_baseline(config)


def test_data_spec_and_halves_are_deterministic(tmp_path: Path) -> None:
    assert parse_data_spec("codiesp-fr/dev#B") == ("codiesp-fr/dev", "B")
    export = tmp_path / "export#2.jsonl"  # a real file is never cut at its '#'
    export.write_text("", encoding="utf-8")
    assert parse_data_spec(str(export)) == (str(export), None)
    assert parse_data_spec(f"{export}#A") == (str(export), "A")
    assert parse_data_spec("codiesp-fr/dev") == ("codiesp-fr/dev", None)
    with pytest.raises(EvalDataError, match="must be A or B"):
        parse_data_spec("codiesp-fr/dev#C")
    ids = [f"S{i}" for i in range(1000)]
    halves = [stay_half(i) for i in ids]
    assert halves == [stay_half(i) for i in ids]
    assert 430 < halves.count("A") < 570

    class S:
        def __init__(self, i: str) -> None:
            self.id = i

    a = select_half([S(i) for i in ids], "A")
    assert len(a) == halves.count("A") and all(stay_half(s.id) == "A" for s in a)


def _dev(run_dir: Path) -> str:
    return str(run_dir.parent.parent.parent / "dev.jsonl")


def test_calibrate_on_half_a_measures_on_half_b(run_dir: Path) -> None:
    result = calibrate_run(run_dir, f"{_dev(run_dir)}#A", target_precision=0.95)
    assert result.path == run_dir / "policy.json"
    assert result.policy.fitted_on["data"].endswith("dev.jsonl#A")
    m = result.measured
    assert m is not None and m["data"].endswith("dev.jsonl#B")
    assert m["n_stays"] + len(result.fitted_on.stay_ids) == 700
    assert abs(m["measured_precision"] - 0.95) <= 0.03
    assert m["automation_rate"] > 0.2  # a fifth of the true codes, whichever half is drawn
    labels = json.loads((run_dir / "labels.json").read_text(encoding="utf-8"))["codes"]
    loaded = DecisionPolicy.load(run_dir, labels=labels)
    assert loaded.version == result.policy.version
    space = json.loads((run_dir / "labels.json").read_text(encoding="utf-8"))
    assert loaded.edition == space.get("edition") and loaded.terminology == space["terminology"]


def test_evaluate_measures_only_the_other_half_and_writes_the_report(run_dir: Path) -> None:
    dev = _dev(run_dir)
    calibrate_run(run_dir, f"{dev}#A")
    report = evaluate_run(run_dir, data=dev)
    assert report.dataset == f"{dev}#B"
    assert report.notes and "autre moitié" in report.notes[0]
    assert report.folder is not None
    folder = Path(report.folder)
    assert folder.parent == run_dir / "eval"
    assert (folder / "automation_report.html").is_file()
    saved = read_report(folder / "automation_report.json")
    assert saved.headline.n_auto == report.headline.n_auto
    assert saved == report.model_copy(update={"folder": None})
    targets = [r.target_precision for r in report.target_sweep]
    assert targets == sorted(targets) and 0.95 in targets
    # Principal diagnoses are known (dp field) and the eight codes are all "frequent".
    assert report.metrics.n_stays_with_principal == report.headline.n_stays
    assert set(report.bands) == {"frequent"}
    with pytest.raises(EvalDataError, match="overstate"):
        evaluate_run(run_dir, data=f"{dev}#A")


def test_cli_calibrate_and_evaluate(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", str(run_dir), "--target-precision", "0.9", "--max-review", "2",
                 "--min-review-probability", "0.1"]) == 0
    out = capsys.readouterr().out
    assert "target precision   90.0%" in out and "measured precision" in out
    assert "review per stay" in out and "micro-F1" in out
    assert "(cap 2, budget 1 x expected codes + 1, floor 0.1)" in out
    assert main(["calibrate", str(run_dir), "--review-budget", "none", "--folds", "0"]) == 0
    assert DecisionPolicy.load(run_dir).review_budget is None
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["calibrate", str(run_dir), "--review-budget", "0"])
    capsys.readouterr()
    assert main(["calibrate", str(run_dir), "--target-precision", "0.9", "--max-review", "2",
                 "--min-review-probability", "0.1"]) == 0
    capsys.readouterr()
    policy = DecisionPolicy.load(run_dir)
    assert policy.max_review_per_stay == 2 and policy.min_review_probability == 0.1
    assert policy.review_budget == 1.0
    out_dir = run_dir / "report-cli"
    dev = str(run_dir.parent.parent.parent / "dev.jsonl")
    assert main(["evaluate", str(run_dir), "--data", dev, "--output", str(out_dir)]) == 0
    out = capsys.readouterr().out
    assert "measured auto precision" in out and "automation rate" in out
    assert "target vs measured" in out
    assert "À la précision cible fixée par le DIM (90 %)" in out
    assert (out_dir / "automation_report.html").is_file()
    saved = read_report(out_dir / "automation_report.json")
    assert saved.headline.review_per_stay_p90 <= 2 and saved.headline.max_review_per_stay == 2
    with pytest.raises(SystemExit):
        main(["calibrate", str(run_dir), "--max-review", "-1"])
    assert "must be 0 or more" in capsys.readouterr().err
    assert main(["calibrate", str(run_dir), "--max-review", "none"]) == 0
    assert DecisionPolicy.load(run_dir).max_review_per_stay is None


def test_cli_errors_are_messages_not_tracebacks(tmp_path: Path, run_dir: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(tmp_path / "nope"), "--data", "x.jsonl"]) == 2
    assert "model run folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["calibrate", str(run_dir), "--target-precision", "95"])
    assert "between 0 and 1" in capsys.readouterr().err
    # A policy from another label space is refused.
    policy = json.loads((run_dir / "policy.json").read_text(encoding="utf-8")) \
        if (run_dir / "policy.json").exists() else None
    if policy is None:
        calibrate_run(run_dir)
    other = tmp_path / "other"
    other.mkdir()
    y = np.zeros((60, 2), dtype=bool)
    y[:30, 0] = y[30:, 1] = True
    DecisionPolicy.fit(y, y * 0.9 + 0.05, ["I10", "Z51.1"]).save(other)
    (run_dir / "policy.json").rename(run_dir / "policy.keep")
    try:
        (other / "policy.json").rename(run_dir / "policy.json")
        assert main(["evaluate", str(run_dir), "--data", "x.jsonl"]) == 2
        assert "another label space" in capsys.readouterr().err
    finally:
        (run_dir / "policy.keep").replace(run_dir / "policy.json")


def test_report_feeds_the_pipeline_comparison_table(run_dir: Path) -> None:
    from cimcoder.eval.metrics import micro_prf
    from cimcoder.eval.runner import _load_scorer, _load_stays, score_stays
    from cimcoder.pipeline import comparison_row

    dev = _dev(run_dir)
    result = calibrate_run(run_dir, f"{dev}#A")
    report = evaluate_run(run_dir, data=dev, sweep=False)
    row = comparison_row(report)
    for key in ("map", "micro_f1", "macro_f1", "p@5", "recall_frequent"):
        assert isinstance(row[key], float), key
    # micro-F1 is the one at the threshold fitted on half A, applied to half B.
    t = result.policy.f1_threshold
    assert report.metrics.f1_threshold == t is not None
    scored = score_stays(_load_scorer(run_dir), select_half(_load_stays(dev), "B"), "B")
    assert row["micro_f1"] == pytest.approx(micro_prf(scored.y, scored.scores >= t, scored.n_gold).f1)
    assert row["micro_f1"] > 0.5  # the word model finds most of the eight codes
    assert report.automation.headline.statement_fr


def test_older_policy_files_get_an_f1_threshold_from_their_fitting_half(run_dir: Path) -> None:
    result = calibrate_run(run_dir, f"{_dev(run_dir)}#A")  # format 1 knew only halves
    old = DecisionPolicy(**{**result.policy.__dict__, "policy_format": 1})
    old.save(run_dir)
    try:
        dev = str(run_dir.parent.parent.parent / "dev.jsonl")
        report = evaluate_run(run_dir, data=dev, sweep=False)
        assert report.metrics.f1_threshold == pytest.approx(result.policy.f1_threshold)
        assert any("ancien format" in n for n in report.notes)
        assert report.headline.max_review_per_stay is None
    finally:
        result.policy.save(run_dir)


def test_a_run_without_policy_is_scored_once_for_calibration_and_evaluation(
    run_dir: Path, tmp_path: Path
) -> None:
    import shutil

    from cimcoder.training import load_scorer

    fresh = tmp_path / "fresh-run"
    shutil.copytree(run_dir, fresh, ignore=shutil.ignore_patterns("policy.json", "eval"))
    scorer = load_scorer(fresh)
    calls: list[int] = []
    predict = scorer.predict_scores

    def counted(texts, batch_size=8):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return predict(texts, batch_size=batch_size)

    scorer.predict_scores = counted  # type: ignore[method-assign]
    dev = str(run_dir.parent.parent.parent / "dev.jsonl")
    report = evaluate_run(fresh, data=dev, scorer=scorer)
    assert (fresh / "policy.json").is_file(), "evaluate calibrated the run first"
    assert report.dataset == dev
    # Calibration on dev (cross-fitted) and the evaluation with its target sweep read the same
    # 700 stays: one scoring pass serves both.
    assert calls == [700]


def test_default_calibration_fits_on_all_of_dev_and_measures_by_cross_fitting(run_dir: Path) -> None:
    dev = _dev(run_dir)
    result = calibrate_run(run_dir, target_precision=0.95)
    fitted = result.policy.fitted_on
    assert fitted["data"] == dev and fitted["half"] is None and fitted["folds"] == 5
    assert len(result.fitted_on.stay_ids) == 700
    m = result.measured
    assert m is not None and m["cross_fitted_folds"] == 5 and m["n_stays"] == 700
    assert 0.95 <= m["measured_precision"] <= 0.98  # the margin keeps it at or above the target
    assert m["automation_rate"] > 0.3
    # `evaluate` on the same data set reproduces the same held-out decisions, says how, and
    # refits the target sweep fold by fold.
    report = evaluate_run(run_dir, data=dev)
    h = report.headline
    assert report.dataset == dev and h.n_stays == 700
    assert any("validation croisée à 5 plis" in n for n in report.notes)
    assert h.n_auto == m["n_auto"] and h.auto_precision == pytest.approx(m["measured_precision"])
    sweep = {r.target_precision: r for r in report.target_sweep}
    assert sweep[0.95].n_auto == m["n_auto"] and all(r.cross_fitted_folds == 5 for r in sweep.values())
    assert sweep[0.8].n_auto >= sweep[0.98].n_auto
    # A half of the same data set: the same fold decisions, restricted to that half.
    half_b = evaluate_run(run_dir, data=f"{dev}#B", sweep=False)
    n_b = sum(stay_half(s) == "B" for s in result.fitted_on.stay_ids)
    assert half_b.dataset == f"{dev}#B" and half_b.headline.n_stays == n_b
    assert half_b.headline.n_auto < h.n_auto


def test_a_policy_fitted_on_all_stays_without_folds_is_not_measured_there(run_dir: Path) -> None:
    dev = _dev(run_dir)
    result = calibrate_run(run_dir, folds=0)
    try:
        assert result.measured is None and "folds" not in result.policy.fitted_on
        with pytest.raises(EvalDataError, match="without cross-fitting"):
            evaluate_run(run_dir, data=dev)
        with pytest.raises(EvalDataError, match="without cross-fitting"):
            evaluate_run(run_dir, data=f"{dev}#B")
    finally:
        calibrate_run(run_dir)


def test_cli_folds_and_confidence(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", str(run_dir), "--folds", "3", "--confidence", "0.9"]) == 0
    out = capsys.readouterr().out
    assert "3-fold cross-fitting" in out and "700 stays" in out
    policy = DecisionPolicy.load(run_dir)
    assert policy.fitted_on["folds"] == 3 and policy.confidence == 0.9
    assert main(["calibrate", str(run_dir), "--folds", "1"]) == 2
    assert "--folds must be 0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["calibrate", str(run_dir), "--confidence", "0.3"])
    assert main(["calibrate", str(run_dir)]) == 0


def test_compare_refuses_runs_measured_on_different_stays(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    dev = _dev(run_dir)
    other = tmp_path / "half-a-run"
    shutil.copytree(run_dir, other, ignore=shutil.ignore_patterns("policy.json", "eval"))
    calibrate_run(other, f"{dev}#A")  # measured on half B only; run_dir: all of dev, cross-fitted
    calibrate_run(run_dir)
    assert main(["compare", "--data", dev, str(run_dir), str(other)]) == 2
    err = capsys.readouterr().err
    assert "measured on different stays" in err and f"{dev}#B" in err
    # On half B both can be measured (run_dir by its fold policies): the comparison runs.
    assert main(["compare", "--data", f"{dev}#B", str(run_dir), str(other)]) == 0
