"""cimcoder.eval: metrics, calibration, decision policies and the automation report.

- `cimcoder.eval.metrics`: pure functions on (y_true [n, L] bool, scores [n, L] float):
  micro/macro P/R/F1, P@k, R@k, MAP (CodiEsp), AUC, breakdowns, DP accuracy.
- `cimcoder.eval.calibration`: `Calibrator` (isotonic per code pooled along the CIM-10
  hierarchy, Platt, temperature), `reliability` / ECE.
- `cimcoder.eval.policy`: `DecisionPolicy` (auto / review / reject per code, `policy.json`).
- `cimcoder.eval.report`: `build_report`, `render_html`, `write_report`.
- `cimcoder.eval.runner`: `calibrate_run`, `evaluate_run` (what the CLI and pipeline call).

Nothing is imported here: `import cimcoder.eval` stays cheap.
"""
