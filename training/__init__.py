"""cimcoder.training: models, label spaces, configs and the training loop.

`pretrain` is imported from `cimcoder.training.pretrain`: exporting it here would clash with
the sub-module of the same name.

Heavy modules (torch, transformers) are imported lazily: `import cimcoder.training`
only defines names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cimcoder.lazy import lazy_exports

if TYPE_CHECKING:  # real types for mypy and editors; at run time `__getattr__` imports
    from cimcoder.training.config import (
        PretrainConfig as PretrainConfig,
        RunConfig as RunConfig,
        dump_config as dump_config,
        load_config as load_config,
        read_run_config as read_run_config,
    )
    from cimcoder.training.labels import LabelSpace as LabelSpace
    from cimcoder.training.registry import (
        Scorer as Scorer,
        build_model as build_model,
        get_model as get_model,
        load_scorer as load_scorer,
        register_model as register_model,
        registered_models as registered_models,
    )
    from cimcoder.training.trainer import train as train

_EXPORTS = {
    "load_scorer": "cimcoder.training.registry",
    "register_model": "cimcoder.training.registry",
    "get_model": "cimcoder.training.registry",
    "registered_models": "cimcoder.training.registry",
    "build_model": "cimcoder.training.registry",
    "Scorer": "cimcoder.training.registry",
    "LabelSpace": "cimcoder.training.labels",
    "RunConfig": "cimcoder.training.config",
    "PretrainConfig": "cimcoder.training.config",
    "load_config": "cimcoder.training.config",
    "dump_config": "cimcoder.training.config",
    "read_run_config": "cimcoder.training.config",
    "train": "cimcoder.training.trainer",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
