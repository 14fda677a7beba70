"""A small explicit model registry and the `Scorer` protocol every model implements.

A model is a class registered under a name with `@register_model("name")`. It implements
`Scorer` (score texts, explain, save, load) and builds itself untrained with
`from_config(config, label_space)`. A scorer may also offer
`predict_scores_with_evidence(texts, batch_size, top_k) -> (scores, index)`, the evidence of
`explain` from the scoring pass itself (`plm_icd`); the predictor uses it when present.
Gradient-trained models (`plm_icd`) are trained by
`cimcoder.training.trainer`; models fitted in one call (baselines) also define
`fit(texts, targets)`, which the trainer calls instead of its gradient loop.

The run folder's `config.yaml` names the model, so `load_scorer(run_dir)` finds the class.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar, runtime_checkable

import numpy as np

from cimcoder.errors import CimcoderError

if TYPE_CHECKING:
    from cimcoder.training.config import RunConfig
    from cimcoder.training.labels import LabelSpace

logger = logging.getLogger(__name__)

# Modules that register models when imported; imported on the first registry look-up (not
# at package import, so `import cimcoder.training` stays light).
BUILTIN_MODEL_MODULES: tuple[str, ...] = (
    "cimcoder.training.models.plm_icd",
    "cimcoder.training.baselines",
    "cimcoder.training.models.hybrid",
)


class UnknownModelError(CimcoderError):
    """No model is registered under the requested name."""


@runtime_checkable
class Scorer(Protocol):
    """What evaluation, calibration and inference need from a trained model."""

    labels: list[str]
    label_space: LabelSpace

    def predict_scores(self, texts: Sequence[str], batch_size: int = 8) -> np.ndarray:
        """Probabilities in [0, 1], shape [len(texts), len(labels)], float32."""
        ...

    def explain(self, text: str, codes: Sequence[str], top_k: int = 3) -> dict[str, list[tuple[int, int]]]:
        """For each code, up to `top_k` character spans (start, end) of `text` supporting it."""
        ...

    def save(self, run_dir: str | Path) -> None:
        """Write the model's files into `run_dir` (config.yaml is written by the trainer)."""
        ...

    @classmethod
    def load(cls, run_dir: str | Path) -> Scorer:
        """Rebuild the model saved in `run_dir`."""
        ...


_REGISTRY: dict[str, type] = {}
_builtins_loaded = False

T = TypeVar("T", bound=type)


def register_model(name: str) -> Callable[[T], T]:
    """Class decorator: register a `Scorer` class under `name`."""

    def decorator(cls: T) -> T:
        existing = _REGISTRY.get(name)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"model name {name!r} is already registered by {existing!r}")
        for attr in ("from_config", "load", "predict_scores", "explain", "save"):
            if not hasattr(cls, attr):
                raise TypeError(f"{cls.__name__} registered as {name!r} lacks {attr}()")
        _REGISTRY[name] = cls
        cls.model_name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for module in BUILTIN_MODEL_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            # A module being written by another area may be missing; the others still work.
            if exc.name and module.startswith(exc.name):
                logger.debug("model module %s not available", module)
            else:
                raise


def registered_models() -> list[str]:
    """Names of every registered model."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_model(name: str) -> type:
    """The class registered under `name`; raises UnknownModelError listing the known names."""
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(_REGISTRY)) or "none"
        raise UnknownModelError(f"unknown model {name!r}; registered models: {known}") from None


def build_model(config: RunConfig, label_space: LabelSpace) -> Scorer:
    """An untrained model of `config.model.name` over `label_space`."""
    cls = get_model(config.model.name)
    # `register_model` checked that the class has from_config() and load().
    return cls.from_config(config, label_space)  # type: ignore[attr-defined]


def load_scorer(run_dir: str | Path) -> Scorer:
    """Load the trained model saved in a run folder, whatever its registered name."""
    from cimcoder.training.config import read_run_config

    path = Path(run_dir)
    if not path.is_dir():
        raise CimcoderError(f"model run folder not found: {path}")
    config = read_run_config(path)
    cls = get_model(config.model.name)
    return cls.load(path)  # type: ignore[attr-defined]
