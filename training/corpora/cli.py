"""`cimcoder data ...`: validate, describe and generate coded-stay data sets."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

logger = logging.getLogger(__name__)

_MAX_LISTED = 50


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` command group."""
    data = subparsers.add_parser("data", help="validate, describe and generate coded-stay data sets")
    commands = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)

    validate = commands.add_parser(
        "validate",
        help="load a data set and list every skipped record and unknown code "
        "(exit 1 if any, 2 if it cannot be read)",
    )
    validate.add_argument("path", metavar="PATH", help="file, folder, database URL or shipped name")
    _add_load_options(validate)
    validate.set_defaults(handler=_validate)

    stats = commands.add_parser("stats", help="stays, documents, tokens, codes, roles of a data set")
    stats.add_argument("dataset", metavar="DATASET", help="path, database URL or shipped name "
                       "(codiesp-fr/train, codiesp-fr/dev, synth-fr/N@SEED)")
    stats.add_argument("--json", action="store_true", help="print JSON")
    _add_load_options(stats)
    stats.set_defaults(handler=_stats)

    synth = commands.add_parser("synth", help="write N synthetic French stays to a JSONL file")
    synth.add_argument("--n", type=int, required=True, help="number of stays")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--output", required=True, help="output .jsonl file")
    synth.set_defaults(handler=_synth)


def _add_load_options(parser: argparse.ArgumentParser) -> None:
    from cimcoder.training.corpora.load import FORMATS

    parser.add_argument("--format", choices=FORMATS, default="auto", help="loader (default: by suffix)")
    parser.add_argument(
        "--unknown-codes", choices=("drop", "keep", "error"), default="drop",
        help="codes absent from the terminology: left out of stays and reported (drop), kept "
        "and reported (keep), or fatal (error)",
    )
    parser.add_argument("--terminology", choices=("cim10", "cim11"), default="cim10")


def _load(args: argparse.Namespace, name: str) -> Any:
    from cimcoder.training.corpora.load import load_dataset

    return load_dataset(
        name, format=args.format, terminology=args.terminology, unknown_codes=args.unknown_codes
    )


def _listed(title: str, items: list[Any]) -> None:
    if not items:
        return
    print(f"{title} ({len(items)}):")
    for item in items[:_MAX_LISTED]:
        print(f"  {item}")
    if len(items) > _MAX_LISTED:
        print(f"  ... and {len(items) - _MAX_LISTED} more")


def _validate(args: argparse.Namespace) -> int:
    corpus = _load(args, args.path)
    report = corpus.report
    print(f"{args.path}: {len(corpus)} stays loaded from {report.records_read} records")
    _listed("skipped records", [str(s) for s in report.skipped])
    _listed("invalid or unknown codes", [str(c) for c in report.unknown_codes])
    _listed("source codes without equivalent (expected, reported only)",
            [str(c) for c in report.unmapped_codes])
    no_code = [stay.id for stay in corpus if not stay.diagnoses]
    if no_code:
        print(f"note: {len(no_code)} stays have no diagnosis code (first: {no_code[0]})")
    if not len(corpus):
        print("invalid: no stay loaded")
        return 1
    if not report.ok:
        print(f"invalid: {len(report.skipped)} skipped records, "
              f"{len(report.unknown_codes)} invalid or unknown codes")
        return 1
    print("valid")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from cimcoder.training.corpora.stats import corpus_stats, format_stats

    corpus = _load(args, args.dataset)
    report = corpus.report
    if not report.ok:
        print(f"warning: {len(report.skipped)} records skipped, {len(report.unknown_codes)} invalid or "
              f"unknown codes left out; `cimcoder data validate {args.dataset}` lists them",
              file=sys.stderr)
    stats = corpus_stats(corpus)
    if args.json:
        print(json.dumps(stats, ensure_ascii=False, indent=2))
    else:
        print(format_stats(stats))
    return 0


def _synth(args: argparse.Namespace) -> int:
    from cimcoder.training.corpora.synth import write_jsonl

    n = write_jsonl(args.output, n=args.n, seed=args.seed)
    print(f"wrote {n} synthetic stays (seed {args.seed}) to {args.output}")
    return 0
