"""End-to-end job: pretrain -> train -> calibrate -> evaluate -> register (placeholder)."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `run` sub-command."""
