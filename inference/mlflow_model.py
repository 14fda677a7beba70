"""The MLflow pyfunc model registered for each trained run: report text in, codes out.

The model's single artefact ("run") is the whole run folder. `predict` delegates to
`cimcoder.inference.Predictor` (calibrated scores, decisions, evidence, CIM-11), so an MLflow
deployment and `cimcoder predict` answer the same. When the Predictor cannot be used (not
installed in the serving environment, or the run has no `policy.json` yet) it falls back to
the scorer's top-k codes with their raw scores.

Output: a DataFrame with one row per input text and two string columns:
- `codes`: JSON array of the suggested codes, best first (decision auto/review with a
  Predictor; the top `fallback_top_k` codes otherwise);
- `prediction`: JSON object, the `cimcoder predict` line for that text (fallback: the codes
  with their raw scores and the model description).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mlflow.pyfunc import PythonModel

from cimcoder.training.tracking import load_run_dir_from_uri

__all__ = ["CimcoderPyfunc", "ModelInputError", "load_run_dir_from_uri", "texts_from_input"]

logger = logging.getLogger(__name__)

TEXT_COLUMN = "text"
# The `cimcoder predict` contract keeps at least the 30 best candidates; so does the fallback.
FALLBACK_TOP_K = 30


class ModelInputError(ValueError):
    """The input is not a DataFrame with a `text` column, nor a list of strings."""


def texts_from_input(model_input: Any) -> list[str]:
    """Report texts from a DataFrame (`text` column), a list of str, a str or a dict."""
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if TEXT_COLUMN not in model_input.columns:
            if len(model_input.columns) == 1:
                column = model_input.columns[0]
            else:
                raise ModelInputError(
                    f"input DataFrame needs a {TEXT_COLUMN!r} column; got {list(model_input.columns)}"
                )
        else:
            column = TEXT_COLUMN
        values = model_input[column].tolist()
    elif isinstance(model_input, pd.Series):
        values = model_input.tolist()
    elif isinstance(model_input, str):
        values = [model_input]
    elif isinstance(model_input, dict):
        if TEXT_COLUMN not in model_input:
            raise ModelInputError(f"input mapping needs a {TEXT_COLUMN!r} key")
        raw = model_input[TEXT_COLUMN]
        values = [raw] if isinstance(raw, str) else list(raw)
    elif isinstance(model_input, Sequence):
        values = list(model_input)
    else:
        raise ModelInputError(
            f"expected a DataFrame with a {TEXT_COLUMN!r} column or a list of str, "
            f"got {type(model_input).__name__}"
        )
    texts: list[str] = []
    for i, value in enumerate(values):
        if not isinstance(value, str):
            raise ModelInputError(f"row {i}: text must be a string, got {type(value).__name__}")
        texts.append(value)
    return texts


class CimcoderPyfunc(PythonModel):
    """pyfunc wrapper of a cimcoder run folder (artefact key "run")."""

    def __init__(self, fallback_top_k: int = FALLBACK_TOP_K) -> None:
        self.fallback_top_k = fallback_top_k
        self._predictor: Any = None
        self._scorer: Any = None
        self._run_dir: Path | None = None

    def load_context(self, context: Any) -> None:
        run_dir = Path(context.artifacts["run"])
        self.load_run(run_dir)

    def load_run(self, run_dir: str | Path) -> None:
        """Load the Predictor if possible, else the bare scorer (also used outside MLflow)."""
        self._run_dir = Path(run_dir)
        self._predictor = None
        self._scorer = None
        if (self._run_dir / "policy.json").is_file():
            try:
                from cimcoder.inference import Predictor
            except ImportError as exc:
                logger.warning("cimcoder Predictor not importable (%s); raw top-k scores", exc)
            else:
                self._predictor = Predictor.load(self._run_dir)
                return
        else:
            logger.info("run folder has no policy.json; the model returns raw top-k scores")
        from cimcoder.training.registry import load_scorer

        self._scorer = load_scorer(self._run_dir)

    # No type hints here on purpose: MLflow derives a schema from predict's hints and
    # rejects `Any`; the signature logged with the model describes the input instead.
    def predict(self, context, model_input, params=None):
        import pandas as pd

        texts = texts_from_input(model_input)
        if self._predictor is None and self._scorer is None:
            raise RuntimeError("CimcoderPyfunc.predict called before load_context")
        if not texts:
            return pd.DataFrame({"codes": [], "prediction": []})
        if self._predictor is not None:
            rows = [p.model_dump(mode="json") for p in self._predictor.predict(texts)]
            codes = [
                [c["code"] for c in row.get("codes", []) if c.get("decision") != "reject"]
                for row in rows
            ]
        else:
            rows, codes = self._fallback(texts)
        return pd.DataFrame(
            {
                "codes": [json.dumps(c, ensure_ascii=False) for c in codes],
                "prediction": [json.dumps(r, ensure_ascii=False) for r in rows],
            }
        )

    def _fallback(self, texts: list[str]) -> tuple[list[dict], list[list[str]]]:
        import numpy as np

        scorer = self._scorer
        scores = np.asarray(scorer.predict_scores(texts))
        labels = list(scorer.labels)
        k = min(self.fallback_top_k, len(labels))
        space = scorer.label_space
        model = {
            "name": self._run_dir.name if self._run_dir else "cimcoder",
            "architecture": getattr(scorer, "model_name", type(scorer).__name__),
            "terminology": space.terminology,
            "edition": space.edition,
            "labels": len(labels),
            "calibrated": False,
            "note": "no decision policy: raw scores, no decisions",
        }
        rows: list[dict] = []
        codes: list[list[str]] = []
        for i in range(len(texts)):
            order = np.argsort(-scores[i], kind="stable")[:k]
            ranked = [{"code": labels[j], "score": round(float(scores[i, j]), 6)} for j in order]
            rows.append({"id": str(i), "codes": ranked, "model": model})
            codes.append([r["code"] for r in ranked])
        return rows, codes
