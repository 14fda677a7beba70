"""The MLflow pyfunc model registered for each trained run: report text in, codes out, and
its registration (`register_run_model`: log a run folder as this model, maybe move an alias).

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
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from mlflow.pyfunc import PythonModel

from cimcoder.run_folder import CHECKPOINT_DIR, CONFIG_FILE, POLICY_FILE, RunFolder
from cimcoder.training.tracking import (
    RegisteredModel,
    RunTracker,
    TrackingError,
    fluent_uri,
    load_run_dir_from_uri,
    read_run_metric,
    redact_uri,
)

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

__all__ = [
    "CimcoderPyfunc",
    "ModelInputError",
    "load_run_dir_from_uri",
    "register_run_model",
    "texts_from_input",
]

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
        if RunFolder(self._run_dir).has(POLICY_FILE):
            try:
                from cimcoder.inference import Predictor
            except ImportError as exc:
                logger.warning("cimcoder Predictor not importable (%s); raw top-k scores", exc)
            else:
                self._predictor = Predictor.load(self._run_dir)
                return
        else:
            logger.info("run folder has no %s; the model returns raw top-k scores", POLICY_FILE)
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


# ====================================================================== registration


def _model_signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "text")]),
        outputs=Schema([ColSpec("string", "codes"), ColSpec("string", "prediction")]),
    )


def _pip_requirements() -> list[str]:
    from importlib import metadata

    reqs = []
    for dist in ("mlflow", "torch", "transformers", "scikit-learn", "numpy", "pandas", "edsnlp"):
        try:
            reqs.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    return reqs


def _champion_metric(client: MlflowClient, name: str, alias: str, metric: str) -> float | None:
    """Metric of the model currently holding `alias` (None when there is none)."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None
    tag = (mv.tags or {}).get(f"cimcoder.{metric}")
    if tag is not None:
        try:
            return float(tag)
        except ValueError:
            pass
    if mv.run_id:
        try:
            value = client.get_run(mv.run_id).data.metrics.get(metric)
            return None if value is None else float(value)
        except MlflowException:
            return None
    return None


def register_run_model(
    run_dir: str | Path,
    tracker: RunTracker,
    name: str = "cimcoder",
    alias: str = "champion",
    promote: bool | Literal["if_better"] = "if_better",
    metric: str = "map",
    input_example: str | None = None,
) -> RegisteredModel:
    """Log the run folder as an MLflow pyfunc model, register it, and maybe move `alias`.

    The whole run folder goes into the model (artefact key "run"). `promote=True` always sets
    `alias` on the new version; "if_better" only when its `metric` (from metrics.json) beats
    the current alias holder's (or when nobody holds it yet); False never.
    """
    import mlflow
    import pandas as pd

    python_model = CimcoderPyfunc()

    root = Path(run_dir).resolve()
    if not RunFolder(root).is_run():
        raise TrackingError(f"{root} is not a model run folder (no {CONFIG_FILE})")
    value = read_run_metric(root, metric)
    client = tracker.client

    tracker.log_run_folder_summary(root)
    example = pd.DataFrame(
        {"text": [input_example or "Patient de 67 ans hospitalisé pour insuffisance cardiaque."]}
    )
    with fluent_uri(tracker.tracking_uri), tempfile.TemporaryDirectory() as tmp:
        # The model holds a copy of the run folder without resumable checkpoints (large, and
        # useless for serving).
        staged = Path(tmp) / root.name
        _copy_run_folder(root, staged)
        mlflow.start_run(run_id=tracker.run_id)
        try:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=python_model,
                artifacts={"run": str(staged)},
                signature=_model_signature(),
                input_example=example,
                pip_requirements=_pip_requirements(),
                registered_model_name=name,
                await_registration_for=60,
            )
        except Exception as exc:
            raise TrackingError(
                f"could not log/register the model at {redact_uri(tracker.tracking_uri)}: {exc}. "
                f"The run folder {root} is intact: register it again once MLflow is reachable"
            ) from exc
        finally:
            # Leave the run RUNNING: the caller's tracker ends it.
            mlflow.end_run(status="RUNNING")
    version = str(info.registered_model_version)
    if value is not None:
        client.set_model_version_tag(name, version, f"cimcoder.{metric}", repr(value))
    client.set_model_version_tag(name, version, "cimcoder.run_folder", root.name)

    current = _champion_metric(client, name, alias, metric)
    if promote is True:
        promoted = True
    elif promote == "if_better":
        holder_exists = _alias_holder(client, name, alias) is not None
        promoted = (not holder_exists) or (
            value is not None and (current is None or value > current)
        )
    else:
        promoted = False
    if promoted:
        client.set_registered_model_alias(name, alias, version)
        logger.info(
            "registered %s version %s (%s=%s) and set @%s (previous: %s)",
            name, version, metric, value, alias, current,
        )
    else:
        logger.info(
            "registered %s version %s (%s=%s); @%s stays (its %s=%s)",
            name, version, metric, value, alias, metric, current,
        )
    tracker.set_tags({"cimcoder.registered_model": f"{name}/{version}"})
    return RegisteredModel(
        name=name,
        version=version,
        model_uri=f"models:/{name}/{version}",
        metric=value,
        promoted=promoted,
        alias=alias,
    )


def _alias_holder(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def _copy_run_folder(src: Path, dst: Path) -> None:
    import shutil

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(CHECKPOINT_DIR, "__pycache__"))
