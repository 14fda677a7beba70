"""Coding quality of a model on expert-coded reports (crh-dev, or a hospital's own set).

    .venv/bin/python benchmarks/bench_crh.py --model RUN_OR_URI [--data DIR] [--json]
        [--output PREDICTIONS.jsonl] [--no-evidence]

- DATA: a coded folder (`text/<doc_id>.txt`, `gold.tsv`, optional `must_not.tsv`; see
  `cimcoder.eval.coding`), by default ../shared/data/crh-dev next to the repository. It is a
  test set: measure on it, never tune on it.
- The model is loaded with `Predictor.load` (a run folder or an MLflow URI) and predicts every
  report in one `predict` call, timed (model load apart); evidence is computed as in
  `cimcoder predict` unless --no-evidence.
- Figures (`cimcoder.eval.coding.coding_metrics`): micro P/R/F1 of the suggested (auto or
  review) and of the auto-coded codes, DP accuracy (exact and at 4 characters), traps emitted
  (exact code and category, by reason), R@5/10/30 of the ranking, reports per second.
- --json prints the figures as one JSON object; --output writes one `cimcoder predict` line
  per report (its `id` is the doc_id).
- A missing folder or model, or a malformed folder: one line on stderr, exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cimcoder.errors import CimcoderError

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "crh-dev"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="run folder or MLflow model URI")
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help=f"coded folder (default {DEFAULT_DATA})"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--output", type=Path, help="write the predictions here (JSONL)")
    parser.add_argument(
        "--no-evidence", action="store_true", help="skip evidence spans (faster predict)"
    )
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from cimcoder.eval.coding import coding_metrics, load_coded_folder
    from cimcoder.inference import Predictor
    from cimcoder.inference.predictor import StayInput

    reports = load_coded_folder(args.data)  # before the model: a bad folder fails fast
    start = time.perf_counter()
    predictor = Predictor.load(args.model)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    stays = predictor.predict(
        [StayInput(r.doc_id, r.text) for r in reports], evidence=not args.no_evidence
    )
    predict_s = time.perf_counter() - start
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        with args.output.open("w", encoding="utf-8") as fh:
            for stay in stays:
                fh.write(stay.model_dump_json() + "\n")
    metrics = coding_metrics(
        reports, [[(c.code, c.decision, c.role) for c in stay.codes] for stay in stays]
    )
    return {
        "model": predictor.model_info().model_dump(exclude={"input", "note"}),
        "data": str(args.data),
        "evidence": not args.no_evidence,
        "metrics": metrics.to_dict(),
        "timing": {
            "load_s": load_s,
            "predict_s": predict_s,
            "reports_per_s": len(reports) / predict_s if predict_s > 0 else None,
        },
    }


def _pct(x: float) -> str:
    return f"{100 * x:5.1f} %"


def render(result: dict[str, Any]) -> str:
    model, m, timing = result["model"], result["metrics"], result["timing"]
    policy = f"policy {model['thresholds_version']}" if model["calibrated"] else "NO policy"
    lines = [
        f"model    {model['name']} ({model['architecture']}, {model['labels']} codes, "
        f"version {model['version']}, {policy})",
        f"data     {result['data']}: {m['reports']} reports, {m['gold_codes']} gold codes, "
        f"{m['traps']} traps",
        "",
        f"{'':12}{'P':>8}{'R':>8}{'F1':>8}{'codes':>7}   traps exact / category",
    ]
    for level in ("suggested", "auto"):
        x = m[level]
        traps = x["traps"]["total"]
        lines.append(
            f"{level:12}{x['precision']:8.3f}{x['recall']:8.3f}{x['f1']:8.3f}{x['emitted']:7d}"
            f"   {traps['exact']:3d} / {traps['category']:3d}  of {traps['traps']}"
        )
    dp = m["dp"]
    lines += [
        "",
        f"DP       4 chars {dp['hits_four_chars']}/{dp['reports']} ({_pct(dp['four_chars'])}), "
        f"exact {dp['hits_exact']}/{dp['reports']} ({_pct(dp['exact'])})",
        "R@k      " + ", ".join(f"R@{k} {v:.3f}" for k, v in m["recall_at"].items()),
        "",
        f"{'traps by reason':20}{'n':>5}{'auto ex/cat':>14}{'sugg. ex/cat':>15}",
    ]
    for reason, count in m["suggested"]["traps"]["by_reason"].items():
        auto = m["auto"]["traps"]["by_reason"][reason]
        lines.append(
            f"{reason:20}{count['traps']:5d}{auto['exact']:>7d} /{auto['category']:>3d}"
            f"{count['exact']:>9d} /{count['category']:>3d}"
        )
    rate = timing["reports_per_s"]
    lines += [
        "",
        f"speed    {rate:.2f} reports/s (predict {timing['predict_s']:.2f} s, "
        f"evidence {'on' if result['evidence'] else 'off'}; model load {timing['load_s']:.2f} s)",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = run(args)
    except CimcoderError as exc:
        print(f"bench_crh: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
