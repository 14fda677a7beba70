"""`cimcoder calibrate` / `cimcoder evaluate`: the help says what the code does."""

from __future__ import annotations

import argparse
import re

from cimcoder.cli import build_parser
from cimcoder.eval.defaults import DEFAULT_CALIBRATION, DEFAULT_CONFIDENCE


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = sub.choices[name]
    return found


def _shown(value: object) -> str:
    return format(value, "g") if isinstance(value, float) else str(value)


def test_every_default_in_the_calibrate_help_is_the_real_default() -> None:
    checked = 0
    for action in _subparser("calibrate")._actions:
        said = re.search(r"default ([^;),]+)[;),]", action.help or "")
        if said is None or action.default is None:
            continue
        assert said.group(1) == _shown(action.default), action.option_strings
        checked += 1
    assert checked >= 9


def test_calibrate_help_matches_the_policy_defaults() -> None:
    helps = {a.dest: a.help or "" for a in _subparser("calibrate")._actions}
    # The bound is 95 % by default: the help must not call 0.95 the strict alternative.
    assert f"default {DEFAULT_CONFIDENCE}" in helps["confidence"]
    assert "0.95 is stricter" not in helps["confidence"]
    assert f"default {DEFAULT_CALIBRATION}" in helps["calibration"]
    # min_positives gates the auto thresholds too, not only calibration and review.
    assert "auto and review thresholds" in helps["min_positives"]
