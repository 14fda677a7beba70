"""Multi-label coding metrics, under their historical path.

Their home is `cimcoder.metrics`, below training and eval (a baseline scores its validation
split with them, eval builds its reports on them); import from there in new code.
"""

from cimcoder.metrics import (
    PRF,
    MetricInputError,
    average_precision_per_stay,
    best_f1_threshold,
    breakdown,
    collapse_to_groups,
    decide,
    macro_auc,
    macro_prf,
    mean_average_precision,
    micro_auc,
    micro_prf,
    per_label_prf,
    precision_at_k,
    principal_diagnosis_accuracy,
    recall_at_k,
    summarize,
)

__all__ = [
    "PRF",
    "MetricInputError",
    "average_precision_per_stay",
    "best_f1_threshold",
    "breakdown",
    "collapse_to_groups",
    "decide",
    "macro_auc",
    "macro_prf",
    "mean_average_precision",
    "micro_auc",
    "micro_prf",
    "per_label_prf",
    "precision_at_k",
    "principal_diagnosis_accuracy",
    "recall_at_k",
    "summarize",
]
