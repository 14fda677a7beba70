"""Benchmark of `cimcoder predict --engine spark`: stays/s on local[1] and local[2], scaling
ratio, peak memory (RSS) per Python worker and of the JVM.

    .venv/bin/python benchmarks/bench_spark.py [--n 2000] [--seed 0] [--masters local[1],local[2]]
        [--model RUN_DIR ...]
    .venv/bin/python benchmarks/bench_spark.py --n 100000      # the full figure

- Stays: `synth-fr/N@SEED` (cimcoder.training.corpora.synth), written once as JSONL
  (`id`, `text`) into a temporary folder.
- Models: the TF-IDF run (runs/codiesp-fr/tfidf_lr) and the quickstart transformer
  (runs/codiesp-fr/quickstart) where those runs exist; a missing one is skipped with a note.
- Each master gets a fresh SparkSession; a pass is `predict_to_parquet` end to end (the same
  job as the CLI: read, checks, scoring, Parquet written), model loads (driver and each worker)
  included. stays/s = N / wall time; scaling = stays/s on local[2] / stays/s on local[1].
- RSS: /proc sampled every 0.2 s during the pass; "worker" is the peak of each forked Python
  worker (pyspark.daemon children, the model lives there), the largest reported.
- For reference, the local engine (`Predictor.predict` in this process, chunks of 32, load
  excluded) on the same stays.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cimcoder.run_folder import LABELS_FILE, RunFolder

REPO = Path(__file__).resolve().parents[1]
MODELS = {
    "tfidf_lr": REPO / "runs" / "codiesp-fr" / "tfidf_lr",
    "quickstart": REPO / "runs" / "codiesp-fr" / "quickstart",
}


def write_stays(path: Path, n: int, seed: int) -> int:
    from cimcoder.training.corpora.synth import iter_stays

    chars = 0
    with path.open("w", encoding="utf-8") as out:
        for item in iter_stays(n, seed):
            text = item.stay.text
            chars += len(text)
            out.write(json.dumps({"id": item.stay.id, "text": text}, ensure_ascii=False) + "\n")
    return chars


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


@dataclass
class MemorySampler:
    """Peak RSS of the Python workers (forked by pyspark.daemon) and of the JVM."""

    interval: float = 0.2
    workers: dict[int, int] = field(default_factory=dict)
    jvm: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _sample(self) -> None:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
        daemons = {p for p in pids if "pyspark.daemon" in _cmdline(p)}
        for pid in pids:
            if pid in daemons and _ppid(pid) in daemons:  # a forked worker
                self.workers[pid] = max(self.workers.get(pid, 0), _rss_kib(pid))
            elif _ppid(pid) == os.getpid() and "java" in _cmdline(pid):
                self.jvm = max(self.jvm, _rss_kib(pid))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Pass:
    master: str
    seconds: float
    scored: int
    worker_mib: float
    workers: int
    jvm_mib: float

    @property
    def rate(self) -> float:
        return self.scored / self.seconds


def spark_pass(model: Path, source: Path, master: str, work: Path) -> Pass:
    from cimcoder.inference.spark import SparkJob, predict_to_parquet, spark_session

    spark = spark_session(master)
    try:
        output = work / f"out-{model.name}-{len(os.listdir(work))}"
        shutil.rmtree(output, ignore_errors=True)
        with MemorySampler() as memory:
            start = time.perf_counter()
            result = predict_to_parquet(spark, source, output, SparkJob(model=str(model)))
            seconds = time.perf_counter() - start
        shutil.rmtree(output, ignore_errors=True)
    finally:
        spark.stop()
    peak = max(memory.workers.values(), default=0)
    return Pass(master, seconds, result.scored, peak / 1024, len(memory.workers), memory.jvm / 1024)


def local_rate(model: Path, source: Path) -> float:
    from cimcoder.inference.predictor import Predictor, StayInput

    rows = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines()]
    inputs = [StayInput(r["id"], r["text"]) for r in rows]
    predictor = Predictor.load(model)
    start = time.perf_counter()
    for i in range(0, len(inputs), 32):
        predictor.predict(inputs[i : i + 32])
    return len(inputs) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="synthetic stays (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--masters", default="local[1],local[2]")
    parser.add_argument("--model", type=Path, nargs="*", help="run folders (default: see above)")
    parser.add_argument("--no-local", action="store_true", help="skip the local-engine figure")
    args = parser.parse_args()

    from cimcoder.inference.spark import require_spark

    require_spark()
    models = {p.name: p for p in args.model} if args.model else MODELS
    masters = [m.strip() for m in args.masters.split(",") if m.strip()]
    print(f"machine: {os.cpu_count()} CPU(s) visible; load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="cimcoder-bench-spark-") as tmp:
        work = Path(tmp)
        source = work / "stays.jsonl"
        chars = write_stays(source, args.n, args.seed)
        print(f"stays: synth-fr/{args.n}@{args.seed}, {chars / args.n:.0f} characters per stay")
        for name, run_dir in models.items():
            if not RunFolder(run_dir).has(LABELS_FILE):
                print(f"\n{name}: skipped (no run at {run_dir}; train it with `cimcoder train`)")
                continue
            print(f"\n{name} ({run_dir})")
            if not args.no_local:
                print(f"  local engine (in process, load excluded): {local_rate(run_dir, source):8.1f} stays/s")
            passes = []
            for master in masters:  # each pass printed as it ends: a long run keeps what it measured
                p = spark_pass(run_dir, source, master, work)
                passes.append(p)
                print(
                    f"  {p.master:9s} {p.scored:7d} stays in {p.seconds:7.1f} s = {p.rate:8.1f} stays/s"
                    f" | peak RSS per Python worker {p.worker_mib:6.0f} MiB ({p.workers} worker(s))"
                    f" | JVM {p.jvm_mib:6.0f} MiB",
                    flush=True,
                )
            if len(passes) >= 2:
                print(f"  scaling {passes[-1].master} / {passes[0].master}: "
                      f"{passes[-1].rate / passes[0].rate:.2f}x")


if __name__ == "__main__":
    main()
