"""`fit_dual_logistic` (the TF-IDF baseline's solver) against scikit-learn's
`LogisticRegression` fitted the textbook way, on the same objective and the same features.

    .venv/bin/python benchmarks/bench_dual_logistic.py [--config configs/codiesp-fr/tfidf_lr.yaml]
        [--sklearn-codes 100] [--sklearn-tol 1e-6] [--json FILE]

Features, label space and hyper-parameters are the config's (by default the `tfidf_lr`
baseline on the CodiEsp-FR train set: 500 reports, ~65,000 TF-IDF features, ~1,400 codes).
For every code j both minimise the same objective:

    sum_i s_ij * log-loss(w_j . x_i + b_j, y_ij) + |w_j|^2 / (2 C)

with s the balanced class weights (scikit-learn's `class_weight="balanced"`:
n / (2 n_pos) and n / (2 n_neg)) and the intercept b_j not penalised (scikit-learn's
objective is this one times C, same minimum).

- `fit_dual_logistic`: the representer form, from the Gram matrix of the TF-IDF rows, as
  `TfidfLrScorer.fit` calls it; its time includes the Gram matrix.
- scikit-learn: one `LogisticRegression(C, class_weight="balanced", solver="lbfgs")` per
  code on the sparse TF-IDF matrix, with a tight tolerance (`--sklearn-tol`) so that it
  is the reference minimum. Fitting all codes takes about 20 minutes on two shared cores:
  `--sklearn-codes N` fits N codes spread over the frequency range (all: 0) and the full
  time is extrapolated.

Printed, on the codes both fitted: the objective of each (summed over codes) and its
relative gap, the largest coefficient difference (and the largest coefficient, for
scale), the agreement of validation scores (largest probability difference, MAP of each,
share of validation stays with the same top-5 codes), and the fit times.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np


def _objective(z: np.ndarray, y: np.ndarray, sq_norms: np.ndarray, C: float) -> np.ndarray:
    """Per-code objective, from logits z [n, L], targets y [n, L] and |w_j|^2 [L]."""
    yf = y.astype(np.float64)
    n = len(y)
    n_pos = yf.sum(axis=0)
    weights = yf * (n / (2.0 * n_pos)) + (1.0 - yf) * (n / (2.0 * (n - n_pos)))
    loss = weights * (np.logaddexp(0.0, z) - yf * z)
    return np.asarray(loss.sum(axis=0) + sq_norms / (2.0 * C))


def _spread(n_codes: int, k: int, n_pos: np.ndarray) -> np.ndarray:
    """k code columns spread over the frequency range (rare to frequent)."""
    if k <= 0 or k >= n_codes:
        return np.arange(n_codes)
    by_freq = np.argsort(n_pos, kind="stable")
    return np.sort(by_freq[np.linspace(0, n_codes - 1, k).round().astype(int)])


def _top5_agreement(a: np.ndarray, b: np.ndarray) -> float:
    k = min(5, a.shape[1])
    top_a = np.sort(np.argsort(-a, axis=1, kind="stable")[:, :k], axis=1)
    top_b = np.sort(np.argsort(-b, axis=1, kind="stable")[:, :k], axis=1)
    return float(np.mean(np.all(top_a == top_b, axis=1)))


def bench(config_path: str, sklearn_codes: int, sklearn_tol: float) -> dict:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    from cimcoder.metrics import mean_average_precision
    from cimcoder.training.baselines import TfidfLrScorer, fit_dual_logistic
    from cimcoder.training.config import load_config
    from cimcoder.training.data import prepare_data
    from cimcoder.training.registry import build_model

    cfg = load_config(config_path)
    data = prepare_data(cfg)
    model = build_model(cfg, data.label_space)
    assert isinstance(model, TfidfLrScorer), f"{config_path} is not a tfidf_lr config"
    p = model.params
    model._build_vectorizers()
    x = model._features([e.text for e in data.train], fit=True).astype(np.float64)
    x_dev = model._features([e.text for e in data.validation]).astype(np.float64)
    y_all = np.asarray(data.label_space.encode([e.codes for e in data.train]), dtype=bool)
    y_dev_all = np.asarray(data.label_space.encode([e.codes for e in data.validation]), dtype=bool)
    n_pos = y_all.sum(axis=0)
    trainable = np.flatnonzero((n_pos > 0) & (n_pos < len(y_all)))  # both classes, as fit() does
    y, y_dev = y_all[:, trainable], y_dev_all[:, trainable]
    balanced = p.class_weight == "balanced"
    print(f"{config_path}: {x.shape[0]} training reports, {x.shape[1]} TF-IDF features, "
          f"{len(trainable)} codes with both classes; {len(data.validation)} validation reports "
          f"({data.validation_source}); C={p.C}, class_weight={p.class_weight}")

    # fit_dual_logistic, as TfidfLrScorer.fit calls it.
    t0 = time.perf_counter()
    kernel = np.asarray((x @ x.T).todense(), dtype=np.float64)
    alpha, b_dual, nit = fit_dual_logistic(kernel, y, C=p.C, balanced=balanced,
                                           max_iter=p.max_iter, tol=p.tol)
    dual_s = time.perf_counter() - t0
    alpha64, b_dual64 = alpha.astype(np.float64), b_dual.astype(np.float64)
    k_alpha = kernel @ alpha64
    dual_obj = _objective(k_alpha + b_dual64, y, np.einsum("ij,ij->j", alpha64, k_alpha), p.C)
    print(f"fit_dual_logistic: {dual_s:.1f} s for all {len(trainable)} codes (solver iterations: {nit})")

    # scikit-learn, one code at a time on the TF-IDF matrix.
    cols = _spread(len(trainable), sklearn_codes, y.sum(axis=0))
    coef = np.zeros((len(cols), x.shape[1]))
    b_sk = np.zeros(len(cols))
    iters: list[int] = []
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", category=ConvergenceWarning)
        for k, j in enumerate(cols):
            clf = LogisticRegression(C=p.C, class_weight="balanced" if balanced else None,
                                     solver="lbfgs", tol=sklearn_tol, max_iter=10_000)
            clf.fit(x, y[:, j])
            coef[k], b_sk[k] = clf.coef_[0], clf.intercept_[0]
            iters.append(int(clf.n_iter_[0]))
    sk_s = time.perf_counter() - t0
    not_converged = sum(issubclass(w.category, ConvergenceWarning) for w in caught)
    sk_full_s = sk_s * len(trainable) / len(cols)
    sk_obj = _objective(np.asarray(x @ coef.T) + b_sk, y[:, cols], np.sum(coef**2, axis=1), p.C)
    print(f"scikit-learn lbfgs: {sk_s:.1f} s for {len(cols)} codes "
          f"({np.median(iters):.0f} iterations per code, median; {not_converged} not converged)")

    # Compare on the codes both fitted.
    w_dual = np.asarray(x.T @ alpha64[:, cols]).T  # [codes, features]
    coef_diff = float(np.abs(w_dual - coef).max())
    coef_max = float(np.abs(coef).max())
    b_diff = float(np.abs(b_dual64[cols] - b_sk).max())
    gram_dev = np.asarray((x_dev @ x.T).todense())
    p_dual = 1.0 / (1.0 + np.exp(-(gram_dev @ alpha64[:, cols] + b_dual64[cols])))
    p_sk = 1.0 / (1.0 + np.exp(-(np.asarray(x_dev @ coef.T) + b_sk)))
    obj_d, obj_s = float(dual_obj[cols].sum()), float(sk_obj.sum())
    per_code_gap = (dual_obj[cols] - sk_obj) / np.abs(sk_obj)
    result = {
        "config": config_path,
        "n_train": int(x.shape[0]), "n_features": int(x.shape[1]), "n_codes": len(trainable),
        "n_validation": len(data.validation), "codes_compared": len(cols),
        "objective_dual": obj_d, "objective_sklearn": obj_s,
        "objective_relative_gap": (obj_d - obj_s) / abs(obj_s),
        "objective_worst_code_relative_gap": float(per_code_gap.max()),
        "max_coef_diff": coef_diff, "max_abs_coef": coef_max, "max_intercept_diff": b_diff,
        "max_validation_prob_diff": float(np.abs(p_dual - p_sk).max()),
        "mean_validation_prob_diff": float(np.abs(p_dual - p_sk).mean()),
        "validation_map_dual": mean_average_precision(y_dev[:, cols], p_dual),
        "validation_map_sklearn": mean_average_precision(y_dev[:, cols], p_sk),
        "validation_same_top5": _top5_agreement(p_dual, p_sk),
        "fit_seconds_dual_all_codes": dual_s, "dual_iterations": int(nit),
        "fit_seconds_sklearn": sk_s,
        "fit_seconds_sklearn_all_codes": sk_full_s if len(cols) < len(trainable) else sk_s,
        "sklearn_time_extrapolated": bool(len(cols) < len(trainable)),
        "sklearn_median_iterations": float(np.median(iters)), "sklearn_tol": sklearn_tol,
        "sklearn_not_converged": not_converged,
    }
    extrapolated = " (extrapolated)" if result["sklearn_time_extrapolated"] else ""
    print(f"\non {len(cols)} codes             fit_dual_logistic   scikit-learn")
    print(f"objective (sum)            {obj_d:>17.4f}   {obj_s:.4f}   "
          f"gap {result['objective_relative_gap']:+.2e} (worst code {per_code_gap.max():+.2e})")
    print(f"max |coef diff|            {coef_diff:.3e}   (max |coef| {coef_max:.3f}; "
          f"max |intercept diff| {b_diff:.3e})")
    print(f"validation probabilities   max |diff| {result['max_validation_prob_diff']:.3e}, "
          f"mean {result['mean_validation_prob_diff']:.3e}")
    print(f"validation MAP             {result['validation_map_dual']:>17.4f}   "
          f"{result['validation_map_sklearn']:.4f}   same top-5: {result['validation_same_top5']:.1%}")
    print(f"fit time, all {len(trainable)} codes  {dual_s:>15.1f} s   {result['fit_seconds_sklearn_all_codes']:.1f} s"
          f"{extrapolated}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/codiesp-fr/tfidf_lr.yaml")
    parser.add_argument("--sklearn-codes", type=int, default=100,
                        help="codes fitted by scikit-learn, spread over frequencies (0: all)")
    parser.add_argument("--sklearn-tol", type=float, default=1e-6)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    result = bench(args.config, args.sklearn_codes, args.sklearn_tol)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
