"""Benchmark of `cimcoder predict`: scoring runtimes, throughput, FLOPs and share of matmul peak.

    .venv/bin/python benchmarks/bench_predict.py [--model RUN_DIR] [--n 16] [--n-base 4]
        [--threads 2] [--runtimes torch,onnx,onnx-int8] [--sizes quickstart,bert-base]
        [--repeat 1] [--map]
    .venv/bin/python benchmarks/bench_predict.py --end-to-end [--model RUN_DIR] [--n 64]

By default, for each scoring runtime (torch; ONNX Runtime fp32, `onnx`; ONNX Runtime with
dynamically quantized int8 weights, `onnx-int8`) and each model size, the predictor's steady
state (evidence on, load and graph export excluded; best of --repeat passes, the runtimes
taking turns in each) on the first CodiEsp-FR **dev** reports:
reports/s, tokens/s (tokens read, specials included) and GFLOP/s with its share of the machine's
peaks, measured in the same run (before and after the timings, the best kept): an fp32 2048^3
matmul (torch) and an int8 2048^3 GEMM (ONNX Runtime's MatMulInteger, what `onnx-int8` runs
its weight products with).
- Sizes: `quickstart` is --model, else the newest quickstart run under runs/, else an untrained
  PLM-ICD of the quickstart size (BERT 2 x 128, chunks 128 x 12); `bert-base` an untrained
  BERT-base-sized PLM-ICD (12 layers x 768, 12 heads, 512-token chunks x 4, tokenizer trained
  on CodiEsp-FR train, codes seen 10+ times), built once by the same code path
  (tests/plm_builders.py). Speed does not depend on the weights.
- FLOPs: torch.utils.flop_counter.FlopCounterMode around the torch scoring of the same reports
  (the ONNX graphs do the same products; the int8 ones in int8).
- --map: MAP on the whole CodiEsp-FR dev set of the quickstart model by each runtime (raw
  scores, gold codes outside the label space count as missed), its difference to torch, and
  per report how many of torch's 10 best codes the runtime also ranks in its 10 best.

With --end-to-end, or when --model is not a PLM-ICD run (the hybrid, a baseline), the report
for one model:
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cimcoder.run_folder import LABELS_FILE, RunFolder

REPO = Path(__file__).resolve().parents[1]
BENCH_MODEL_DIR = Path(tempfile.gettempdir()) / "cimcoder-bench" / "plm-small"


def find_quickstart_run() -> Path | None:
    runs = REPO / "runs"
    if not runs.is_dir():
        return None
    candidates = [
        p.parent
        for p in runs.glob(f"**/{LABELS_FILE}")
        if "quickstart" in str(p.parent.relative_to(runs))
        and RunFolder(p.parent).is_run()
        and RunFolder(p.parent).metrics.is_file()  # written when training is over
    ]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


@dataclass(frozen=True)
class Size:
    """An untrained PLM-ICD of a given size (speed does not depend on the weights)."""

    hidden: int
    layers: int
    heads: int
    intermediate: int
    chunking: tuple[int, int]  # (max_chunk_tokens, max_chunks)
    min_count: int  # codes seen at least this often in CodiEsp-FR train


SIZES = {
    "small": Size(256, 4, 4, 1024, (256, 8), 2),
    "quickstart": Size(128, 2, 2, 512, (128, 12), 1),  # configs/codiesp-fr/quickstart.yaml
    "bert-base": Size(768, 12, 12, 3072, (512, 4), 10),  # BERT-base, a small label count
}


def build_sized_model(size: str, run_dir: Path | None = None) -> Path:
    """An untrained PLM-ICD of `SIZES[size]` over the CodiEsp-FR train label space, built once
    (tests/plm_builders.py: the same code path as a trained run folder)."""
    run_dir = run_dir or BENCH_MODEL_DIR.parent / f"plm-{size}"
    if RunFolder(run_dir).has(LABELS_FILE):
        return run_dir
    from cimcoder.training.corpora import load_dataset

    sys.path.insert(0, str(REPO / "tests"))  # the builder is test code, not shipped
    from plm_builders import build_untrained_run

    spec = SIZES[size]
    print(f"building a {size} PLM-ICD in {run_dir} (once) ...", file=sys.stderr)
    train = load_dataset("codiesp-fr/train")
    return build_untrained_run(
        run_dir, [stay.text for stay in train.stays], [stay.codes for stay in train.stays],
        vocab_size=8000, min_frequency=2, hidden=spec.hidden, layers=spec.layers,
        heads=spec.heads, intermediate=spec.intermediate, max_positions=512,
        chunking=spec.chunking, min_count=spec.min_count,
    )


def build_small_model(run_dir: Path = BENCH_MODEL_DIR) -> Path:
    """A small, untrained PLM-ICD over the CodiEsp-FR train label space (built once)."""
    return build_sized_model("small", run_dir)


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


def ort_gemm_peak_gops(threads: int, *, int8: bool, size: int = 2048, repeat: int = 5) -> float:
    """Best GOP/s of a size^3 GEMM in ONNX Runtime: MatMulInteger (uint8 x int8 -> int32, as
    dynamically quantized weight products) or fp32 MatMul; constant right-hand side."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if int8:
        weight = rng.integers(-128, 128, (size, size), dtype=np.int8)
        x = rng.integers(0, 256, (size, size), dtype=np.uint8)
        op, x_type, y_type = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
    else:
        weight = rng.standard_normal((size, size), dtype=np.float32)
        x = rng.standard_normal((size, size), dtype=np.float32)
        op, x_type, y_type = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
    graph = helper.make_graph(
        [helper.make_node(op, ["x", "w"], ["y"])],
        "gemm",
        [helper.make_tensor_value_info("x", x_type, [size, size])],
        [helper.make_tensor_value_info("y", y_type, [size, size])],
        initializer=[numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, {"x": x})  # warm-up
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        session.run(None, {"x": x})
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


def measure_peaks(threads: int) -> tuple[float, float, float]:
    """fp32 matmul (torch), fp32 MatMul and int8 MatMulInteger (ONNX Runtime) peaks, G(FL)OP/s."""
    return (
        matmul_peak_gflops(threads),
        ort_gemm_peak_gops(threads, int8=False),
        ort_gemm_peak_gops(threads, int8=True),
    )


def scoring_work(scorer: Any, texts: list[str], batch_size: int) -> tuple[float, int]:
    """FLOPs of the torch scoring pass (with evidence) of `texts`, and the tokens it reads."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        scorer.predict_scores_with_evidence(texts, batch_size=batch_size)
    tokens = sum(len(chunk) for doc in scorer.chunk(texts) for chunk in doc.input_ids)
    return float(counter.get_total_flops()), tokens


def dev_map(predictor: Any, batch_size: int) -> tuple[float, Any]:
    """MAP of `predictor`'s raw scores on the whole CodiEsp-FR dev set (gold codes outside the
    label space count as missed), and the scores."""
    import numpy as np

    from cimcoder.metrics import mean_average_precision
    from cimcoder.training.corpora import load_dataset

    stays = load_dataset("codiesp-fr/dev").stays
    index = {code: j for j, code in enumerate(predictor.labels)}
    y_true = np.zeros((len(stays), len(index)), dtype=bool)
    for i, stay in enumerate(stays):
        for code in stay.codes:
            if code in index:
                y_true[i, index[code]] = True
    scores = predictor.scorer.predict_scores([stay.text for stay in stays], batch_size=batch_size)
    n_gold = [len(set(stay.codes)) for stay in stays]
    return mean_average_precision(y_true, scores, n_gold=n_gold), scores


def top_k_agreement(scores: Any, reference: Any, k: int) -> Any:
    """Per report, the share of the reference's k best codes that are also among the k best."""
    import numpy as np

    def best(x: Any) -> Any:
        return np.argsort(-np.asarray(x), axis=1, kind="stable")[:, :k]

    return np.array([len(set(a) & set(b)) / k for a, b in zip(best(scores), best(reference), strict=True)])


