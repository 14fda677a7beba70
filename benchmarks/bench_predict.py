"""Benchmark of `cimcoder predict`: throughput, FLOPs per report and fraction of matmul peak.

    .venv/bin/python benchmarks/bench_predict.py [--model RUN_DIR] [--n 64] [--threads 2]

- For the hybrid coder, also the scoring time of each component (TF-IDF + neighbours,
  edsnlp mentions, learned vocabulary, features + reranker).
- Model: --model, else the newest quickstart run under runs/ (runs/**/quickstart*), else a
  small PLM-ICD built once into a temporary folder (a BERT of 4 layers x 256 hidden with a
  tokenizer trained on CodiEsp-FR train; untrained weights: speed does not depend on them).
- Reports: the first --n CodiEsp-FR **dev** reports (never test), as JSONL.
- `cimcoder predict` is timed end to end in a subprocess (model load included), and the
  predictor's steady state in this process (load excluded), both with --threads torch threads:
  with evidence (one pass: the evidence comes from the scoring forward), without evidence,
  and with evidence the two-pass way (the scorer's `explain` per report, a second forward:
  how evidence was made before the one-pass path), whose spans must be the same.
- FLOPs per report: torch.utils.flop_counter.FlopCounterMode around one `predict` of a report
  of median length.
- Peak: the best of several fp32 2048x2048 matmuls with the same thread count.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_MODEL_DIR = Path(tempfile.gettempdir()) / "cimcoder-bench" / "plm-small"


def find_quickstart_run() -> Path | None:
    runs = REPO / "runs"
    if not runs.is_dir():
        return None
    candidates = [
        p.parent
        for p in runs.glob("**/labels.json")
        if "quickstart" in str(p.parent.relative_to(runs))
        and (p.parent / "config.yaml").is_file()
        and (p.parent / "metrics.json").is_file()  # written when training is over
    ]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def build_small_model(run_dir: Path = BENCH_MODEL_DIR) -> Path:
    """A small, untrained PLM-ICD over the CodiEsp-FR train label space (built once)."""
    if (run_dir / "labels.json").is_file():
        return run_dir
    from cimcoder.training.corpora import load_dataset

    sys.path.insert(0, str(REPO / "tests"))  # the builder is test code, not shipped
    from plm_builders import build_untrained_run

    print(f"building a small PLM-ICD in {run_dir} (once) ...", file=sys.stderr)
    train = load_dataset("codiesp-fr/train")
    return build_untrained_run(
        run_dir, [stay.text for stay in train.stays], [stay.codes for stay in train.stays],
        vocab_size=8000, min_frequency=2, hidden=256, layers=4, heads=4, intermediate=1024,
        max_positions=512, chunking=(256, 8), min_count=2,
    )


def resolve_model(arg: str | None) -> Path | str:
    if arg:
        return arg
    found = find_quickstart_run()
    if found is not None:
        return found
    return build_small_model()


def dev_reports(n: int) -> list[dict[str, str]]:
    from cimcoder.training.corpora import load_dataset

    dev = load_dataset("codiesp-fr/dev")
    return [{"id": stay.id, "text": stay.text} for stay in dev.stays[:n]]


def matmul_peak_gflops(threads: int, size: int = 2048, repeat: int = 5) -> float:
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    torch.matmul(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


class TwoPassScorer:
    """The scorer without `predict_scores_with_evidence`: the predictor then asks `explain`
    for every report's evidence, a second forward pass per report."""

    def __init__(self, scorer: Any) -> None:
        self._scorer = scorer

    def __getattr__(self, name: str) -> Any:
        if name == "predict_scores_with_evidence":
            raise AttributeError(name)
        return getattr(self._scorer, name)


def two_pass(predictor: Any) -> Any:
    """The same predictor (policy, terminology) over `TwoPassScorer`, or None when the scorer
    has no one-pass evidence (it is then two-pass already)."""
    from cimcoder.inference import Predictor

    if not hasattr(predictor.scorer, "predict_scores_with_evidence"):
        return None
    return Predictor(
        TwoPassScorer(predictor.scorer),
        policy=predictor.policy,
        name=predictor.name,
        version=predictor.version,
        source=predictor.source,
        architecture=predictor.architecture,
        terminology=predictor.terminology,
        crosswalk=predictor._crosswalk,
        min_candidates=predictor.min_candidates,
        evidence_top_k=predictor.evidence_top_k,
    )


