"""The training loop: data -> label space -> model -> epochs with early stopping -> run folder.

`train(config)` writes `runs/<experiment>/<run_name>/` (see docs/ARCHITECTURE.md). Every epoch
ends with a checkpoint in `checkpoints/` (weights, optimizer, scheduler, RNG, position), so a
run that was interrupted (crash, Ctrl-C, `training.max_steps`) resumes where it stopped when
`train` is called again on the same config.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cimcoder.errors import CimcoderError
from cimcoder.training.config import RunConfig, dump_config, read_run_config
from cimcoder.training.labels import LabelSpace
from cimcoder.training.registry import build_model, get_model

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
CHECKPOINT_FILE = "last.pt"
STATE_FILE = "state.json"
METRICS_FILE = "metrics.json"

ValidationMetric = Callable[[np.ndarray, np.ndarray], float]

# Config keys that may change between an interrupted run and its resumption.
_RESUMABLE_CHANGES = {("training", "max_steps"), ("training", "epochs"), ("training", "num_threads"),
                      ("training", "patience"), ("training", "time_budget_s"),
                      ("tracking", "tracking_uri")}


class TrainingError(CimcoderError):
    """Training cannot start or continue (bad data, incompatible run folder, ...)."""


# --------------------------------------------------------------------------- data


@dataclass
class Example:
    id: str
    text: str
    codes: list[str]
    principal: str | None = None  # the DP, where the source records roles (hospital exports)


@dataclass
class TrainingData:
    train: list[Example]
    validation: list[Example]
    validation_source: str
    label_space: LabelSpace
    notes: dict[str, Any] = field(default_factory=dict)


def _load_examples(name: str) -> tuple[list[Any], str]:
    from cimcoder.training.corpora import load_dataset

    corpus = load_dataset(name)
    stays = list(corpus.stays)
    if not stays:
        raise TrainingError(f"data set {name!r} holds no stay")
    return stays, name


def _to_cim11(code_sets: list[list[str]]) -> tuple[list[list[str]], dict[str, int]]:
    """Gold CIM-10 codes carried over to CIM-11 through the WHO crosswalk."""
    try:
        from cimcoder.terminologies import load_crosswalk  # type: ignore[attr-defined]
    except ImportError:
        raise TrainingError(
            "data.labels.terminology=cim11 needs the CIM-10 -> CIM-11 crosswalk "
            "(cimcoder.terminologies.load_crosswalk), which is not available"
        ) from None
    crosswalk = load_crosswalk()
    unmapped = 0
    total = 0
    out: list[list[str]] = []
    for codes in code_sets:
        mapped: list[str] = []
        for code in codes:
            total += 1
            targets = crosswalk.to_cim11(code) or []
            if not targets:
                unmapped += 1
            for t in targets:
                c = getattr(t, "code", t)
                if c and c not in mapped:
                    mapped.append(str(c))
        out.append(mapped)
    return out, {"cim10_codes": total, "cim10_codes_without_cim11_target": unmapped}


def _holdout(stays: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Deterministic patient-grouped slice of the training stays."""

    def key(stay: Any) -> float:
        group = getattr(stay, "patient_id", None) or stay.id
        digest = hashlib.sha256(f"{seed}:{group}".encode()).hexdigest()
        return int(digest[:12], 16) / 16**12

    train = [s for s in stays if key(s) >= fraction]
    held = [s for s in stays if key(s) < fraction]
    if not held or not train:
        raise TrainingError("the training set is too small to hold out a validation slice")
    return train, held


