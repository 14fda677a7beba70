"""The training loop: data -> label space -> model -> epochs with early stopping -> run folder.

`train(config)` writes `runs/<experiment>/<run_name>/` (see docs/ARCHITECTURE.md). Every epoch
ends with a checkpoint in `checkpoints/` (weights, optimizer, scheduler, RNG and the
`TrainState`), so a run that was interrupted (crash, Ctrl-C, `training.max_steps`) resumes
where it stopped when `train` is called again on the same config.

The loop is plain steps: `train_one_epoch`, `validate`, `record_validation`,
`save_checkpoint` / `load_checkpoint`. Models fitted in one call (baselines, the hybrid)
go through `cimcoder.training.baselines.fit_baseline` instead.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from tqdm.auto import tqdm

from cimcoder.run_folder import (
    CHECKPOINT_DIR as CHECKPOINT_DIR,  # importable from here as before
    METRICS_FILE,
    RunFolder,
    write_json_atomic,
)
from cimcoder.training import distributed
from cimcoder.training.baselines import fit_baseline
from cimcoder.training.config import RunConfig, TrainingConfig, dump_config, read_run_config
from cimcoder.training.data import TrainingData, TrainingError, prepare_data
from cimcoder.training.labels import LabelSpace
from cimcoder.training.registry import build_model, get_model

if TYPE_CHECKING:
    from cimcoder.training.tracking import RunTracker

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "last.pt"  # in RunFolder.checkpoints
STATE_FILE = "state.json"

ValidationMetric = Callable[[np.ndarray, np.ndarray], float]

# Config keys that may change between an interrupted run and its resumption.
_RESUMABLE_CHANGES = {("training", "max_steps"), ("training", "epochs"), ("training", "num_threads"),
                      ("training", "patience"), ("training", "time_budget_s"),
                      ("tracking", "tracking_uri")}


# --------------------------------------------------------------------------- global state


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CPU and every CUDA device


@contextmanager
def owned_global_state(seed: int, num_threads: int | None) -> Iterator[None]:
    """Run the body with the global state a run's result depends on set from its config.

    Python/numpy/torch RNGs are seeded from `seed` (model init, dropout; data order has its own
    generator, see `_epoch_batches`) and torch's intra-op thread count, which changes the order
    of float reductions, is `num_threads` when given. The caller's RNG states and thread count
    are restored afterwards: a run neither depends on nor leaks into what runs before or after.
    """
    saved_rng, saved_threads = _rng_state(), torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    _seed_everything(seed)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        _set_rng_state(saved_rng)


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def autocast_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype of an `amp` setting (auto/off/bf16/fp16): None on CPU or when off."""
    if device.type != "cuda" or mode == "off":
        return None
    if mode == "fp16":
        return torch.float16
    if mode == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


# --------------------------------------------------------------------------- protocols


@runtime_checkable
class GradientScorer(Protocol):
    """A model this loop trains (`plm_icd`): its network and its input stages."""

    net: torch.nn.Module

    def chunk(self, texts: Sequence[str]) -> list[Any]: ...

    def batch(self, docs: Sequence[Any]) -> Any: ...

    def predict_logits(self, docs: Sequence[Any], batch_size: int = 8) -> np.ndarray: ...

    def save(self, run_dir: str | Path) -> None: ...




class Tracker(Protocol):
    """What the loop logs to (`cimcoder.training.tracking.RunTracker` in the CLI)."""

    def log_params(self, params: Mapping[str, Any]) -> None: ...

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None: ...

    def log_artifacts(self, local_dir: str) -> None: ...


