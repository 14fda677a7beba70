"""cimcoder.inference: the predictor (run folder or MLflow model -> PMSI coding suggestions).

Names are resolved lazily so `import cimcoder.inference` loads neither torch nor mlflow.
"""

from __future__ import annotations

from cimcoder.lazy import lazy_exports

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