def compare_runtimes(args: argparse.Namespace) -> int:
    import torch

    from cimcoder.inference import Predictor

    runtimes = [r for r in args.runtimes.split(",") if r]
    sizes = [s for s in args.sizes.split(",") if s]
    torch.set_num_threads(args.threads)
    rows: list[tuple[str, str, float, float, float, float]] = []  # size, runtime, rep/s, tok/s, GFLOP/s, load s
    peaks = measure_peaks(args.threads)
    for size in sizes:
        model = resolve_quickstart(args.model) if size == "quickstart" else build_sized_model(size)
        n = args.n if size == "quickstart" else args.n_base
        texts = [r["text"] for r in dev_reports(n)]
        base = Predictor.load(model)
        flops, tokens = scoring_work(base.scorer, texts, args.batch_size)  # also the warm-up
        print(f"{size}: {model} ({len(base.labels)} codes), {len(texts)} CodiEsp-FR dev reports, "
              f"{tokens} tokens, {flops / 1e9 / len(texts):.1f} GFLOP per report (torch count)")
        predictors, load_s = {}, {}
        for runtime in runtimes:
            t0 = time.perf_counter()
            predictors[runtime] = base if runtime == "torch" else Predictor.load(model, runtime=runtime)
            load_s[runtime] = time.perf_counter() - t0
            predictors[runtime].predict(texts[:1], batch_size=args.batch_size)  # warm-up
        seconds = dict.fromkeys(runtimes, float("inf"))
        # Runtimes take turns within each pass, and the best pass of each is kept: on a shared
        # machine a busy spell then slows one pass of every runtime, not one runtime.
        for _ in range(args.repeat):
            for runtime in runtimes:
                t0 = time.perf_counter()
                predictors[runtime].predict(texts, batch_size=args.batch_size)
                seconds[runtime] = min(seconds[runtime], time.perf_counter() - t0)
        for runtime in runtimes:
            s = seconds[runtime]
            rows.append((size, runtime, len(texts) / s, tokens / s, flops / s / 1e9, load_s[runtime]))
    # Peaks measured before and after the timings, the best kept: a busy moment lowers one.
    peak, ort_fp32, ort_int8 = (max(a, b) for a, b in zip(peaks, measure_peaks(args.threads), strict=True))
    print(f"threads               : {args.threads} (torch and ONNX Runtime), batch size {args.batch_size}, best of {args.repeat} pass(es)")
    print(f"fp32 matmul peak      : {peak:.1f} GFLOP/s (torch, 2048^3); ONNX Runtime MatMul {ort_fp32:.1f}")
    print(f"int8 GEMM peak        : {ort_int8:.1f} GOP/s (ONNX Runtime MatMulInteger u8 x s8 -> s32, 2048^3)")
    print(f"machine load average  : {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine: wall figures vary with it)")
    print(f"{'size':<11} {'runtime':<10} {'reports/s':>9} {'tokens/s':>9} {'GFLOP/s':>8} {'% fp32 peak':>11} {'% int8 peak':>11} {'load s':>7}")
    for size, runtime, rate, token_rate, gflops, load_s in rows:
        int8_share = f"{100 * gflops / ort_int8:10.1f}%" if runtime == "onnx-int8" else f"{'-':>11}"
        print(f"{size:<11} {runtime:<10} {rate:9.2f} {token_rate:9.0f} "
              f"{gflops:8.1f} {100 * gflops / peak:10.1f}% {int8_share} {load_s:7.1f}")
    print("load s: model load, plus the ONNX export / int8 quantization on a first use (then cached).")
    print("onnx-int8: the encoder's weight products run in int8, the attention products and the "
          "label-wise head in fp32; its share of the int8 peak counts all FLOPs against it.")
    if args.map:
        model = resolve_quickstart(args.model)
        print(f"\nMAP on CodiEsp-FR dev, {model} (raw scores):")
        reference = None
        for runtime in runtimes:
            value, scores = dev_map(Predictor.load(model, runtime=runtime), args.batch_size)
            if reference is None:
                reference = (runtime, value, scores)
                print(f"  {runtime:<10}: MAP {value:.4f}")
                continue
            diff = abs(scores - reference[2]).max()
            agree = top_k_agreement(scores, reference[2], k=10)
            print(f"  {runtime:<10}: MAP {value:.4f} ({value - reference[1]:+.4f} vs {reference[0]}; "
                  f"largest probability difference {diff:.2e}); top-10 agreement per report: "
                  f"mean {agree.mean():.3f}, lowest {agree.min():.1f}, "
                  f"same 10 codes in {int((agree == 1).sum())} of {len(agree)} reports")
    return 0


