"""Load test of `cimcoder serve` on loopback against the in-process predictor, in one run.

    .venv/bin/python benchmarks/bench_serving.py [--model RUN_DIR] [--clients 8] [--seconds 20]
        [--workers 1] [--predictor-seconds 10] [--env NAME=VALUE ...]

1. The predictor's steady state, in this process (`Predictor.load(model).predict` in a worker
   thread as in the service, load excluded, evidence on as the service scores, `batch_size` =
   the service's `predict_batch_size`): the CodiEsp-FR **dev** reports (never test) cycled in
   calls of min(clients, batch_max_size) reports. That is the fair reference: N clients posting one
   report at a time can never give the service a model call bigger than N reports, and N
   reports per call is the best batching can do. One report per call is measured too: a
   PLM-ICD on CPU can be faster that way (chunks padded to the batch's longest). The
   reference is the better of the two, each the mean of a measure before and one after the
   service run (other work drifts on a shared machine), so "service / predictor" is the
   share of the model's best in-process throughput that the service keeps.
2. `cimcoder serve` (uvicorn, auth on) with the same model and `--workers` processes
   (CIMCODER_WORKERS; each loads the model), on 127.0.0.1: the single-request latency (one
   client, sequential requests), then N clients for M seconds, each with its own API key
   (N hospital systems: the per-key in-flight limit is per client, as in production),
   posting one report at a time to POST /v1/code: requests/s, p50 / p95 / p99, errors,
   reports per model call, the share of the wall time the scorer was busy, and the resident
   memory (RSS) of each server process. Then the ratio service / predictor.

Reading it: "scorer busy" near 100 % means one process is bound by the model's own pace there
(reports per call, the GIL it shares with the event loop), not by HTTP, JSON or batching
waits; more throughput then takes more cores (`--workers`). With several workers, /metrics
answers for one of them: reports per call and busy time are left out.

--model: run folder or MLflow URI (else the quickstart run under runs/, else the small
PLM-ICD of bench_predict.py). OMP_NUM_THREADS is 2 for the predictor and 2 / workers per
server worker.

    .venv/bin/python benchmarks/bench_serving.py --flood 8 [--seconds 60] [--env NAME=VALUE ...]

Fair load: one client posts one report at a time (its own key) while `--flood` threads of
another key post POST /v1/code/batch of `--flood-items` reports back to back (waiting the
Retry-After of a 429); prints the one-report client's p50 / p95 and what the flood got.
`--env` sets server variables, e.g. `--env CIMCODER_MAX_CONCURRENT_PER_KEY=1000 --env
CIMCODER_MAX_QUEUED_STAYS=1000000` for the service without its fair-load limits.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_predict import dev_reports, resolve_model


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


class PredictorBaseline:
    """The model in this process, scored the way the service scores it (see the docstring)."""

    def __init__(self, model: Path | str, reports: list[dict[str, str]], batch_size: int) -> None:
        from cimcoder.inference.predictor import Predictor, StayInput

        self.predictor = Predictor.load(model)
        self.inputs = [StayInput.from_documents(r["id"], [r["text"]]) for r in reports]
        self.batch_size = batch_size
        self.predictor.predict(self.inputs[:2], batch_size=batch_size)  # warm-up

    def reports_per_s(self, per_call: int, seconds: float) -> float:
        """Reports/s over `seconds`, the reports cycled in calls of `per_call`, scored in a
        worker thread as the service scores them (torch ran the quickstart-size PLM-ICD 2-5x
        slower in the main thread than in another one on the shared 2-core machine)."""
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            return pool.submit(self._reports_per_s, per_call, seconds).result()

    def _reports_per_s(self, per_call: int, seconds: float) -> float:
        done, i = 0, 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            call = [self.inputs[(i + k) % len(self.inputs)] for k in range(per_call)]
            i += per_call
            self.predictor.predict(call, batch_size=self.batch_size)
            done += per_call
        return done / (time.perf_counter() - start)


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def server_memory(pid: int) -> list[tuple[str, float]]:
    """(role, RSS MiB) of the server process and of each worker process it started."""
    out = []
    main_rss = _rss_mib(pid)
    workers = []
    for child in _descendants(pid):
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes() if Path(f"/proc/{child}").exists() else b""
        if b"resource_tracker" in cmdline:
            continue
        rss = _rss_mib(child)
        if rss is not None:
            workers.append((f"worker pid {child}", rss))
    if main_rss is not None:
        out.append(("supervisor" if workers else "server (one process)", main_rss))
    return out + workers


def _metric_sums(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("cimcoder_batch_size_", "cimcoder_batch_seconds_")):
            name, value = line.split()[:2]
            out[name] = out.get(name, 0.0) + float(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="run folder or MLflow URI")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (N)")
    parser.add_argument("--seconds", type=float, default=20.0, help="load duration (M)")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes")
    parser.add_argument("--predictor-seconds", type=float, default=10.0,
                        help="in-process predictor timing, before and after the service (each)")
    parser.add_argument("--single", type=int, default=5, help="sequential requests for the reference")
    parser.add_argument("--reports", type=int, default=32, help="CodiEsp-FR dev reports cycled")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--flood", type=int, default=0, help="batch-flooding threads (fair-load run)")
    parser.add_argument("--flood-items", type=int, default=64, help="reports per flood batch")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    args = parser.parse_args()


    from cimcoder.serving.settings import Settings

    os.environ.setdefault("OMP_NUM_THREADS", "2")
    model = resolve_model(args.model)
    reports = dev_reports(args.reports)
    server_env = dict(item.split("=", 1) for item in args.env)
    defaults = Settings.model_fields
    batch_max = int(server_env.get("CIMCODER_BATCH_MAX_SIZE", defaults["batch_max_size"].default))
    predict_batch = int(server_env.get("CIMCODER_PREDICT_BATCH_SIZE", defaults["predict_batch_size"].default))

    baseline: PredictorBaseline | None = None
    before = one_before = float("nan")
    per_call = max(1, min(args.clients, batch_max))
    if not args.flood:
        baseline = PredictorBaseline(model, reports, predict_batch)
        before = baseline.reports_per_s(per_call, args.predictor_seconds)
        one_before = baseline.reports_per_s(1, args.predictor_seconds / 2)

    keys = {f"bench-{i}": secrets.token_urlsafe(24) for i in range(max(1, args.clients))}
    flood_key = secrets.token_urlsafe(24)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as state_dir:
        env = {
            **os.environ,
            "CIMCODER_API_KEYS": ",".join([*(f"{n}:{k}" for n, k in keys.items()), f"flood:{flood_key}"]),
            "CIMCODER_STATE_DIR": state_dir,
            "CIMCODER_REQUEST_TIMEOUT_S": "300",
            "CIMCODER_WORKERS": str(args.workers),
            "OMP_NUM_THREADS": str(max(1, 2 // args.workers)),
            **server_env,
        }
        env.pop("CIMCODER_AUTH_DISABLED", None)
        server = subprocess.Popen(
            [sys.executable, "-m", "cimcoder.cli", "serve", "--model", str(model), "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            if not _wait_ready(server, base, args.startup_timeout, args.workers):
                return 1
            headers = [{"X-API-Key": key} for key in keys.values()]
            if args.flood:
                return _fair_load(base, headers[0], {"X-API-Key": flood_key}, reports, args, model)
            assert baseline is not None
            result = _load(base, headers, reports, args)
            memory = server_memory(server.pid)
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
    one_after = baseline.reports_per_s(1, args.predictor_seconds / 2)
    after = baseline.reports_per_s(per_call, args.predictor_seconds)
    batched, single = (before + after) / 2, (one_before + one_after) / 2
    reference = max(batched, single)
    print(f"model             : {model}")
    print(f"load average      : {_loadavg()} (at the end)")
    print(f"predictor         : {reference:.2f} reports/s in-process steady state (the better of: "
          f"{per_call} reports per call {batched:.2f}, before / after the service {before:.2f} / "
          f"{after:.2f}; one per call {single:.2f}, {one_before:.2f} / {one_after:.2f}), evidence on")
    result.print(args)
    print("server memory     : " + ", ".join(f"{role} {rss:.0f} MiB" for role, rss in memory))
    print(f"service/predictor : {result.throughput / reference:.2f} "
          f"({result.throughput:.2f} requests/s / {reference:.2f} reports/s)")
    return 0 if not result.errors else 1


def _wait_ready(server: subprocess.Popen[str], base: str, timeout: float, workers: int) -> bool:
    """Until /ready answers 200 (several times with workers: each one loads its model)."""
    import httpx

    deadline = time.monotonic() + timeout
    ready_in_a_row = 0
    while ready_in_a_row < 4 * workers:
        if server.poll() is not None:
            print(server.stderr.read() if server.stderr else "", file=sys.stderr)
            print("server exited before it was ready", file=sys.stderr)
            return False
        try:
            ok = httpx.get(f"{base}/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            ok = False
        ready_in_a_row = ready_in_a_row + 1 if ok else 0
        if time.monotonic() > deadline:
            print("server not ready in time", file=sys.stderr)
            return False
        time.sleep(0.1 if ok else 0.5)
    return True


class LoadResult:
    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.single: list[float] = []
        self.wall = 0.0
        self.metrics: dict[str, float] = {}

    @property
    def throughput(self) -> float:
        return len(self.latencies) / self.wall if self.wall else 0.0

    def print(self, args: Any) -> None:
        lat = self.latencies
        calls = self.metrics.get("cimcoder_batch_size_count", 0.0)
        mean_batch = self.metrics.get("cimcoder_batch_size_sum", 0.0) / calls if calls else float("nan")
        busy = self.metrics.get("cimcoder_batch_seconds_sum", float("nan")) / (self.wall * args.workers)
        single_p50 = statistics.median(self.single)
        p50 = _percentile(lat, 50)
        print(f"service           : {args.workers} worker(s), {args.clients} clients (one key each) "
              f"for {args.seconds:g} s (wall {self.wall:.1f} s), one report per request")
        print(f"requests          : {len(lat)} ok, {len(self.errors)} errors "
              f"{sorted(set(self.errors)) if self.errors else ''}")
        print(f"throughput        : {self.throughput:.2f} requests/s")
        print(f"latency p50/p95/p99: {p50 * 1000:.0f} / {_percentile(lat, 95) * 1000:.0f} / "
              f"{_percentile(lat, 99) * 1000:.0f} ms")
        print(f"single request p50: {single_p50 * 1000:.0f} ms ({args.single} sequential requests, "
              f"same server; loaded / single {p50 / single_p50:.2f})")
        print(f"micro-batching    : {calls:.0f} model calls, {mean_batch:.2f} reports per call; "
              f"scorer busy {busy:.0%} of the wall time (per worker)")


def _load(base: str, headers: list[dict[str, str]], reports: list[dict[str, str]], args: Any) -> LoadResult:
    import httpx

    result = LoadResult()
    with httpx.Client(base_url=base, headers=headers[0], timeout=600) as client:
        for i in range(2 * args.workers):  # warm-up, each worker once at least
            client.post("/v1/code", json=reports[i % len(reports)])
        for i in range(args.single):
            start = time.perf_counter()
            response = client.post("/v1/code", json=reports[i % len(reports)])
            result.single.append(time.perf_counter() - start)
            if response.status_code != 200:
                raise SystemExit(f"single request failed: {response.status_code} {response.text[:200]}")
        before = _metric_sums(client.get("/metrics").text) if args.workers == 1 else {}

    lock = threading.Lock()
    stop_at = time.monotonic() + args.seconds

    def worker(index: int) -> None:
        with httpx.Client(base_url=base, headers=headers[index], timeout=600) as client:
            i = index
            while time.monotonic() < stop_at:
                report = reports[i % len(reports)]
                i += args.clients
                start = time.perf_counter()
                try:
                    response = client.post("/v1/code", json=report)
                    ok = response.status_code == 200 and len(response.json()["codes"]) > 0
                    reason = f"HTTP {response.status_code}"
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    ok, reason = False, type(exc).__name__
                elapsed = time.perf_counter() - start
                with lock:
                    if ok:
                        result.latencies.append(elapsed)
                    else:
                        result.errors.append(reason)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.wall = time.perf_counter() - started
    with httpx.Client(base_url=base, headers=headers[0], timeout=30) as client:
        # Each worker has its own metrics: with several, /metrics answers for one of them.
        after = _metric_sums(client.get("/metrics").text) if args.workers == 1 else {}
    result.metrics = {name: value - before.get(name, 0.0) for name, value in after.items()}
    return result


def _fair_load(base: str, headers: dict[str, str], flood_headers: dict[str, str], reports: list[dict[str, str]], args, model) -> int:  # type: ignore[no-untyped-def]
    import httpx

    stop_at = time.monotonic() + args.seconds
    flood = {"ok": 0, "429": 0, "other": 0}
    lock = threading.Lock()
    batch = {"items": [dict(reports[i % len(reports)], id=f"flood-{i}") for i in range(args.flood_items)]}

    def flooder() -> None:
        with httpx.Client(base_url=base, headers=flood_headers, timeout=600) as client:
            while time.monotonic() < stop_at:
                response = client.post("/v1/code/batch", json=batch)
                outcome = {200: "ok", 429: "429"}.get(response.status_code, "other")
                with lock:
                    flood[outcome] += 1
                if response.status_code == 429:
                    time.sleep(float(response.headers.get("retry-after", "1")))

    with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
        client.post("/v1/code", json=reports[0])  # warm-up
        threads = [threading.Thread(target=flooder) for _ in range(args.flood)]
        for thread in threads:
            thread.start()
        time.sleep(min(5.0, args.seconds / 4))  # let the flood build up
        probe: list[float] = []
        probe_errors: list[int] = []
        i = 0
        while time.monotonic() < stop_at:
            start = time.perf_counter()
            response = client.post("/v1/code", json=reports[i % len(reports)])
            i += 1
            if response.status_code == 200:
                probe.append(time.perf_counter() - start)
            else:
                probe_errors.append(response.status_code)
        for thread in threads:
            thread.join()
    env = " ".join(args.env) or "defaults"
    print(f"model             : {model}")
    print(f"server            : {env}")
    print(f"flood             : {args.flood} threads x batches of {args.flood_items} for {args.seconds:g} s: "
          f"{flood['ok']} batches ok, {flood['429']} x 429, {flood['other']} other")
    print(f"one-report client : {len(probe)} ok, {len(probe_errors)} refused {sorted(set(probe_errors))}; "
          f"p50 / p95 {_percentile(probe, 50) * 1000:.0f} / {_percentile(probe, 95) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