def prepare_data(config: RunConfig) -> TrainingData:
    """Load the splits, map codes to the target terminology, build the label space."""
    data = config.data
    stays, _ = _load_examples(data.train)
    if data.max_train_stays:
        stays = stays[: data.max_train_stays]
    for extra_name in data.extra_train:
        if extra_name in (data.dev, data.train):
            raise TrainingError(f"data.extra_train names {extra_name!r}, already train or dev")
        extra_stays, _ = _load_examples(extra_name)
        stays = stays + extra_stays
    if data.validation == "train_holdout":
        stays, held = _holdout(stays, data.holdout_fraction, config.training.seed)
        source = f"{data.train} (held-out {data.holdout_fraction:.0%})"
    else:
        assert data.dev is not None
        held, _ = _load_examples(data.dev)
        source = data.dev
    train_codes = [list(s.codes) for s in stays]
    val_codes = [list(s.codes) for s in held]
    notes: dict[str, Any] = {}
    terminology = data.labels.terminology
    if terminology == "cim11":
        train_codes, notes["train_crosswalk"] = _to_cim11(train_codes)
        val_codes, notes["validation_crosswalk"] = _to_cim11(val_codes)
    extra: list[str] = []
    edition = None
    try:
        from cimcoder.terminologies import load_terminology

        term = load_terminology(terminology)
        edition = getattr(term, "edition", None)
        if data.labels.include == "train+terminology":
            extra = list(term.codes())
            if data.labels.max_extra_codes is not None:
                seen = {c for codes in train_codes for c in codes}
                extra = [c for c in extra if c not in seen][: data.labels.max_extra_codes]
        elif data.labels.include == "train+lexicon":
            extra = lexicon_codes(term)
    except ImportError:
        if data.labels.include == "train+terminology":
            raise TrainingError("include=train+terminology needs cimcoder.terminologies") from None
    label_space = LabelSpace.from_code_sets(
        train_codes,
        terminology=terminology,
        edition=edition,
        min_count=data.labels.min_count,
        extra_codes=extra,
    )
    def principal(stay: Any, codes: list[str]) -> str | None:
        dps = [d.code for d in getattr(stay, "diagnoses", []) if d.role == "DP"]
        return dps[0] if dps and dps[0] in codes else None  # CIM-11 targets: no DP kept

    as_examples = lambda ss, cs: [  # noqa: E731
        Example(id=s.id, text=s.text, codes=c, principal=principal(s, c))
        for s, c in zip(ss, cs, strict=True)
    ]
    return TrainingData(
        train=as_examples(stays, train_codes),
        validation=as_examples(held, val_codes),
        validation_source=source,
        label_space=label_space,
        notes=notes,
    )


def lexicon_codes(term: Any) -> list[str]:
    """Codes of the curated lexicon in `term`'s terminology, with their parents and codable
    children (a mention of "diabète de type 2" may be coded E11.9 by one corpus, E11.98 by
    a DIM)."""
    from cimcoder.terminologies.lexicon import load_lexicon

    # Without labels and CIM-11 titles the lexicon holds the curated entries alone.
    lexicon = load_lexicon(term.name, labels=False, cim11_titles=False)
    curated = {c for e in lexicon.entries for c in e.codes}
    out: set[str] = set()
    for code in curated:
        if code not in term:
            continue
        out.add(code)
        out.update(a for a in term.ancestors(code) if "-" not in a and any(ch.isdigit() for ch in a))
        out.update(term.children(code))
    return sorted(out)


# --------------------------------------------------------------------------- helpers


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


def _config_diff(a: RunConfig, b: RunConfig) -> list[str]:
    fa, fb = _flat_params(a), _flat_params(b)
    diffs = []
    for key in sorted(set(fa) | set(fb)):
        parts = tuple(key.split(".")[:2])
        if parts in _RESUMABLE_CHANGES:
            continue
        if fa.get(key) != fb.get(key):
            diffs.append(f"{key}: {fa.get(key)!r} -> {fb.get(key)!r}")
    return diffs


