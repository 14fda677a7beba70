"""Corpora benchmark: synthetic stay generation rate and CodiEsp-FR load time.

    .venv/bin/python benchmarks/bench_corpora.py [--n 10000]

Prints figures; it asserts nothing (the < 60 s target for 10,000 stays is checked by eye and,
with a margin, by tests/test_corpora_synth.py).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=10_000, help="synthetic stays to generate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from cimcoder.training.corpora import load_dataset
    from cimcoder.training.corpora.synth import write_jsonl

    print(f"cpu cores visible: {os.cpu_count()}")
    for name in ("codiesp-fr/train", "codiesp-fr/dev", "codiesp-fr/train"):
        start = time.perf_counter()
        corpus = load_dataset(name)
        elapsed = time.perf_counter() - start
        print(f"load {name}: {len(corpus)} stays in {elapsed:.2f} s "
              f"({len(corpus.report.unmapped_codes)} unmapped source codes reported)")
    print("(the first load includes building the CIM-10 FR table, cached for the process)")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "synth.jsonl"
        start = time.perf_counter()
        n = write_jsonl(out, n=args.n, seed=args.seed)
        elapsed = time.perf_counter() - start
        size_mb = out.stat().st_size / 1e6
        words = sum(len(line.split()) for line in out.open(encoding="utf-8"))
        print(f"synth: {n} stays in {elapsed:.2f} s = {n / elapsed:.0f} stays/s "
              f"({size_mb:.1f} MB JSONL, ~{words / n:.0f} JSON words/stay)")
        start = time.perf_counter()
        corpus = load_dataset(out)
        elapsed = time.perf_counter() - start
        print(f"load synth JSONL: {len(corpus)} stays in {elapsed:.2f} s (codes checked against CIM-10 FR)")

if __name__ == "__main__":
    main()
