"""CLI of cimcoder.terminologies."""

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands."""