def resolve_quickstart(arg: str | None) -> Path | str:
    """--model, else the newest quickstart run under runs/, else an untrained one of its size."""
    if arg:
        return arg
    return find_quickstart_run() or build_sized_model("quickstart")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="run folder or MLflow URI (quickstart size)")
    parser.add_argument("--n", type=int, default=None,
                        help="CodiEsp-FR dev reports to score (default 16; 64 with --end-to-end)")
    parser.add_argument("--n-base", type=int, default=4, help="reports at BERT-base size (default 4)")
    parser.add_argument("--threads", type=int, default=2, help="torch / ONNX Runtime threads (2 cores)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--runtimes", default="torch,onnx,onnx-int8", help="comma-separated")
    parser.add_argument("--sizes", default="quickstart,bert-base", help=f"comma-separated, of {', '.join(SIZES)}")
    parser.add_argument("--repeat", type=int, default=1, help="timed passes per runtime, best kept")
    parser.add_argument("--map", action="store_true", help="also MAP on the whole dev set per runtime")
    parser.add_argument("--end-to-end", action="store_true",
                        help="the one-model report: CLI end to end, evidence one-pass vs two-pass")
    args = parser.parse_args()
    unknown = [s for s in args.sizes.split(",") if s and s not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {unknown}: choose among {', '.join(SIZES)}")
    if args.end_to_end or not _scores_with_runtimes(args.model):
        args.n = 64 if args.n is None else args.n
        return end_to_end(args)
    args.n = 16 if args.n is None else args.n
    return compare_runtimes(args)


def _scores_with_runtimes(model: str | None) -> bool:
    """Only PLM-ICD runs have ONNX runtimes: another model (the hybrid, a baseline) given as
    --model gets the one-model report, with the hybrid's time per component."""
    if model is None:
        return True
    config = RunFolder(Path(model)).config
    if not config.is_file():  # an MLflow URI, or a folder without config: try the runtimes
        return True
    import yaml

    name = ((yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("model") or {}).get("name")
    return name in (None, "plm_icd")


def end_to_end(args: argparse.Namespace) -> int:
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
