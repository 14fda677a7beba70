"""Typed run configurations, loaded from YAML plus dotted overrides (`training.lr=3e-5`).

One pydantic model per component, composed into `RunConfig` (fine-tuning) and
`PretrainConfig` (`cimcoder pretrain`). Every model forbids unknown keys so a typo in a
YAML file or an override fails loudly instead of being silently ignored.
"""

from __future__ import annotations

import logging
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cimcoder.errors import CimcoderError
from cimcoder.run_folder import CONFIG_FILE, RunFolder

logger = logging.getLogger(__name__)

DEFAULT_ENCODER = "artifacts/encoders/cimcoder-fr-mini"


class ConfigError(CimcoderError):
    """A configuration file or override is invalid."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- data


class LabelSpaceConfig(_Strict):
    terminology: Literal["cim10", "cim11"] = Field(
        "cim10",
        description="Target terminology. cim11 maps the gold CIM-10 codes through the WHO "
        "crosswalk and trains on the CIM-11 targets.",
    )
    min_count: int = Field(
        1, ge=1, description="Keep training codes seen in at least this many training stays."
    )
    include: Literal["train", "train+lexicon", "train+terminology"] = Field(
        "train",
        description="train: codes seen in training only. train+lexicon: also the codes of "
        "the curated clinical lexicon (terminologies/data/lexicon) and their parents and "
        "codable children, which mentions can find without training examples. "
        "train+terminology: also every code of the terminology (zero-shot scoring of unseen "
        "codes through label text).",
    )
    max_extra_codes: int | None = Field(
        None,
        ge=0,
        description="With include=train+terminology, cap the number of unseen codes added "
        "(first in code order); None adds all.",
    )


class DataConfig(_Strict):
    train: str = Field("codiesp-fr/train", description="Training data set (name or path).")
    extra_train: list[str] = Field(
        default_factory=list,
        description="More training data sets appended to `train` (a hospital's role-labelled "
        "PMSI export, synthetic PMSI-style stays `synth-fr/N@SEED`...). Never dev or test data.",
    )
    dev: str | None = Field(
        "codiesp-fr/dev",
        description="Validation data set for early stopping; None with "
        "validation=train_holdout.",
    )
    validation: Literal["dev", "train_holdout"] = Field(
        "dev",
        description="dev: early stopping on `dev`. train_holdout: on a deterministic "
        "slice of the training set (keeps dev untouched for the final evaluation).",
    )
    holdout_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="Share of training stays held out with train_holdout."
    )
    max_train_stays: int | None = Field(
        None, ge=1, description="Use only the first N training stays (smoke runs)."
    )
    labels: LabelSpaceConfig = Field(default_factory=LabelSpaceConfig)

    @model_validator(mode="after")
    def _dev_needed(self) -> DataConfig:
        if self.validation == "dev" and not self.dev:
            raise ValueError("validation=dev needs data.dev")
        return self


# --------------------------------------------------------------------------- model


class ChunkingConfig(_Strict):
    max_chunk_tokens: int = Field(
        256, ge=16, description="Tokens per chunk, special tokens included (<= encoder max)."
    )
    max_chunks: int = Field(
        16, ge=1, description="Chunks per report; the total budget is max_chunks x chunk size."
    )
    stride: int = Field(
        0, ge=0, description="Tokens shared by two consecutive chunks (overlap)."
    )

    @model_validator(mode="after")
    def _stride_fits(self) -> ChunkingConfig:
        if self.stride >= self.max_chunk_tokens - 2:
            raise ValueError("chunking.stride must be smaller than max_chunk_tokens - 2")
        return self

    @property
    def max_total_tokens(self) -> int:
        return self.max_chunks * self.max_chunk_tokens


class HeadConfig(_Strict):
    label_init: Literal["text", "random"] = Field(
        "text",
        description="text: label queries and output vectors start from the encoder's "
        "mean-pooled representation of each code's French label. random: normal init.",
    )
    attention_dim: int | None = Field(
        None,
        ge=8,
        description="Projection size of the label-wise attention (None: encoder hidden size).",
    )
    dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on token states.")
    label_text: Literal["long_label", "label"] = Field(
        "long_label", description="Which terminology text describes a code."
    )


class ModelConfig(_Strict):
    name: str = Field("plm_icd", description="Registered model name (see training/registry.py).")
    encoder: str = Field(
        DEFAULT_ENCODER,
        description="Local directory (or hub name, if a hub is reachable) of a Hugging Face "
        "encoder and its tokenizer: cimcoder-fr-mini, camembert-bio, DrBERT, ...",
    )
    chunking: ChunkingConfig = Field(default_factory=ChunkingConfig)
    head: HeadConfig = Field(default_factory=HeadConfig)
    freeze_encoder: bool = Field(False, description="Train the head only.")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="Options of models that are not transformers (baselines); validated by "
        "the model's own config class.",
    )


# --------------------------------------------------------------------------- training


class TrainingConfig(_Strict):
    epochs: int = Field(20, ge=1, description="Maximum epochs.")
    max_steps: int | None = Field(
        None, ge=1, description="Stop after this many optimizer steps (smoke runs, tests)."
    )
    lr: float = Field(5e-5, gt=0, description="Learning rate of the encoder.")
    head_lr: float | None = Field(
        1e-3, gt=0, description="Learning rate of the label-wise head (None: same as lr)."
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Linear warm-up share of steps.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    batch_size: int = Field(8, ge=1, description="Reports per micro-batch.")
    eval_batch_size: int = Field(16, ge=1, description="Reports per batch when scoring.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step.")
    seed: int = Field(13, description="Seed of python, numpy and torch.")
    patience: int = Field(
        4, ge=1, description="Early stopping: epochs without improvement of the dev metric."
    )
    imbalance: Literal["none", "pos_weight"] = Field(
        "pos_weight",
        description="pos_weight: BCE positive weight per code = clip(neg/pos, 1, "
        "pos_weight_max). none: plain BCE.",
    )
    pos_weight_max: float = Field(30.0, ge=1, description="Cap of the positive weight.")
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="Mixed precision: auto = bf16/fp16 autocast on CUDA, off on CPU."
    )
    num_threads: int | None = Field(
        None, ge=1, description="torch.set_num_threads (None: torch default)."
    )
    time_budget_s: float | None = Field(
        None,
        gt=0,
        description="Do not start an epoch that would end after this many seconds of training "
        "(the CPU quickstart's 15-minute bound). None: no limit.",
    )
    keep_checkpoints: bool = Field(
        True, description="Keep checkpoints/ after training (needed to resume)."
    )


class TrackingConfig(_Strict):
    experiment: str | None = Field(
        None, description="MLflow experiment and run folder parent (None: training data set)."
    )
    run_name: str | None = Field(
        None, description="Run folder name (None: the config file's name)."
    )
    tracking_uri: str | None = Field(
        None, description="MLflow tracking URI (None: MLFLOW_TRACKING_URI or the local store)."
    )


class RunConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    output_dir: str = Field("runs", description="Runs go to <output_dir>/<experiment>/<run_name>.")

    @property
    def experiment_name(self) -> str:
        if self.tracking.experiment:
            return self.tracking.experiment
        # "codiesp-fr/train" -> "codiesp-fr"; a path -> its parent folder's name.
        name = self.data.train.rstrip("/")
        return Path(name).parent.name or Path(name).stem or "default"

    @property
    def run_name(self) -> str:
        return self.tracking.run_name or self.model.name

    @property
    def run_dir(self) -> Path:
        return Path(self.output_dir) / self.experiment_name / self.run_name


# --------------------------------------------------------------------------- pretraining


class PretrainCorpusConfig(_Strict):
    codiesp_train: bool = Field(
        True, description="CodiEsp-FR training texts (never dev or test: they evaluate)."
    )
    terminology_labels: bool = Field(True, description="CIM-10 FR long labels, CIM-11 titles.")
    synthetic_reports: int = Field(
        300, ge=0, description="Synthetic reports from cimcoder.training.corpora.synth (0: none)."
    )
    paths: list[str] = Field(
        default_factory=list,
        description="Extra folders / .txt / .jsonl / data sets of reports (hospital corpus).",
    )


class TokenizerConfig(_Strict):
    kind: Literal["wordpiece", "bpe"] = Field("wordpiece", description="Tokenizer algorithm.")
    vocab_size: int = Field(8000, ge=200, description="Vocabulary size.")
    min_frequency: int = Field(2, ge=1, description="Minimum pair/word frequency.")
    lowercase: bool = Field(False, description="Lowercase text (accents are always kept).")


class EncoderArchConfig(_Strict):
    layers: int = Field(4, ge=1, description="Transformer layers.")
    hidden: int = Field(256, ge=16, description="Hidden size.")
    heads: int = Field(4, ge=1, description="Attention heads.")
    intermediate: int = Field(1024, ge=16, description="Feed-forward size.")
    max_positions: int = Field(512, ge=32, description="Maximum sequence length.")
    dropout: float = Field(0.1, ge=0, lt=1, description="Hidden dropout.")

    @model_validator(mode="after")
    def _heads_divide(self) -> EncoderArchConfig:
        if self.hidden % self.heads:
            raise ValueError("encoder.hidden must be a multiple of encoder.heads")
        return self


class PretrainTrainingConfig(_Strict):
    seq_len: int = Field(128, ge=16, description="Tokens per training sequence.")
    batch_size: int = Field(32, ge=1, description="Sequences per step.")
    lr: float = Field(5e-4, gt=0, description="Peak learning rate.")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Linear warm-up share.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    mlm_probability: float = Field(0.15, gt=0, lt=1, description="Masked token share.")
    epochs: int = Field(3, ge=1, description="Passes over the corpus (bounded by the budgets).")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many steps.")
    time_budget_s: float | None = Field(
        300, gt=0, description="Stop pretraining after this many seconds (None: no limit)."
    )
    seed: int = Field(13, description="Seed.")
    num_threads: int | None = Field(None, ge=1, description="torch.set_num_threads.")
    amp: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto",
        description="Mixed precision on a CUDA device (used when one is present): auto = "
        "bf16 autocast where supported, else fp16 with loss scaling. Always off on CPU.",
    )


class PretrainConfig(_Strict):
    corpus: PretrainCorpusConfig = Field(default_factory=PretrainCorpusConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    encoder: EncoderArchConfig = Field(default_factory=EncoderArchConfig)
    training: PretrainTrainingConfig = Field(default_factory=PretrainTrainingConfig)
    output_dir: str = Field(DEFAULT_ENCODER, description="Where the encoder is saved.")


# --------------------------------------------------------------------------- loading

C = TypeVar("C", bound=BaseModel)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form section.key=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model class inside an annotation (handles `X | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


def _apply_override(model_cls: type[BaseModel], data: dict, parts: list[str], value: Any) -> None:
    cls: type[BaseModel] | None = model_cls
    node = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if cls is not None:
            if part not in cls.model_fields:
                where = ".".join(parts[:depth]) or "the config"
                known = ", ".join(sorted(cls.model_fields))
                raise ConfigError(
                    f"unknown key {'.'.join(parts[: depth + 1])!r}: {where} has {known}"
                )
            field = cls.model_fields[part]
            next_cls = _model_of(field.annotation)
        else:
            next_cls = None  # free-form dict (model.params)
        if last:
            node[part] = value
        else:
            child = node.get(part)
            if not isinstance(child, dict):
                child = {}
                node[part] = child
            node = child
            if cls is not None and next_cls is None and typing.get_origin(
                cls.model_fields[part].annotation
            ) is not dict:
                raise ConfigError(f"{'.'.join(parts[: depth + 1])!r} is not a section")
            cls = next_cls


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration ({source}):"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def build_config(
    model_cls: type[C], data: dict | None, overrides: list[str] | None = None, source: str = ""
) -> C:
    """Validate `data` (a dict from YAML) with dotted `overrides` applied, into `model_cls`."""
    merged: dict = dict(data or {})
    for item in overrides or []:
        parts, value = _parse_override(item)
        _apply_override(model_cls, merged, parts, value)
    try:
        return model_cls.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source or model_cls.__name__)) from None


def _read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping of sections, not {type(data).__name__}")
    return data


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a run config YAML (only what differs from defaults) and apply overrides.

    `tracking.run_name` defaults to the file's stem, so re-running the same config reuses
    (and resumes) the same run folder.
    """
    data = _read_yaml(path) if path is not None else {}
    tracking = data.get("tracking")
    if path is not None and (tracking is None or isinstance(tracking, dict)):
        tracking = dict(tracking or {})
        tracking.setdefault("run_name", None)
        if not tracking["run_name"]:
            tracking["run_name"] = Path(path).stem
        data["tracking"] = tracking
    config = build_config(RunConfig, data, overrides, source=str(path or "defaults"))
    return config


def load_pretrain_config(
    path: str | Path | None, overrides: list[str] | None = None
) -> PretrainConfig:
    data = _read_yaml(path) if path is not None else {}
    return build_config(PretrainConfig, data, overrides, source=str(path or "defaults"))


def dump_config(config: BaseModel, path: str | Path) -> Path:
    """Write the fully resolved config (defaults included) as YAML."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(
        yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False, allow_unicode=True),
        encoding="utf-8",
    )
    return p


def read_run_config(run_dir: str | Path) -> RunConfig:
    """The resolved config saved in a run folder."""
    path = RunFolder(Path(run_dir)).config
    if not path.is_file():
        raise ConfigError(f"{run_dir} is not a model run folder (no {CONFIG_FILE})")
    return build_config(RunConfig, _read_yaml(path), source=str(path))
