"""cimcoder.eval: metrics, calibration, decision policies and the automation report.

- `cimcoder.eval.metrics`: pure functions on (y_true [n, L] bool, scores [n, L] float):
  micro/macro P/R/F1, P@k, R@k, MAP (CodiEsp), AUC, breakdowns, DP accuracy (their home is
  `cimcoder.metrics`, below training, which scores baselines with them).
- `cimcoder.eval.intervals`: binomial confidence bounds (Wilson, Clopper-Pearson).
- `cimcoder.eval.calibration`: `Calibrator` (isotonic per code pooled along the CIM-10
  hierarchy, Platt, temperature), `reliability` / ECE.
- `cimcoder.eval.policy`: `DecisionPolicy` (auto / review / reject per code, `policy.json`),
  with a per-stay review cap (`max_review_per_stay`), a review probability floor
  (`min_review_probability`) and the global micro-F1 threshold on raw scores (`f1_threshold`).
- `cimcoder.eval.report`: `build_report` -> `Report` (pydantic), `render_html` (Jinja2
  templates in `eval/templates/`), `write_report`, `read_report`. In the report, `metrics`
  (MAP, P@k on raw scores; micro/macro F1 at `f1_threshold`) and `bands` compare models;
  `metrics.auto` and `headline` describe the auto-coding decisions.
- `cimcoder.eval.runner`: `calibrate_run`, `evaluate_run` (what the CLI and pipeline call).

Nothing is imported here: `import cimcoder.eval` stays cheap.
"""
