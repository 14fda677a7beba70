"""`cimcoder pretrain`: the offline default encoder, trained from the French text at hand.

No hub is needed: a WordPiece/BPE tokenizer and a small BERT are trained (masked LM) on
CodiEsp-FR *train* reports (never dev: it evaluates), CIM-10 FR long labels, CIM-11 French
titles, synthetic reports and any hospital corpus given. The result is saved with
`save_pretrained`, so fine-tuning loads it with `AutoModel.from_pretrained(dir)` exactly as
it would load camembert-bio or DrBERT from a local directory.

On a machine with a CUDA device the encoder trains there, under bf16 autocast by default
(`training.amp`); `configs/pretrain/gpu-base.yaml` is sized for one.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from cimcoder.errors import CimcoderError
from cimcoder.training.config import PretrainConfig, PretrainTrainingConfig, dump_config
from cimcoder.training.tokenizer import train_tokenizer
from cimcoder.training.trainer import (
    Optimization,
    autocast_dtype,
    optimizer_step,
    owned_global_state,
)

logger = logging.getLogger(__name__)

INFO_FILE = "pretrain_info.json"


class PretrainError(CimcoderError):
    """The pretraining corpus or output cannot be used."""


# --------------------------------------------------------------------------- corpus


def _read_user_path(path_str: str) -> Iterator[str]:
    """Reports from a folder (*.txt, *.jsonl), a .txt file, a .jsonl file or a data set."""
    path = Path(path_str)
    if path.is_dir() and not (path / "codes.tsv").exists():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in (".txt", ".jsonl"))
        if not files:
            raise PretrainError(f"{path}: no .txt or .jsonl file in this folder")
        for f in files:
            yield from _read_user_path(str(f))
        return
    if path.is_file() and path.suffix.lower() == ".txt":
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            yield text
        return
    if path.is_file() and path.suffix.lower() in (".jsonl", ".ndjson"):
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise PretrainError(f"{path}:{lineno}: not a JSON line") from None
                record_text = _record_text(record)
                if record_text is None:
                    raise PretrainError(f"{path}:{lineno}: no 'text' (or 'documents[].text') field")
                if record_text.strip():
                    yield record_text
        return
    # Anything else: a data set the corpora loader knows (text folder, csv, parquet, ...).
    from cimcoder.training.corpora import load_dataset

    for stay in load_dataset(path_str).stays:
        yield stay.text


def _record_text(record: Any) -> str | None:
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("text"), str):
        return record["text"]
    docs = record.get("documents")
    if isinstance(docs, list):
        return "\n\n".join(d.get("text", "") for d in docs if isinstance(d, dict))
    return None


def collect_corpus(config: PretrainConfig) -> tuple[list[str], dict[str, int]]:
    """Texts for pretraining and how many came from each source."""
    cc = config.corpus
    texts: list[str] = []
    sources: dict[str, int] = {}

    def add(name: str, items: list[str]) -> None:
        items = [t for t in items if t and t.strip()]
        sources[name] = len(items)
        texts.extend(items)

    if cc.codiesp_train:
        from cimcoder.training.corpora import load_dataset

        add("codiesp-fr/train", [s.text for s in load_dataset("codiesp-fr/train").stays])
    if cc.terminology_labels:
        from cimcoder import terminologies

        cim10 = terminologies.load_cim10()
        labels = []
        for code in cim10.codes():
            concept = cim10.get(code)
            if concept is not None:
                labels.append(concept.long_label or concept.label)
        add("cim10 labels", labels)
        load_cim11 = getattr(terminologies, "load_cim11", None)
        if load_cim11 is None:
            try:
                from cimcoder.terminologies.cim11 import load_cim11
            except ImportError:
                load_cim11 = None
        if load_cim11 is not None:
            try:
                cim11 = load_cim11()
                titles = []
                for code in cim11.codes():
                    concept = cim11.get(code)
                    if concept is not None:
                        titles.append(concept.long_label or concept.label)
                add("cim11 titles", titles)
            except CimcoderError as exc:
                logger.warning("CIM-11 titles left out: %s", exc)
    if cc.synthetic_reports:
        try:
            from cimcoder.training.corpora import load_dataset

            synth = load_dataset(f"synth-fr/{cc.synthetic_reports}@{config.training.seed}")
            add("synthetic reports", [s.text for s in synth.stays])
        except (ImportError, CimcoderError) as exc:
            logger.warning("synthetic reports left out: %s", exc)
    for p in cc.paths:
        add(p, list(_read_user_path(p)))
    if not texts:
        raise PretrainError("the pretraining corpus is empty: enable a source or pass --corpus")
    return texts, sources


# --------------------------------------------------------------------------- masked LM


def _blocks(tokenizer: Any, texts: list[str], seq_len: int) -> torch.Tensor:
    """All texts tokenized, joined by [SEP] and cut into [CLS] ... [SEP] blocks of seq_len."""
    body = seq_len - 2
    stream: list[int] = []
    sep = tokenizer.sep_token_id
    enc = tokenizer(texts, add_special_tokens=False, return_attention_mask=False, verbose=False)
    for ids in enc["input_ids"]:
        stream.extend(ids)
        stream.append(sep)
    n = len(stream) // body
    if n == 0:
        raise PretrainError("the pretraining corpus is shorter than one sequence")
    arr = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    cls = torch.full((n, 1), tokenizer.cls_token_id, dtype=torch.long)
    end = torch.full((n, 1), sep, dtype=torch.long)
    return torch.cat([cls, arr, end], dim=1)


def mask_tokens(
    input_ids: torch.Tensor, tokenizer: Any, probability: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT masking: of the chosen tokens, 80 % [MASK], 10 % random, 10 % unchanged."""
    labels = input_ids.clone()
    special = torch.zeros_like(input_ids, dtype=torch.bool)
    for tid in tokenizer.all_special_ids:
        special |= input_ids == tid
    chosen = (torch.rand(input_ids.shape, generator=generator) < probability) & ~special
    labels[~chosen] = -100
    inputs = input_ids.clone()
    r = torch.rand(input_ids.shape, generator=generator)
    inputs[chosen & (r < 0.8)] = tokenizer.mask_token_id
    rand_pos = chosen & (r >= 0.8) & (r < 0.9)
    inputs[rand_pos] = torch.randint(len(tokenizer), input_ids.shape, generator=generator)[rand_pos]
    return inputs, labels


