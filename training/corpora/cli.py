"""CLI of cimcoder.training."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands."""
