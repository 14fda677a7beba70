"""Evaluation benchmark: speed of the metric/policy code, and target vs measured precision.

    python benchmarks/bench_eval.py                       # synthetic arrays only
    python benchmarks/bench_eval.py --run RUN [--data codiesp-fr/dev]

With --run, the run is calibrated on half A of DATA and measured on half B at several
target precisions (same procedure as `cimcoder calibrate` / `cimcoder evaluate`).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from cimcoder.eval import metrics as M
from cimcoder.eval.calibration import expected_calibration_error
from cimcoder.eval.policy import AUTO, DecisionPolicy


def synthetic(n: int, n_labels: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    # Code frequencies are a property of the hospital, not of the sample: fixed seed.
    rates = np.clip(np.random.default_rng(12345).pareto(1.2, n_labels) * 0.005, 1e-4, 0.3)
    rng = np.random.default_rng(seed)
    letters = "ABCDEGIJKMNRZ"
    labels = [f"{letters[i % len(letters)]}{(i // len(letters)) % 100:02d}.{i // 1300}" for i in range(n_labels)]
    y = rng.random((n, n_labels)) < rates
    z = np.where(y, rng.normal(1.0, 1.3, y.shape), rng.normal(-3.0, 1.3, y.shape))
    return y, (1.0 / (1.0 + np.exp(-z))) ** 0.5, labels


def bench_synthetic(n: int, n_labels: int) -> None:
    y, s, labels = synthetic(n, n_labels, 0)
    y2, s2, _ = synthetic(n, n_labels, 1)
    t = time.perf_counter()
    summary = M.summarize(y, s, s >= 0.5)
    t_metrics = time.perf_counter() - t
    t = time.perf_counter()
    policy = DecisionPolicy.fit(y, s, labels, target_precision=0.95)
    t_fit = time.perf_counter() - t
    t = time.perf_counter()
    p2 = policy.calibrate(s2, labels)
    d2 = policy.decide(p2, labels)
    t_apply = time.perf_counter() - t
    auto = d2 == AUTO
    print(f"synthetic {n} stays x {n_labels} codes ({int(y.sum())} gold codes)")
    print(f"  summarize (MAP, P/R/F1, AUC, P@k): {t_metrics:.2f} s   MAP {summary['map']:.3f}")
    print(f"  policy fit ({policy.calibrator.method} + thresholds): {t_fit:.2f} s   levels {policy.level_counts()['auto']}")
    print(f"  calibrate + decide (held-out, review cap {policy.max_review_per_stay}): {t_apply:.3f} s")
    print(f"  ECE raw {expected_calibration_error(y2, s2):.4f} -> calibrated {expected_calibration_error(y2, p2):.4f}")
    print(f"  held-out auto precision {(y2 & auto).sum() / max(auto.sum(), 1):.4f} (target 0.95), "
          f"automation {(y2 & auto).sum() / y2.sum():.4f}")


def bench_run(run: str, data: str) -> None:
    from cimcoder.eval.runner import (
        DEFAULT_SWEEP,
        _load_scorer,
        _load_stays,
        measure,
        score_stays,
        stay_half,
    )

    scorer = _load_scorer(run)
    labels = list(scorer.labels)
    t = time.perf_counter()
    scored = score_stays(scorer, _load_stays(data), data)
    print(f"{run} on {data}: scored {len(scored.stay_ids)} stays in {time.perf_counter() - t:.1f} s")
    halves = np.array([stay_half(i) for i in scored.stay_ids])
    a, b = scored.subset(halves == "A", f"{data}#A"), scored.subset(halves == "B", f"{data}#B")
    print(f"half A {len(a.stay_ids)} stays ({int(a.y.sum())} in-space gold), "
          f"half B {len(b.stay_ids)} stays ({int(b.y.sum())} in-space gold, {int(b.n_gold.sum())} all gold)")
    print("target  measured(B)  n_auto  automation(B)  review/stay(B)  auto+review recall(B)")
    for target in DEFAULT_SWEEP:
        t = time.perf_counter()
        policy = DecisionPolicy.fit(a.y, a.scores, labels, target_precision=target, n_gold=a.n_gold)
        t_fit = time.perf_counter() - t
        m = measure(policy, b, labels)
        mp = "n/a" if m["measured_precision"] is None else f"{m['measured_precision']:.4f}"
        print(f"{target:.2f}    {mp:>8}    {m['n_auto']:>6}  {m['automation_rate']:.4f}"
              f"         {m['review_per_stay_mean']:5.1f}           {m['recall_auto_or_review']:.4f}"
              f"   (fit {t_fit:.1f} s)")
    print(f"micro-F1(B) at the F1 threshold {policy.f1_threshold:.4g} fitted on A: {m['micro_f1']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="model run folder")
    parser.add_argument("--data", default="codiesp-fr/dev")
    parser.add_argument("--stays", type=int, default=2000)
    parser.add_argument("--codes", type=int, default=2000)
    args = parser.parse_args()
    bench_synthetic(args.stays, args.codes)
    if args.run:
        bench_run(args.run, args.data)


if __name__ == "__main__":
    main()
