"""cimcoder.inference: the predictor (run folder or MLflow model -> PMSI coding suggestions).

Names are resolved lazily so `import cimcoder.inference` loads neither torch nor mlflow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cimcoder.lazy import lazy_exports

if TYPE_CHECKING:  # real types for mypy and editors; at run time `__getattr__` imports
    from cimcoder.inference.predictor import (
        DEFAULT_MODEL_URI as DEFAULT_MODEL_URI,
        EmptyReportError as EmptyReportError,
        ModelMismatchError as ModelMismatchError,
        Predictor as Predictor,
        PredictorError as PredictorError,
        StayInput as StayInput,
    )
    from cimcoder.inference.schemas import (
        CodePrediction as CodePrediction,
        Evidence as Evidence,
        ModelInfo as ModelInfo,
        StayPrediction as StayPrediction,
    )

_EXPORTS = {
    "Predictor": "cimcoder.inference.predictor",
    "StayInput": "cimcoder.inference.predictor",
    "PredictorError": "cimcoder.inference.predictor",
    "ModelMismatchError": "cimcoder.inference.predictor",
    "EmptyReportError": "cimcoder.inference.predictor",
    "DEFAULT_MODEL_URI": "cimcoder.inference.predictor",
    "StayPrediction": "cimcoder.inference.schemas",
    "CodePrediction": "cimcoder.inference.schemas",
    "Evidence": "cimcoder.inference.schemas",
    "ModelInfo": "cimcoder.inference.schemas",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
