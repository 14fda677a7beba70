"""The `cimcoder` console script.

Each area of the design owns its sub-commands in its own `cli.py`, exposing
`register(subparsers)`; this module only assembles them. Area modules are imported
lazily, inside `main`, so `cimcoder --help` stays fast and nothing heavy (torch, mlflow)
is imported for a terminology look-up.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from cimcoder import __version__
from cimcoder.errors import CimcoderError

# Order is the order shown in `cimcoder --help`.
_AREAS = (
    "cimcoder.terminologies.cli",
    "cimcoder.training.corpora.cli",
    "cimcoder.training.cli",
    "cimcoder.eval.cli",
    "cimcoder.inference.cli",
    "cimcoder.serving.cli",
    "cimcoder.serving.review.cli",
    "cimcoder.pipeline",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cimcoder",
        description="Automated CIM-10 FR / CIM-11 coding of French hospital reports (PMSI).",
    )
    parser.add_argument("--version", action="version", version=f"cimcoder {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in _AREAS:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.handler(args) or 0)
    except CimcoderError as exc:
        print(f"cimcoder: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("cimcoder: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # Output piped into `head` and the like: the reader left, nothing is wrong.
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
