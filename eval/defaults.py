"""Defaults of the decision policy, in a module light enough for the CLI to import at start-up
(the policy itself pulls numpy and scipy)."""

DEFAULT_MAX_REVIEW = 10
DEFAULT_MIN_REVIEW_PROBABILITY = 0.05