def flops_per_report(predictor, text: str, evidence: bool = True) -> float | None:  # type: ignore[no-untyped-def]
    """FLOPs of one `predict` (scoring, + evidence); None for a model without torch."""
    net = getattr(predictor.scorer, "net", None)
    if net is None:
        return None
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        predictor.predict([text], evidence=evidence)
    return float(counter.get_total_flops())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="run folder or MLflow URI")
    parser.add_argument("--n", type=int, default=64, help="CodiEsp-FR dev reports to score")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (2 cores)")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    model = resolve_model(args.model)
    reports = dev_reports(args.n)
    chars = [len(r["text"]) for r in reports]

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "reports.jsonl"
        source.write_text(
            "\n".join(json.dumps(r, ensure_ascii=False) for r in reports) + "\n", encoding="utf-8"
        )
        out = Path(tmp) / "out.jsonl"
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TQDM_DISABLE": "1"}
        cli = [sys.executable, "-m", "cimcoder.cli", "predict", "--model", str(model),
               "--input", str(source), "--output", str(out), "--batch-size", str(args.batch_size)]
        start = time.perf_counter()
        done = subprocess.run(cli, env=env, capture_output=True, text=True)
        cli_s = time.perf_counter() - start
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        lines = out.read_text(encoding="utf-8").splitlines()
        assert len(lines) == len(reports), "every report must be scored"

    from cimcoder.inference import Predictor

    t0 = time.perf_counter()
    predictor = Predictor.load(model)
    load_s = time.perf_counter() - t0
    texts = [r["text"] for r in reports]
    predictor.predict(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    one_pass = predictor.predict(texts, batch_size=args.batch_size)
    steady_s, steady_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    predictor.predict(texts, batch_size=args.batch_size, evidence=False)
    ranking_s, ranking_cpu = time.perf_counter() - t0, time.process_time() - c0
    # The two-pass comparison is about PLM-ICD attention; the hybrid's evidence is its mentions.
    old = two_pass(predictor) if predictor.architecture == "plm_icd" else None
    if old is not None:
        t0, c0 = time.perf_counter(), time.process_time()
        two = old.predict(texts, batch_size=args.batch_size)
        two_s, two_cpu = time.perf_counter() - t0, time.process_time() - c0
        same = [a.model_dump() == b.model_dump() for a, b in zip(one_pass, two, strict=True)]
        n_evidence = sum(len(c.evidence) for r in one_pass for c in r.codes)
    load_avg = os.getloadavg()[0]

    median_text = sorted(texts, key=len)[len(texts) // 2]
    flops = flops_per_report(predictor, median_text)
    flops_ranking = flops_per_report(predictor, median_text, evidence=False)
    peak = matmul_peak_gflops(args.threads)

    cli_rate = len(reports) / cli_s
    steady_rate = len(reports) / steady_s
    ranking_rate = len(reports) / ranking_s
    print(f"model                 : {model} ({predictor.architecture}, {len(predictor.labels)} codes)")
    print(f"reports               : {len(reports)} CodiEsp-FR dev, median {statistics.median(chars):.0f} chars")
    print(f"threads               : {args.threads} (torch), batch size {args.batch_size}")
    print(f"cimcoder predict (CLI): {cli_s:.2f} s end to end -> {cli_rate:.2f} reports/s (model load included)")
    print(f"predictor steady state: {steady_s:.2f} s -> {steady_rate:.2f} reports/s (load {load_s:.2f} s excluded; {steady_cpu:.1f} CPU-s)")
    print(f"  without evidence    : {ranking_s:.2f} s -> {ranking_rate:.2f} reports/s (predict --no-evidence; {ranking_cpu:.1f} CPU-s)")
    if old is not None:
        print(f"  evidence two-pass   : {two_s:.2f} s -> {len(reports) / two_s:.2f} reports/s (explain per report, a second forward; {two_cpu:.1f} CPU-s)")
        print(f"  one-pass == two-pass: {sum(same)} of {len(same)} answers identical ({n_evidence} evidence spans)")
    print(f"machine load average  : {load_avg:.1f} on {os.cpu_count()} cores (shared machine: wall figures vary with it)")
    print(f"matmul peak (fp32)    : {peak:.1f} GFLOP/s (2048^3, best of 5, {args.threads} threads)")
    if flops is None:
        print("FLOPs per report      : n/a (not a torch model; no dense forward to count)")
    else:
        achieved = flops * steady_rate / 1e9
        print(f"FLOPs per report      : {flops / 1e9:.2f} GFLOP (with evidence, median report)")
        print(f"achieved              : {achieved:.1f} GFLOP/s = {100 * achieved / peak:.1f}% of measured matmul peak")
        if flops_ranking is not None:
            achieved_r = flops_ranking * ranking_rate / 1e9
            print(f"  without evidence    : {flops_ranking / 1e9:.2f} GFLOP/report, {achieved_r:.1f} GFLOP/s = {100 * achieved_r / peak:.1f}% of peak")
    timings = getattr(predictor.scorer, "time_components", None)
    if timings is not None:
        parts = timings(texts)
        total = sum(parts.values())
        print(f"time by component     : {len(texts)} reports, {total:.2f} s ({len(texts) / total:.1f} reports/s scoring alone)")
        for name, seconds in parts.items():
            print(f"  {name:<20}: {seconds:.2f} s ({100 * seconds / total:.0f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