def _mlm_loss(model: Any, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Masked-LM loss with the vocabulary projection run on masked positions only."""
    hidden = model.bert(input_ids=inputs).last_hidden_state
    chosen = labels != -100
    logits = model.cls(hidden[chosen])
    return torch.nn.functional.cross_entropy(logits, labels[chosen])


# Steps at which the learning-rate decay is fitted again to the time budget: the first
# steps include start-up costs (CUDA context, kernel selection), which would make the
# budget look like it affords far fewer steps than it does.
_REFIT_STEPS = frozenset(5 * 2**k for k in range(20))
_LOG_EVERY_S = 30.0
# The decay ends at this share of the peak learning rate, not at 0.
_FINAL_LR_SHARE = 0.02


def pretrain(config: PretrainConfig, output_dir: str | Path | None = None) -> Path:
    """Train the tokenizer and the encoder; return the folder written by save_pretrained.

    Seeds and the thread count come from `config.training`; the caller's are restored after.
    """
    with owned_global_state(config.training.seed, config.training.num_threads):
        return _pretrain(config, output_dir)


def _build_encoder(config: PretrainConfig, tokenizer: Any) -> Any:
    from transformers import BertConfig, BertForMaskedLM

    arch = config.encoder
    return BertForMaskedLM(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=arch.hidden,
            num_hidden_layers=arch.layers,
            num_attention_heads=arch.heads,
            intermediate_size=arch.intermediate,
            max_position_embeddings=arch.max_positions,
            hidden_dropout_prob=arch.dropout,
            attention_probs_dropout_prob=arch.dropout,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def lr_schedule(
    optimizer: torch.optim.Optimizer, tc: PretrainTrainingConfig, total: int, step: int = 0
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup_ratio` of `total` steps, then linear decay to 2 % of the
    peak at `total`, positioned at `step` (the decay is refitted to the time budget by
    building it again).

    transformers' polynomial-decay schedule of power 1. The hand-written schedule it replaces
    decayed linearly towards 0 and was clipped at 2 %: max(0.02, (total - s) / (total - W));
    this one decays linearly to 2 %: 0.02 + 0.98 (total - s) / (total - W). It is higher by
    0.02 (s - W) / (total - W) until the old one reached its floor, so by at most ~2 % of the
    peak, near the end; both end at 2 %. Its warm-up rises from 0 (s / W) where the old one
    rose from 1/W ((s + 1) / W, with W >= 1), so the first step has a learning rate of 0
    when there is a warm-up.
    """
    from transformers import get_polynomial_decay_schedule_with_warmup

    return get_polynomial_decay_schedule_with_warmup(
        optimizer,
        num_warmup_steps=int(total * tc.warmup_ratio),
        num_training_steps=total,
        lr_end=_FINAL_LR_SHARE * tc.lr,
        power=1.0,
        last_epoch=step - 1,
    )


@dataclass
class _Pace:
    """Seconds per step, measured from the first refit on (start-up costs left out)."""

    started: float
    first_refit: tuple[int, float] | None = None  # (step, time)

    def seconds_per_step(self, step: int, now: float) -> float:
        if self.first_refit is None:
            self.first_refit = (step, now)
            return (now - self.started) / step
        first_step, first_time = self.first_refit
        return (now - first_time) / (step - first_step)


def _pretrain(config: PretrainConfig, output_dir: str | Path | None) -> Path:
    out = Path(output_dir or config.output_dir)
    tc = config.training
    started = time.perf_counter()

    texts, sources = collect_corpus(config)
    logger.info("pretraining corpus: %s", ", ".join(f"{k}: {v}" for k, v in sources.items()))
    tokenizer = train_tokenizer(
        texts,
        kind=config.tokenizer.kind,
        vocab_size=config.tokenizer.vocab_size,
        min_frequency=config.tokenizer.min_frequency,
        lowercase=config.tokenizer.lowercase,
        model_max_length=config.encoder.max_positions,
    )
    seq_len = min(tc.seq_len, config.encoder.max_positions)
    blocks = _blocks(tokenizer, texts, seq_len)
    model = _build_encoder(config, tokenizer)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    amp_dtype = autocast_dtype(tc.amp, device)
    n_params_m = sum(p.numel() for p in model.parameters()) / 1e6
    logger.info(
        "pretraining a %d x %d encoder (%.1f M parameters) on %s%s: %d sequences of %d tokens",
        config.encoder.layers, config.encoder.hidden, n_params_m, device.type,
        f" ({str(amp_dtype).removeprefix('torch.')} autocast)" if amp_dtype else "",
        len(blocks), seq_len,
    )
    steps_per_epoch = math.ceil(len(blocks) / tc.batch_size)
    planned = steps_per_epoch * tc.epochs
    if tc.max_steps:
        planned = min(planned, tc.max_steps)
    total = planned  # lowered when the time budget affords fewer steps
    optimizer = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    opt = Optimization(
        net=model,
        optimizer=optimizer,
        scheduler=lr_schedule(optimizer, tc, total),
        scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
        amp_dtype=amp_dtype,
        device=device,
    )
    gen = torch.Generator().manual_seed(tc.seed)
    model.train()
    step = 0
    tokens = 0
    losses: list[float] = []
    t0 = time.perf_counter()
    pace = _Pace(started=t0)
    last_log = t0
    stop_reason = "epochs"
    bar = tqdm(total=planned, desc="pretrain", unit="step", disable=None)
    for _epoch in range(tc.epochs):
        order = torch.randperm(len(blocks), generator=gen)
        for i in range(0, len(order), tc.batch_size):
            batch = blocks[order[i : i + tc.batch_size]]
            inputs, labels = mask_tokens(batch, tokenizer, tc.mlm_probability, gen)
            if not (labels != -100).any():
                continue
            inputs = inputs.to(device, non_blocking=True)
            labels = labels.to(device, non_blocking=True)
            ctx = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()
            with ctx:
                loss = _mlm_loss(model, inputs, labels)
            (opt.scaler.scale(loss) if opt.scaler else loss).backward()
            optimizer_step(opt, max_grad_norm=1.0)
            step += 1
            tokens += batch.numel()
            losses.append(loss.detach().item())
            now = time.perf_counter()
            elapsed = now - t0
            if tc.time_budget_s and step in _REFIT_STEPS and step < total:
                # Fit the learning-rate decay to the steps the time budget allows.
                remaining_s = tc.time_budget_s - (now - started)
                affordable = step + int(max(remaining_s, 0) / max(pace.seconds_per_step(step, now), 1e-9))
                total = max(step + 1, min(planned, affordable))
                opt.scheduler = lr_schedule(optimizer, tc, total, step)
                bar.total = total
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", tok_s=f"{tokens / max(elapsed, 1e-9):.0f}")
            bar.update(1)
            if now - last_log >= _LOG_EVERY_S:
                last_log = now
                logger.info(
                    "pretrain step %d/%d: loss %.3f, lr %.2e, %.0f tokens/s",
                    step, total, float(np.mean(losses[-20:])),
                    opt.scheduler.get_last_lr()[0], tokens / max(elapsed, 1e-9),
                )
            if tc.max_steps and step >= tc.max_steps:
                stop_reason = "max_steps"
                break
            if tc.time_budget_s and time.perf_counter() - started >= tc.time_budget_s:
                stop_reason = "time_budget"
                break
        if stop_reason != "epochs":
            break
    bar.close()
    train_s = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    dump_config(config, out / "pretrain_config.yaml")
    info = {
        "sources": sources,
        "sequences": len(blocks),
        "seq_len": seq_len,
        "vocab_size": len(tokenizer),
        "steps": step,
        "planned_steps": planned,
        "stop_reason": stop_reason,
        "epochs_done": round(step / max(steps_per_epoch, 1), 3),
        "final_loss": round(float(np.mean(losses[-20:])), 4) if losses else None,
        "first_loss": round(float(np.mean(losses[:5])), 4) if losses else None,
        "tokens_per_s": round(tokens / max(train_s, 1e-9), 1),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "amp": str(amp_dtype).removeprefix("torch.") if amp_dtype else "off",
        "parameters_m": round(n_params_m, 2),
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / INFO_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")
    logger.info("encoder saved to %s (%d steps, loss %s -> %s)", out, step, info["first_loss"], info["final_loss"])
    return out