class _SafeTracker:
    """Calls the optional tracker; a tracking failure never stops training."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker
        self.failed = False

    def __call__(self, method: str, *args: Any, **kwargs: Any) -> None:
        if self.tracker is None or self.failed:
            return
        try:
            getattr(self.tracker, method)(*args, **kwargs)
        except Exception as exc:  # tracking must not lose a training run
            self.failed = True
            logger.warning("tracking failed (%s: %s); training goes on, the run folder keeps everything",
                           type(exc).__name__, exc)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


# --------------------------------------------------------------------------- training


def _prepare_run_dir(config: RunConfig, resume: bool) -> tuple[Path, bool]:
    run_dir = config.run_dir
    ckpt = run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE
    if run_dir.exists() and (run_dir / "config.yaml").exists():
        if resume and ckpt.exists():
            previous = read_run_config(run_dir)
            diffs = _config_diff(previous, config)
            if diffs:
                raise TrainingError(
                    f"{run_dir} holds a run with a different config ({'; '.join(diffs[:5])}). "
                    "Choose another tracking.run_name, or restart it with resume disabled."
                )
            return run_dir, True
        logger.info("%s: training from scratch (overwriting the previous run)", run_dir)
        ckpt.unlink(missing_ok=True)
        (run_dir / METRICS_FILE).unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, False


def _fit_in_one_call(
    scorer: Any, config: RunConfig, data: TrainingData, run_dir: Path,
    validation_metric: ValidationMetric | None, track: _SafeTracker,
) -> Path:
    """Models without a gradient loop (baselines): fit, score the validation split, save."""
    y_train = np.asarray(data.label_space.encode([e.codes for e in data.train]), dtype=bool)
    start = time.perf_counter()
    scorer.fit([e.text for e in data.train], y_train)
    elapsed = time.perf_counter() - start
    metrics: dict[str, Any] = {"fit_seconds": round(elapsed, 2), "validation": data.validation_source}
    if data.validation:
        y_val = np.asarray(data.label_space.encode([e.codes for e in data.validation]), dtype=bool)
        scores = scorer.predict_scores([e.text for e in data.validation], batch_size=config.training.eval_batch_size)
        if validation_metric is not None:
            metrics["dev_metric"] = float(validation_metric(y_val, scores))
    scorer.save(run_dir)
    dump_config(config, run_dir / "config.yaml")
    _write_json(run_dir / METRICS_FILE, metrics)
    track("log_metrics", {k: v for k, v in metrics.items() if isinstance(v, float)}, step=0)
    track("log_artifacts", str(run_dir))
    return run_dir


def _bce_pos_weight(config: RunConfig, y: np.ndarray) -> torch.Tensor | None:
    if config.training.imbalance == "none":
        return None
    pos = y.sum(0).astype(np.float64)
    neg = len(y) - pos
    weight = np.where(pos > 0, neg / np.maximum(pos, 1), 1.0)
    return torch.tensor(np.clip(weight, 1.0, config.training.pos_weight_max), dtype=torch.float32)


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


def train(
    config: RunConfig,
    *,
    validation_metric: ValidationMetric | None = None,
    tracker: Any = None,
    resume: bool = True,
) -> Path:
    """Train `config`'s model and return its run folder.

    validation_metric(y_true[bool n x L], scores[n x L]) -> float, higher is better (the
    pipeline passes MAP); early stopping and the choice of the saved model use it, or the
    validation loss when None.

    Seeds, and the thread count when `training.num_threads` is set, come from `config.training`
    whatever the caller did before, and the caller's are restored after (`owned_global_state`).
    """
    with owned_global_state(config.training.seed, config.training.num_threads):
        return _train(config, validation_metric, tracker, resume)


def _train(
    config: RunConfig, validation_metric: ValidationMetric | None, tracker: Any, resume: bool,
) -> Path:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one save per improved epoch: keep the log readable
    run_dir, resuming = _prepare_run_dir(config, resume)
    data = prepare_data(config)
    logger.info(
        "training on %d stays, validating on %d (%s); %d labels (%s)",
        len(data.train), len(data.validation), data.validation_source,
        len(data.label_space), data.label_space.terminology,
    )
    track = _SafeTracker(tracker)
    track("log_params", {**_flat_params(config), "num_labels": len(data.label_space),
                         "n_train": len(data.train), "n_validation": len(data.validation)})

    cls = get_model(config.model.name)
    if hasattr(cls, "fit"):
        dump_config(config, run_dir / "config.yaml")
        scorer = build_model(config, data.label_space)
        return _fit_in_one_call(scorer, config, data, run_dir, validation_metric, track)
    if resuming:
        saved = LabelSpace.load(run_dir)
        if saved.codes != data.label_space.codes:
            raise TrainingError(f"{run_dir}: the data's label space changed since the run started")
    scorer = build_model(config, data.label_space)
    if hasattr(scorer, "init_bias_from_counts"):
        scorer.init_bias_from_counts(data.label_space.train_counts, len(data.train))
    dump_config(config, run_dir / "config.yaml")
    data.label_space.save(run_dir)
    return _gradient_loop(scorer, config, data, run_dir, validation_metric, track, resuming)


def _gradient_loop(
    scorer: Any, config: RunConfig, data: TrainingData, run_dir: Path,
    validation_metric: ValidationMetric | None, track: _SafeTracker, resuming: bool,
) -> Path:
    tcfg = config.training
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net: torch.nn.Module = scorer.net.to(device)
    amp_dtype = autocast_dtype(config.training.amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    train_docs = scorer.chunk([e.text for e in data.train])
    val_docs = scorer.chunk([e.text for e in data.validation])
    truncated = sum(d.truncated for d in train_docs) + sum(d.truncated for d in val_docs)
    if truncated:
        logger.warning(
            "%d reports exceed the %d-token budget (model.chunking); their end is not read",
            truncated, config.model.chunking.max_total_tokens,
        )
    train_lengths = [sum(len(c) for c in d.input_ids) for d in train_docs]
    y_train = np.asarray(data.label_space.encode([e.codes for e in data.train]), dtype=np.float32)
    y_val = np.asarray(data.label_space.encode([e.codes for e in data.validation]), dtype=bool)
    pos_weight = _bce_pos_weight(config, y_train)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight.to(device) if pos_weight is not None else None)

    head_params = [p for n, p in net.named_parameters() if n.startswith("head.") and p.requires_grad]
    enc_params = [p for n, p in net.named_parameters() if not n.startswith("head.") and p.requires_grad]
    groups = [{"params": head_params, "lr": tcfg.head_lr or tcfg.lr}]
    if enc_params:
        groups.append({"params": enc_params, "lr": tcfg.lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=tcfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_docs) / (tcfg.batch_size * tcfg.grad_accum))
    total_steps = steps_per_epoch * tcfg.epochs
    warmup = int(total_steps * tcfg.warmup_ratio)

    def lr_lambda(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(warmup, 1)
        return max(0.0, (total_steps - step) / max(total_steps - warmup, 1))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    state: dict[str, Any] = {
        "epoch": 0, "batch_in_epoch": 0, "global_step": 0, "best_metric": None, "best_epoch": None,
        "epochs_without_improvement": 0, "stopped_early": False, "history": [], "tokens_seen": 0,
        "train_seconds": 0.0,
    }
    ckpt_path = run_dir / CHECKPOINT_DIR / CHECKPOINT_FILE
    if resuming:
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        _set_rng_state(ckpt["rng"])
        state = ckpt["state"]
        logger.info("resuming %s at epoch %d, step %d", run_dir, state["epoch"] + 1, state["global_step"])

    def save_checkpoint() -> None:
        ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = ckpt_path.with_suffix(".tmp")
        torch.save({
            "model": net.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
            "rng": _rng_state(), "state": state,
        }, tmp)
        tmp.replace(ckpt_path)
        _write_json(ckpt_path.parent / STATE_FILE, {k: v for k, v in state.items()})

    def evaluate() -> dict[str, float]:
        if not val_docs:
            return {}
        logits = scorer.predict_logits(val_docs, batch_size=tcfg.eval_batch_size)
        t_logits = torch.from_numpy(logits)
        val_loss = torch.nn.functional.binary_cross_entropy_with_logits(
            t_logits, torch.from_numpy(y_val.astype(np.float32))
        ).item()
        out = {"dev_loss": float(val_loss)}
        if validation_metric is not None:
            out["dev_metric"] = float(validation_metric(y_val, 1.0 / (1.0 + np.exp(-logits))))
        return out

    def end_of_epoch(train_loss: float) -> None:
        metrics = evaluate()
        score = metrics.get("dev_metric", -metrics.get("dev_loss", 0.0))
        entry = {"epoch": state["epoch"] + 1, "step": state["global_step"], "train_loss": train_loss, **metrics}
        state["history"].append(entry)
        track("log_metrics", {k: v for k, v in entry.items() if k not in ("epoch", "step")},
              step=state["global_step"])
        if state["best_metric"] is None or score > state["best_metric"]:
            state["best_metric"] = score
            state["best_epoch"] = state["epoch"] + 1
            state["epochs_without_improvement"] = 0
            scorer.save(run_dir)
            _write_json(run_dir / METRICS_FILE, _metrics_summary(state, entry, data, validation_metric))
        else:
            state["epochs_without_improvement"] += 1
        logger.info("epoch %d: %s", state["epoch"] + 1,
                    ", ".join(f"{k}={v:.4f}" for k, v in entry.items() if isinstance(v, float)))

    net.train()
    try:
        while (
            state["epoch"] < tcfg.epochs
            and not state["stopped_early"]
            and (tcfg.max_steps is None or state["global_step"] < tcfg.max_steps)
        ):
            if tcfg.time_budget_s and state["history"] and state["batch_in_epoch"] == 0:
                spent = state.get("elapsed_seconds", 0.0)
                if spent + spent / max(state["epoch"], 1) > tcfg.time_budget_s:
                    state["stopped_early"] = True
                    state["stop_reason"] = "time_budget"
                    logger.info("stopping: another epoch would exceed training.time_budget_s")
                    save_checkpoint()
                    break
            batches = _epoch_batches(train_lengths, tcfg.batch_size, tcfg.seed, state["epoch"])
            start_batch = state["batch_in_epoch"]
            losses: list[float] = state.setdefault("epoch_losses", [])
            bar = tqdm(total=len(batches), initial=start_batch, desc=f"epoch {state['epoch'] + 1}/{tcfg.epochs}",
                       unit="batch", disable=None, leave=False)
            t0 = time.perf_counter()
            epoch_started = t0
            tokens = 0
            hit_max = False
            for b in range(start_batch, len(batches)):
                idx = batches[b]
                batch = scorer.batch([train_docs[i] for i in idx]).to(device)
                target = torch.from_numpy(y_train[idx]).to(device)
                ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
                with ctx:
                    logits, _ = net(batch.input_ids, batch.attention_mask)
                loss = loss_fn(logits.float(), target) / tcfg.grad_accum
                (scaler.scale(loss) if scaler else loss).backward()
                losses.append(loss.detach().item() * tcfg.grad_accum)
                tokens += batch.n_tokens
                state["batch_in_epoch"] = b + 1
                if (b + 1) % tcfg.grad_accum == 0 or b + 1 == len(batches):
                    if scaler:
                        scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(net.parameters(), tcfg.max_grad_norm)
                    if scaler:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    state["global_step"] += 1
                elapsed = time.perf_counter() - t0
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", tok_s=f"{tokens / max(elapsed, 1e-9):.0f}")
                bar.update(1)
                if tcfg.max_steps is not None and state["global_step"] >= tcfg.max_steps:
                    hit_max = True
                    break
            bar.close()
            state["tokens_seen"] += tokens
            state["train_seconds"] += time.perf_counter() - t0
            train_loss = float(np.mean(losses)) if losses else float("nan")
            if hit_max and state["batch_in_epoch"] < len(batches):
                # Mid-epoch stop: keep the position; evaluate so the folder holds a usable model.
                if state["best_metric"] is None:
                    end_of_epoch(train_loss)
                    state["history"][-1]["partial_epoch"] = True
                save_checkpoint()
                logger.info("stopped at step %d (training.max_steps); re-run to resume", state["global_step"])
                break
            end_of_epoch(train_loss)
            # The budget counts evaluation too: it is part of every epoch's cost.
            state["elapsed_seconds"] = state.get("elapsed_seconds", 0.0) + time.perf_counter() - epoch_started
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
            state["epoch_losses"] = []
            if state["epochs_without_improvement"] >= tcfg.patience:
                state["stopped_early"] = True
                state["stop_reason"] = "early_stopping"
                logger.info("early stopping: no improvement for %d epochs", tcfg.patience)
            save_checkpoint()
    except BaseException:
        # Crash or Ctrl-C mid-epoch: the last epoch-end checkpoint is where resume restarts.
        logger.warning("training interrupted at step %d; the last checkpoint is in %s",
                       state["global_step"], ckpt_path.parent)
        raise
    if not (run_dir / METRICS_FILE).exists():
        raise TrainingError("training finished without a validated model (no epoch completed)")
    summary = json.loads((run_dir / METRICS_FILE).read_text(encoding="utf-8"))
    summary["epochs_run"] = state["epoch"]
    summary["global_step"] = state["global_step"]
    summary["stopped_early"] = state["stopped_early"]
    summary["stop_reason"] = state.get("stop_reason") or (
        "early_stopping" if state["stopped_early"] else "epochs_or_max_steps")
    summary["elapsed_seconds"] = round(state.get("elapsed_seconds", 0.0), 1)
    summary["train_tokens_per_s"] = round(state["tokens_seen"] / max(state["train_seconds"], 1e-9), 1)
    summary["history"] = state["history"]
    _write_json(run_dir / METRICS_FILE, summary)
    track("log_artifacts", str(run_dir))
    if not tcfg.keep_checkpoints and (state["stopped_early"] or state["epoch"] >= tcfg.epochs):
        ckpt_path.unlink(missing_ok=True)
    return run_dir


def _metrics_summary(
    state: dict[str, Any], entry: dict[str, Any], data: TrainingData,
    validation_metric: ValidationMetric | None,
) -> dict[str, Any]:
    name = getattr(validation_metric, "__name__", "custom") if validation_metric else "dev_loss"
    return {
        "validation": data.validation_source,
        "validation_metric": name,
        "best_epoch": state["best_epoch"],
        "best_step": state["global_step"],
        "num_labels": len(data.label_space),
        "n_train": len(data.train),
        "n_validation": len(data.validation),
        **{k: v for k, v in entry.items() if k not in ("epoch", "step")},
        **({"crosswalk": data.notes} if data.notes else {}),
    }