class SafeTracker:
    """The run's tracker, or none. A tracking failure is logged and ends tracking, never
    training: the run folder keeps everything."""

    def __init__(self, tracker: Tracker | None) -> None:
        self.tracker = tracker

    def log_params(self, params: Mapping[str, Any]) -> None:
        if self.tracker is not None:
            with self._failure_ends_tracking():
                self.tracker.log_params(params)

    def log_metrics(self, metrics: Mapping[str, Any], step: int) -> None:
        if self.tracker is not None:
            with self._failure_ends_tracking():
                self.tracker.log_metrics(metrics, step=step)

    def log_artifacts(self, local_dir: str) -> None:
        if self.tracker is not None:
            with self._failure_ends_tracking():
                self.tracker.log_artifacts(local_dir)

    @contextmanager
    def _failure_ends_tracking(self) -> Iterator[None]:
        try:
            yield
        except Exception as exc:  # tracking must not lose a training run
            self.tracker = None
            logger.warning("tracking failed (%s: %s); training goes on, the run folder keeps everything",
                           type(exc).__name__, exc)


def _flat_params(config: RunConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = node

    walk("", config.model_dump(mode="json"))
    return out


# --------------------------------------------------------------------------- run state


@dataclass
class TrainState:
    """Where a run stands. A checkpoint saves exactly this (as `to_dict()`) next to the
    weights, optimizer, scheduler, scaler and RNG states; `checkpoints/state.json` shows it."""

    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # micro-batches done in the current epoch
    global_step: int = 0  # optimizer steps
    best_metric: float | None = None  # validation score of the saved model, higher is better
    best_epoch: int | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    stop_reason: str | None = None  # "early_stopping" or "time_budget" once stopped_early
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per validation
    epoch_losses: list[float] = field(default_factory=list)  # of the current epoch's batches
    tokens_seen: int = 0
    train_seconds: float = 0.0  # in training batches
    elapsed_seconds: float = 0.0  # whole epochs, validation included (the time budget's clock)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainState:
        """Checkpoints written before a field existed resume with its default."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class Optimization:
    """The network and what updates it; `save_checkpoint` saves their states."""

    net: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # fp16 autocast only
    amp_dtype: torch.dtype | None
    device: torch.device


@dataclass
class EncodedData:
    """The training and validation reports, chunked by the model, their targets, and the
    loss (its positive weights come from the training targets)."""

    train_docs: list[Any]
    validation_docs: list[Any]
    y_train: np.ndarray  # float32 [n_train, L]
    y_validation: np.ndarray  # bool [n_validation, L]
    loss_fn: torch.nn.Module
    train_lengths: list[int]  # tokens of each training report (batches group similar ones)


def encode_data(scorer: GradientScorer, data: TrainingData, config: RunConfig, device: torch.device) -> EncodedData:
    train_docs = scorer.chunk([e.text for e in data.train])
    val_docs = scorer.chunk([e.text for e in data.validation])
    truncated = sum(d.truncated for d in train_docs) + sum(d.truncated for d in val_docs)
    if truncated:
        logger.warning(
            "%d reports exceed the %d-token budget (model.chunking); their end is not read",
            truncated, config.model.chunking.max_total_tokens,
        )
    y_train = np.asarray(data.label_space.encode([e.codes for e in data.train]), dtype=np.float32)
    y_val = np.asarray(data.label_space.encode([e.codes for e in data.validation]), dtype=bool)
    pos_weight = _bce_pos_weight(config, y_train)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight.to(device) if pos_weight is not None else None)
    lengths = [sum(len(c) for c in d.input_ids) for d in train_docs]
    return EncodedData(train_docs, val_docs, y_train, y_val, loss_fn, lengths)


def _bce_pos_weight(config: RunConfig, y: np.ndarray) -> torch.Tensor | None:
    if config.training.imbalance == "none":
        return None
    pos = y.sum(0).astype(np.float64)
    neg = len(y) - pos
    weight = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return torch.tensor(np.clip(weight, 1.0, config.training.pos_weight_max), dtype=torch.float32)


def build_optimization(net: torch.nn.Module, tcfg: TrainingConfig, n_train: int) -> Optimization:
    """AdamW (head and encoder at their own learning rates), linear warm-up then linear decay
    to 0 over the planned steps.

    The schedule is transformers' `get_linear_schedule_with_warmup`. The hand-written one it
    replaces warmed up from 1/W (step s: (s + 1) / W), transformers' from 0 (s / W): with a
    warm-up (W > 0), the first optimizer step has a learning rate of 0 and each warm-up step
    is 1/W of the peak lower. The decay after warm-up is the same, (total - s) / (total - W).
    """
    from transformers import get_linear_schedule_with_warmup

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net = net.to(device)
    head = [p for n, p in net.named_parameters() if n.startswith("head.") and p.requires_grad]
    encoder = [p for n, p in net.named_parameters() if not n.startswith("head.") and p.requires_grad]
    groups = [{"params": head, "lr": tcfg.head_lr or tcfg.lr}]
    if encoder:
        groups.append({"params": encoder, "lr": tcfg.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=tcfg.weight_decay)
    total_steps = math.ceil(n_train / (tcfg.batch_size * tcfg.grad_accum)) * tcfg.epochs
    scheduler = get_linear_schedule_with_warmup(
        optimizer, num_warmup_steps=int(total_steps * tcfg.warmup_ratio), num_training_steps=total_steps
    )
    amp_dtype = autocast_dtype(tcfg.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    return Optimization(net, optimizer, scheduler, scaler, amp_dtype, device)


def optimizer_step(opt: Optimization, max_grad_norm: float) -> None:
    """Clip the accumulated gradients, step the optimizer and the schedule, clear them."""
    if opt.scaler:
        opt.scaler.unscale_(opt.optimizer)
    torch.nn.utils.clip_grad_norm_(opt.net.parameters(), max_grad_norm)
    if opt.scaler:
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
    else:
        opt.optimizer.step()
    opt.scheduler.step()
    opt.optimizer.zero_grad(set_to_none=True)


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: Path, state: TrainState, opt: Optimization) -> None:
    """Write the run's position atomically, and `state.json` beside it for people.

    With several processes, every rank calls it (each one's RNG state is gathered, for
    dropout to resume exactly) and rank 0 alone writes.
    """
    rngs = distributed.gather(_rng_state())
    if rngs is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({
        "model": distributed.unwrap(opt.net).state_dict(),
        "optimizer": opt.optimizer.state_dict(),
        "scheduler": opt.scheduler.state_dict(),
        "scaler": opt.scaler.state_dict() if opt.scaler else None,
        "rng": rngs[0],
        "rng_by_rank": rngs,
        "state": state.to_dict(),
    }, tmp)
    tmp.replace(path)
    write_json_atomic(path.parent / STATE_FILE, state.to_dict())


def load_checkpoint(path: Path, opt: Optimization) -> TrainState:
    """Restore weights, optimizer, scheduler, scaler and RNG states; return the run's state."""
    # weights_only=False: the RNG states are numpy/python objects; the file is the run's own.
    ckpt = torch.load(path, map_location=opt.device, weights_only=False)
    distributed.unwrap(opt.net).load_state_dict(ckpt["model"])
    opt.optimizer.load_state_dict(ckpt["optimizer"])
    opt.scheduler.load_state_dict(ckpt["scheduler"])
    if opt.scaler is not None and ckpt.get("scaler"):
        opt.scaler.load_state_dict(ckpt["scaler"])
    # Each rank its own RNG state when the run had as many processes; else rank 0's.
    rank = distributed.current()
    rngs = ckpt.get("rng_by_rank") or [ckpt["rng"]]
    _set_rng_state(rngs[rank.rank] if len(rngs) == rank.world_size else ckpt["rng"])
    return TrainState.from_dict(ckpt["state"])


# --------------------------------------------------------------------------- steps


def _epoch_batches(lengths: Sequence[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Shuffled batches of reports of similar length (less padding), reproducible per epoch.

    Reports are shuffled, cut into pools of 16 batches, sorted by length inside a pool, cut
    into batches, and the batches shuffled again.
    """
    gen = torch.Generator().manual_seed(seed * 1000 + epoch)
    order = torch.randperm(len(lengths), generator=gen).tolist()
    pool = batch_size * 16
    batches: list[list[int]] = []
    for i in range(0, len(order), pool):
        chunk = sorted(order[i : i + pool], key=lambda j: lengths[j])
        batches.extend(chunk[k : k + batch_size] for k in range(0, len(chunk), batch_size))
    shuffle = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[k] for k in shuffle]


def train_one_epoch(
    state: TrainState, scorer: GradientScorer, opt: Optimization, data: EncodedData, tcfg: TrainingConfig,
) -> bool:
    """Train from `state.batch_in_epoch` to the end of the epoch, or until `training.max_steps`.

    Updates the position, losses, tokens and time of `state`; returns whether the epoch's
    batches are all done.

    With several processes, `training.batch_size` is still the global batch: each rank takes
    its share of it (`distributed.shard`), its loss weighted by that share so that the
    averaged gradient and the logged loss are those of the whole batch.
    """
    world = distributed.current().world_size
    batches = _epoch_batches(data.train_lengths, tcfg.batch_size, tcfg.seed, state.epoch)
    bar = tqdm(total=len(batches), initial=state.batch_in_epoch, unit="batch", disable=None,
               desc=f"epoch {state.epoch + 1}/{tcfg.epochs}", leave=False)
    t0 = time.perf_counter()
    tokens = 0
    for b in range(state.batch_in_epoch, len(batches)):
        idx, share = distributed.shard(batches[b])
        batch = scorer.batch([data.train_docs[i] for i in idx]).to(opt.device)
        target = torch.from_numpy(data.y_train[idx]).to(opt.device)
        step_ends = (b + 1) % tcfg.grad_accum == 0 or b + 1 == len(batches)
        autocast = torch.autocast(opt.device.type, dtype=opt.amp_dtype) if opt.amp_dtype else nullcontext()
        with distributed.no_sync(opt.net, step_ends):
            with autocast:
                logits, _ = opt.net(batch.input_ids, batch.attention_mask)
            batch_loss = data.loss_fn(logits.float(), target)
            loss = batch_loss * (share * world) / tcfg.grad_accum
            (opt.scaler.scale(loss) if opt.scaler else loss).backward()
        # The whole batch's loss and tokens (this rank's alone with one process).
        totals = distributed.sum_over_ranks(torch.stack([
            batch_loss.detach().double() * share,
            torch.tensor(float(batch.n_tokens if share else 0), dtype=torch.float64, device=opt.device),
        ]))
        state.epoch_losses.append(totals[0].item())
        tokens += int(totals[1].item())
        state.batch_in_epoch = b + 1
        if step_ends:
            optimizer_step(opt, tcfg.max_grad_norm)
            state.global_step += 1
        elapsed = time.perf_counter() - t0
        bar.set_postfix(loss=f"{np.mean(state.epoch_losses[-20:]):.4f}",
                        tok_s=f"{tokens / max(elapsed, 1e-9):.0f}")
        bar.update(1)
        if tcfg.max_steps is not None and state.global_step >= tcfg.max_steps:
            break
    bar.close()
    state.tokens_seen += tokens
    state.train_seconds += time.perf_counter() - t0
    return state.batch_in_epoch == len(batches)


def validate(
    scorer: GradientScorer, data: EncodedData, validation_metric: ValidationMetric | None, batch_size: int,
) -> dict[str, float]:
    """`dev_loss` (plain BCE) and, with a metric, `dev_metric` on the validation reports."""
    if not data.validation_docs:
        return {}
    logits = scorer.predict_logits(data.validation_docs, batch_size=batch_size)
    y_val = data.y_validation
    val_loss = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.from_numpy(logits), torch.from_numpy(y_val.astype(np.float32))
    ).item()
    out = {"dev_loss": float(val_loss)}
    if validation_metric is not None:
        out["dev_metric"] = float(validation_metric(y_val, 1.0 / (1.0 + np.exp(-logits))))
    return out


@dataclass
class RunOutputs:
    """Where an epoch's results go: the run folder and the tracker."""

    run_dir: Path
    data: TrainingData
    validation_metric: ValidationMetric | None
    tracker: SafeTracker


def record_validation(
    state: TrainState, scorer: GradientScorer, train_loss: float, metrics: dict[str, float], out: RunOutputs,
    *, partial_epoch: bool = False,
) -> None:
    """Log the epoch; if it beats the best so far, save the model and its `metrics.json`.

    Every rank keeps the same `state` (the metrics come from rank 0); rank 0 alone writes.
    """
    writes = distributed.current().is_main
    entry: dict[str, Any] = {"epoch": state.epoch + 1, "step": state.global_step,
                             "train_loss": train_loss, **metrics}
    if partial_epoch:
        entry["partial_epoch"] = True
    state.history.append(entry)
    out.tracker.log_metrics({"train_loss": train_loss, **metrics}, step=state.global_step)
    score = metrics.get("dev_metric", -metrics.get("dev_loss", 0.0))
    if state.best_metric is None or score > state.best_metric:
        state.best_metric = score
        state.best_epoch = state.epoch + 1
        state.epochs_without_improvement = 0
        if writes:
            scorer.save(out.run_dir)
            RunFolder(out.run_dir).write_json(METRICS_FILE, _metrics_summary(state, entry, out))
    else:
        state.epochs_without_improvement += 1
    if writes:
        logger.info("epoch %d: %s", state.epoch + 1,
                    ", ".join(f"{k}={v:.4f}" for k, v in entry.items() if isinstance(v, float)))


def _metrics_summary(state: TrainState, entry: dict[str, Any], out: RunOutputs) -> dict[str, Any]:
    data = out.data
    metric = out.validation_metric
    return {
        "validation": data.validation_source,
        "validation_metric": getattr(metric, "__name__", "custom") if metric else "dev_loss",
        "best_epoch": state.best_epoch,
        "best_step": state.global_step,
        "num_labels": len(data.label_space),
        "n_train": len(data.train),
        "n_validation": len(data.validation),
        **{k: v for k, v in entry.items() if k not in ("epoch", "step", "partial_epoch")},
        **({"crosswalk": data.notes} if data.notes else {}),
    }


def _out_of_time(state: TrainState, tcfg: TrainingConfig) -> bool:
    """Would one more epoch, at the pace so far, end after `training.time_budget_s`?"""
    if not tcfg.time_budget_s or not state.history or state.batch_in_epoch:
        return False
    spent = state.elapsed_seconds
    return spent + spent / max(state.epoch, 1) > tcfg.time_budget_s


def _validate_on_main(
    scorer: GradientScorer, data: EncodedData, out: RunOutputs, tcfg: TrainingConfig,
) -> dict[str, float]:
    """`validate` on rank 0 (it holds the metric; the weights are the same everywhere), its
    result sent to every rank so that they take the same decisions."""
    metrics = None
    if distributed.current().is_main:
        metrics = validate(scorer, data, out.validation_metric, tcfg.eval_batch_size)
    return distributed.broadcast(metrics) or {}


def run_epochs(
    state: TrainState, scorer: GradientScorer, opt: Optimization, data: EncodedData, tcfg: TrainingConfig,
    out: RunOutputs, ckpt_path: Path,
) -> None:
    """Epochs until `training.epochs`, `max_steps`, early stopping or the time budget, each
    ending with a checkpoint."""
    opt.net.train()
    while (
        state.epoch < tcfg.epochs
        and not state.stopped_early
        and (tcfg.max_steps is None or state.global_step < tcfg.max_steps)
    ):
        if distributed.broadcast(_out_of_time(state, tcfg)):  # rank 0's clock decides
            state.stopped_early, state.stop_reason = True, "time_budget"
            logger.info("stopping: another epoch would exceed training.time_budget_s")
            save_checkpoint(ckpt_path, state, opt)
            return
        started = time.perf_counter()
        finished = train_one_epoch(state, scorer, opt, data, tcfg)
        train_loss = float(np.mean(state.epoch_losses)) if state.epoch_losses else float("nan")
        if not finished:
            # Mid-epoch stop (max_steps): keep the position; validate if nothing was saved yet,
            # so that the folder holds a usable model.
            if state.best_metric is None:
                metrics = _validate_on_main(scorer, data, out, tcfg)
                record_validation(state, scorer, train_loss, metrics, out, partial_epoch=True)
            save_checkpoint(ckpt_path, state, opt)
            logger.info("stopped at step %d (training.max_steps); re-run to resume", state.global_step)
            return
        metrics = _validate_on_main(scorer, data, out, tcfg)
        record_validation(state, scorer, train_loss, metrics, out)
        # The budget counts validation too: it is part of every epoch's cost.
        state.elapsed_seconds += time.perf_counter() - started
        state.epoch += 1
        state.batch_in_epoch = 0
        state.epoch_losses = []
        if state.epochs_without_improvement >= tcfg.patience:
            state.stopped_early, state.stop_reason = True, "early_stopping"
            logger.info("early stopping: no improvement for %d epochs", tcfg.patience)
        save_checkpoint(ckpt_path, state, opt)


def _write_final_summary(run_dir: Path, state: TrainState) -> None:
    """The best epoch's metrics.json, completed with how the run went."""
    run = RunFolder(run_dir)
    if not run.metrics.exists():
        raise TrainingError("training finished without a validated model (no epoch completed)")
    summary = run.read_json(METRICS_FILE)
    summary["epochs_run"] = state.epoch
    summary["global_step"] = state.global_step
    summary["stopped_early"] = state.stopped_early
    summary["stop_reason"] = state.stop_reason or (
        "early_stopping" if state.stopped_early else "epochs_or_max_steps")
    summary["elapsed_seconds"] = round(state.elapsed_seconds, 1)
    summary["train_tokens_per_s"] = round(state.tokens_seen / max(state.train_seconds, 1e-9), 1)
    summary["history"] = state.history
    run.write_json(METRICS_FILE, summary)


# --------------------------------------------------------------------------- train


def _config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    fa, fb = _flat_params(a), _flat_params(b)
    diffs = []
    for key in sorted(set(fa) | set(fb)):
        if tuple(key.split(".")[:2]) in _RESUMABLE_CHANGES:
            continue
        if fa.get(key) != fb.get(key):
            diffs.append(f"{key}: {fa.get(key)!r} -> {fb.get(key)!r}")
    return diffs


def _prepare_run_dir(config: RunConfig, resume: bool) -> tuple[Path, bool]:
    run_dir = config.run_dir
    run = RunFolder(run_dir)
    ckpt = run.checkpoints / CHECKPOINT_FILE
    if run.config.exists():
        if resume and ckpt.exists():
            diffs = _config_diff(read_run_config(run_dir), config)
            if diffs:
                raise TrainingError(
                    f"{run_dir} holds a run with a different config ({'; '.join(diffs[:5])}). "
                    "Choose another tracking.run_name, or restart it with resume disabled."
                )
            return run_dir, True
        logger.info("%s: training from scratch (overwriting the previous run)", run_dir)
        ckpt.unlink(missing_ok=True)
        run.metrics.unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, False


def train(
    config: RunConfig,
    *,
    validation_metric: ValidationMetric | None = None,
    tracker: RunTracker | None = None,
    resume: bool = True,
    nproc: int = 1,
) -> Path:
    """Train `config`'s model and return its run folder.

    validation_metric(y_true[bool n x L], scores[n x L]) -> float, higher is better (the
    pipeline passes MAP); early stopping and the choice of the saved model use it, or the
    validation loss when None. `tracker` (MLflow in the CLI) gets the params, one set of
    metrics per epoch and the run folder. A model fitted in one call goes to `fit_baseline`.

    Seeds, and the thread count when `training.num_threads` is set, come from `config.training`
    whatever the caller did before, and the caller's are restored after (`owned_global_state`).

    `nproc` > 1 trains a gradient model on that many processes (`cimcoder.training.distributed`:
    DistributedDataParallel, one GPU each, or CPU processes sharing the cores). This process is
    rank 0: it alone logs to `tracker` and writes the run folder. `training.batch_size` stays
    the global batch (each process takes batch_size / nproc reports of it), so the steps, the
    schedule and the loss curve are those of one process.
    """
    one_call = hasattr(get_model(config.model.name), "fit")
    if nproc > 1 and one_call:
        raise TrainingError(f"{config.model.name} is fitted in one call: --nproc is for gradient models")
    threads = config.training.num_threads or (_threads_per_process(nproc) if nproc > 1 else None)
    with owned_global_state(config.training.seed, threads):
        if one_call:
            return fit_baseline(config, tracker, validation_metric=validation_metric)
        if nproc > 1:
            with distributed.process_group(nproc, _train_rank, (config, resume, threads)):
                return _train(config, validation_metric, SafeTracker(tracker), resume)
        return _train(config, validation_metric, SafeTracker(tracker), resume)


def _threads_per_process(nproc: int) -> int:
    """CPU processes share the cores instead of each taking them all."""
    import os

    return max(1, (os.cpu_count() or 1) // nproc)


def _train_rank(config: RunConfig, resume: bool, threads: int | None) -> None:
    """Ranks 1..N-1: the same loop, without tracker or metric (rank 0 validates)."""
    with owned_global_state(config.training.seed, threads):
        _train(config, None, SafeTracker(None), resume)


def _train(
    config: RunConfig, validation_metric: ValidationMetric | None, tracker: SafeTracker, resume: bool,
) -> Path:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one save per improved epoch: keep the log readable
    tcfg = config.training
    writes = distributed.current().is_main  # rank 0 alone writes the run folder
    run_dir, resuming = _prepare_run_dir(config, resume) if writes else (config.run_dir, False)
    resuming = distributed.broadcast(resuming)
    data = prepare_data(config)
    logger.info(
        "training on %d stays, validating on %d (%s); %d labels (%s)",
        len(data.train), len(data.validation), data.validation_source,
        len(data.label_space), data.label_space.terminology,
    )
    tracker.log_params({**_flat_params(config), "num_labels": len(data.label_space),
                        "n_train": len(data.train), "n_validation": len(data.validation)})
    if resuming and LabelSpace.load(run_dir).codes != data.label_space.codes:
        raise TrainingError(f"{run_dir}: the data's label space changed since the run started")
    scorer = build_model(config, data.label_space)
    if not isinstance(scorer, GradientScorer):
        raise TrainingError(f"{config.model.name} has neither fit() nor a network to train")
    if hasattr(scorer, "init_bias_from_counts"):
        scorer.init_bias_from_counts(data.label_space.train_counts, len(data.train))
    if writes:
        dump_config(config, RunFolder(run_dir).config)
        data.label_space.save(run_dir)

    opt = build_optimization(scorer.net, tcfg, len(data.train))
    opt.net = distributed.wrap(opt.net, opt.device)
    encoded = encode_data(scorer, data, config, opt.device)
    ckpt_path = RunFolder(run_dir).checkpoints / CHECKPOINT_FILE
    state = TrainState()
    if resuming:
        state = load_checkpoint(ckpt_path, opt)
        logger.info("resuming %s at epoch %d, step %d", run_dir, state.epoch + 1, state.global_step)
    out = RunOutputs(run_dir, data, validation_metric, tracker)
    try:
        run_epochs(state, scorer, opt, encoded, tcfg, out, ckpt_path)
    except BaseException:
        # Crash or Ctrl-C mid-epoch: the last epoch-end checkpoint is where resume restarts.
        logger.warning("training interrupted at step %d; the last checkpoint is in %s",
                       state.global_step, ckpt_path.parent)
        raise
    if writes:
        _write_final_summary(run_dir, state)
        tracker.log_artifacts(str(run_dir))
        if not tcfg.keep_checkpoints and (state.stopped_early or state.epoch >= tcfg.epochs):
            ckpt_path.unlink(missing_ok=True)
    return run_dir
