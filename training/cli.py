"""CLI of cimcoder.training: `cimcoder pretrain` (the `train` command lives in cimcoder.pipeline)."""

from __future__ import annotations

import argparse

DEFAULT_PRETRAIN_CONFIG = "configs/pretrain/mini.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands."""
    p = subparsers.add_parser(
        "pretrain",
        help="train a French tokenizer and a small encoder (masked LM) offline",
        description="Train the offline default encoder from the French text at hand "
        "(CodiEsp-FR train, CIM-10/CIM-11 labels, synthetic reports, --corpus). The result "
        "loads with AutoModel/AutoTokenizer.from_pretrained like any downloaded checkpoint.",
    )
    p.add_argument("--config", default=None, help=f"pretraining config YAML (default: {DEFAULT_PRETRAIN_CONFIG} if present)")
    p.add_argument("--output", default=None, help="output folder (default: the config's output_dir, artifacts/encoders/cimcoder-fr-mini)")
    p.add_argument("--corpus", action="append", default=[], metavar="PATH",
                   help="extra reports: a folder of .txt/.jsonl, a .txt, a .jsonl (field 'text') or a data set; repeatable")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides, e.g. training.time_budget_s=120")
    p.set_defaults(handler=_pretrain)


def _pretrain(args: argparse.Namespace) -> int:
    from pathlib import Path

    from cimcoder.training.config import load_pretrain_config
    from cimcoder.training.pretrain import INFO_FILE, pretrain

    path = args.config
    if path is None and Path(DEFAULT_PRETRAIN_CONFIG).is_file():
        path = DEFAULT_PRETRAIN_CONFIG
    config = load_pretrain_config(path, args.overrides)
    if args.corpus:
        config.corpus.paths = [*config.corpus.paths, *args.corpus]
    out = pretrain(config, args.output)
    info = (out / INFO_FILE).read_text(encoding="utf-8")
    print(f"encoder saved to {out}")
    print(info)
    return 0
