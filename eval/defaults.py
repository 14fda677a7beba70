"""Defaults of the decision policy, in a module light enough for the CLI to import at start-up
(the policy itself pulls numpy and scipy)."""

from typing import Literal

DEFAULT_MAX_REVIEW = 10
DEFAULT_MIN_REVIEW_PROBABILITY = 0.05
# Auto + review per stay <= ceil(budget * expected codes) + 1 (see eval/policy.py): chosen on
# CodiEsp-FR dev (hybrid), where 1 gave the best micro-F1 of the suggested codes of the
# budgets 1, 1.5 and 2 (0.59, 0.56, 0.55; 0.52 without).
DEFAULT_REVIEW_BUDGET = 1.0
# One-sided confidence of the lower bound an auto threshold must clear (see eval/policy.py).
DEFAULT_CONFIDENCE = 0.95
# Folds of the cross-fitted held-out measurement when the policy is fitted on a whole data set.
DEFAULT_FOLDS = 5
# Score calibration of the decision policy (see eval/policy.py for why one pooled map).
DEFAULT_CALIBRATION: Literal["platt"] = "platt"
