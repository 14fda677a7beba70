"""Training throughput (tokens/s) and peak memory of the PLM-ICD model.

    .venv/bin/python benchmarks/bench_training.py [--config configs/codiesp-fr/quickstart.yaml]
        [--steps 20] [--warmup 2] [--bert-base] [--precision bf16|fp32|both] [--json FILE]

Runs real optimizer steps on CodiEsp-FR train reports with the config's encoder, chunking
and label space. Tokens are real (non-padding) tokens read per second, forward + backward +
AdamW step. Peak memory: process RSS, and CUDA max allocated when a GPU is present.
`--bert-base` (GPU only) swaps in a randomly initialised BERT-base-size encoder
(12 x 768, 12 heads) with the same tokenizer, chunks of 512, to size a real checkpoint.
`--precision` (GPU only): bf16 autocast (default, what `training.amp: auto` does on a
recent GPU), fp32, or both one after the other. `--json FILE` also writes the results.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def bench(
    config_path: str, overrides: list[str], steps: int, warmup: int, precision: str = "bf16"
) -> dict:
    from cimcoder.training.config import load_config
    from cimcoder.training.registry import build_model
    from cimcoder.training.trainer import _bce_pos_weight, prepare_data

    cfg = load_config(config_path, overrides)
    if cfg.training.num_threads:
        torch.set_num_threads(cfg.training.num_threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = prepare_data(cfg)
    scorer = build_model(cfg, data.label_space)
    net = scorer.net.to(device)
    net.train()
    docs = scorer.chunk([e.text for e in data.train])
    y = np.asarray(data.label_space.encode([e.codes for e in data.train]), dtype=np.float32)
    pw = _bce_pos_weight(cfg, y)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pw.to(device) if pw is not None else None)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.training.lr)
    bs = cfg.training.batch_size
    amp = None
    if device.type == "cuda" and precision == "bf16" and torch.cuda.is_bf16_supported():
        amp = torch.bfloat16
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    tokens, seconds = 0, 0.0
    for step in range(warmup + steps):
        idx = [(step * bs + i) % len(docs) for i in range(bs)]
        batch = scorer.batch([docs[i] for i in idx]).to(device)
        target = torch.from_numpy(y[idx]).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp) if amp else torch.autocast("cpu", enabled=False):
            logits, _ = net(batch.input_ids, batch.attention_mask)
        loss = loss_fn(logits.float(), target)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            seconds += time.perf_counter() - t0
            tokens += batch.n_tokens
    out = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads",
        "encoder": cfg.model.encoder,
        "encoder_params_m": round(sum(p.numel() for p in net.encoder.parameters()) / 1e6, 2),
        "precision": "bf16 autocast" if amp else "fp32",
        "labels": len(data.label_space),
        "batch_size": bs,
        "chunking": f"{cfg.model.chunking.max_chunks} x {cfg.model.chunking.max_chunk_tokens}",
        "steps": steps,
        "tokens_per_s": round(tokens / seconds, 1),
        "s_per_step": round(seconds / steps, 3),
        "stays_per_s": round(steps * bs / seconds, 2),
        "peak_rss_mib": round(_rss_mib(), 1),
    }
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    epoch_s = len(docs) / out["stays_per_s"]
    out["train_epoch_s_estimate"] = round(epoch_s, 1)
    return out


def _bert_base_dir(tokenizer_dir: str, root: Path) -> Path:
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    BertModel(BertConfig(vocab_size=len(tok), pad_token_id=tok.pad_token_id)).save_pretrained(root)
    tok.save_pretrained(root)
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/codiesp-fr/quickstart.yaml")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--bert-base", action="store_true", help="also a BERT-base-size encoder (GPU)")
    parser.add_argument("--precision", choices=("bf16", "fp32", "both"), default="bf16",
                        help="on a GPU: bf16 autocast (default), fp32, or both")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    precisions = ["bf16", "fp32"] if args.precision == "both" else [args.precision]
    if not torch.cuda.is_available():
        precisions = precisions[:1]  # CPU: always fp32, once
    name = Path(args.config).stem
    results: list[tuple[str, dict]] = []

    def run(label: str, overrides: list[str]) -> None:
        for prec in precisions:
            suffix = f" {prec}" if len(precisions) > 1 else ""
            results.append((label + suffix, bench(args.config, overrides, args.steps, args.warmup, prec)))

    run(name, args.overrides)
    if args.bert_base:
        if not torch.cuda.is_available():
            print("--bert-base skipped: no CUDA device", file=sys.stderr)
        else:
            from cimcoder.training.config import load_config

            enc = load_config(args.config, args.overrides).model.encoder
            with tempfile.TemporaryDirectory() as tmp:
                base = _bert_base_dir(enc, Path(tmp))
                over = [*args.overrides, f"model.encoder={base}", "model.chunking.max_chunk_tokens=512",
                        "model.chunking.max_chunks=6", "training.batch_size=4"]
                run("bert-base", over)
    for label, res in results:
        print(f"== {label}")
        for k, v in res.items():
            print(f"  {k}: {v}")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(results), indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
