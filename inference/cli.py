"""CLI of cimcoder.inference: `cimcoder predict`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from cimcoder.errors import CimcoderError
from cimcoder.inference.schemas import RUNTIMES

if TYPE_CHECKING:
    from cimcoder.inference.predictor import Predictor, StayInput
    from cimcoder.inference.reader import Unreadable
    from cimcoder.inference.schemas import StayPrediction

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 32


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands."""
    parser = subparsers.add_parser(
        "predict",
        help="score reports in batch (JSONL out)",
        description="Score a folder of .txt reports (id = file stem), or a JSONL / Parquet file "
        "with 'id' and 'text', and write one JSON object per report to OUT.jsonl: ranked codes "
        "with calibrated score, decision, role, CIM-11 equivalents and evidence.",
    )
    parser.add_argument(
        "--model",
        default=None,
        metavar="URI_OR_PATH",
        help="run folder or MLflow URI (default: $CIMCODER_MODEL or models:/cimcoder@champion)",
    )
    parser.add_argument("--input", required=True, type=Path, metavar="PATH")
    parser.add_argument(
        "--output",
        required=True,
        type=Path,
        metavar="OUT.jsonl | DIR",
        help="a .jsonl file; with --engine spark a new folder (DIR/predictions and DIR/errors, "
        "Parquet)",
    )
    parser.add_argument(
        "--engine",
        choices=("local", "spark"),
        default="local",
        help="local (this process, default) or spark: Parquet or JSONL with 'id' and 'text' "
        "scored by PySpark (`pip install 'cimcoder[spark]'` and a Java runtime; the master "
        "comes from spark-submit, else local[*])",
    )
    parser.add_argument(
        "--batch-size", type=int, default=8, help="reports per model forward (default 8)"
    )
    parser.add_argument(
        "--runtime",
        choices=RUNTIMES,
        default=None,
        help="what runs the scoring: torch, onnx (ONNX Runtime fp32) or onnx-int8 (int8 "
        "weights); ONNX runtimes are for transformer (plm_icd) models, their graph exported "
        "once into the run folder (default: $CIMCODER_RUNTIME or torch)",
    )
    parser.add_argument(
        "--no-evidence",
        action="store_true",
        help="leave 'evidence' empty (skips all evidence work: ranking-only exports)",
    )
    parser.set_defaults(handler=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from cimcoder.inference.predictor import (
        DEFAULT_MODEL_URI,
        Predictor,
        StayInput,
        prediction_json,
    )
    from cimcoder.inference.reader import Unreadable, dedupe, read_reports

    if args.batch_size < 1:
        raise CimcoderError("--batch-size must be at least 1")
    if args.engine == "spark":
        return _run_predict_spark(args)
    output: Path = args.output
    if output.exists() and output.is_dir():
        raise CimcoderError(f"--output {output} is a folder: give a .jsonl file path")
    if not output.parent.exists():
        raise CimcoderError(f"the folder of --output does not exist: {output.parent}")

    records = dedupe(list(read_reports(args.input)))
    problems: list[Unreadable] = [r for r in records if isinstance(r, Unreadable)]
    inputs: list[StayInput] = [r for r in records if isinstance(r, StayInput)]
    for problem in problems:
        print(f"cimcoder: skipped {problem}", file=sys.stderr)
    if not inputs:
        raise CimcoderError(
            f"nothing to score in {args.input}: {len(problems)} report(s) could not be read"
        )

    model = args.model or os.environ.get("CIMCODER_MODEL") or DEFAULT_MODEL_URI
    predictor = Predictor.load(model, runtime=_runtime(args))

    tmp = output.with_name(output.name + ".part")
    scored = truncated = 0
    try:
        with tmp.open("w", encoding="utf-8") as out, tqdm(
            total=len(inputs), unit="report", desc="predict", file=sys.stderr, disable=None
        ) as bar:
            for start in range(0, len(inputs), DEFAULT_CHUNK):
                chunk = inputs[start : start + DEFAULT_CHUNK]
                for prediction in _predict_chunk(
                    predictor, chunk, args.batch_size, problems, evidence=not args.no_evidence
                ):
                    bar.update(1)
                    if prediction is None:
                        print(f"cimcoder: failed {problems[-1]}", file=sys.stderr)
                        continue
                    out.write(prediction_json(prediction) + "\n")
                    scored += 1
                    info = prediction.model.input
                    truncated += bool(info is not None and info.truncated)
        tmp.replace(output)
    finally:
        if tmp.exists():
            tmp.unlink()

    total = len(records)
    print(f"cimcoder: scored {scored} of {total} report(s) -> {output}", file=sys.stderr)
    if truncated:
        print(
            f"cimcoder: {truncated} report(s) longer than the model's chunk budget were scored "
            "on their beginning (see model.input.chars_read in their line)",
            file=sys.stderr,
        )
    if problems:
        print(f"cimcoder: {len(problems)} report(s) not scored:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
    if scored == 0:
        raise CimcoderError("no report could be scored")
    return 0


def _run_predict_spark(args: argparse.Namespace) -> int:
    from cimcoder.inference import spark

    spark.require_spark()
    job = spark.SparkJob(
        model=args.model or os.environ.get("CIMCODER_MODEL") or _default_model(),
        runtime=_runtime(args),
        batch_size=args.batch_size,
        evidence=not args.no_evidence,
    )
    result = spark.predict_to_parquet(spark.spark_session(), args.input, args.output, job)
    print(
        f"cimcoder: scored {result.scored} of {result.scored + result.errors} report(s) "
        f"-> {result.predictions}",
        file=sys.stderr,
    )
    if result.errors:
        print(f"cimcoder: {result.errors} report(s) not scored -> {result.errors_path}", file=sys.stderr)
    if result.scored == 0:
        raise CimcoderError("no report could be scored")
    return 0


def _default_model() -> str:
    from cimcoder.inference.predictor import DEFAULT_MODEL_URI

    return DEFAULT_MODEL_URI


def _runtime(args: argparse.Namespace) -> str:
    runtime = args.runtime or os.environ.get("CIMCODER_RUNTIME") or "torch"
    if runtime not in RUNTIMES:
        raise CimcoderError(f"CIMCODER_RUNTIME={runtime!r}: choose one of {', '.join(RUNTIMES)}")
    return runtime


def _predict_chunk(
    predictor: Predictor,
    chunk: list[StayInput],
    batch_size: int,
    problems: list[Unreadable],
    *,
    evidence: bool = True,
) -> list[StayPrediction | None]:
    """Predictions for `chunk`; a failing chunk is retried report by report (None: failed)."""
    try:
        return list(predictor.predict(chunk, batch_size=batch_size, evidence=evidence))
    except Exception:
        logger.warning("a batch of %d reports failed; scoring them one by one", len(chunk))
    results: list[StayPrediction | None] = []
    for item in chunk:
        try:
            results.append(predictor.predict([item], batch_size=batch_size, evidence=evidence)[0])
        except Exception as exc:  # one report's failure must not stop the export
            logger.warning("report %s could not be scored: %s", item.id, type(exc).__name__)
            reason = str(exc) if isinstance(exc, CimcoderError) else type(exc).__name__
            problems.append(Unreadable(f"id {item.id}", f"scoring failed ({reason})", item.id))
            results.append(None)
    return results
