"""Load test of `cimcoder serve` on loopback: throughput, latency percentiles, errors.

    .venv/bin/python benchmarks/bench_serving.py [--model RUN_DIR] [--clients 4] [--seconds 30]

Starts `cimcoder serve` (uvicorn, auth on with a random key) on 127.0.0.1 with the model
(--model, else the quickstart run under runs/, else the small PLM-ICD of bench_predict.py),
measures the single-request latency (one client, sequential requests), then runs N clients
for M seconds (bounded) posting CodiEsp-FR **dev** reports to POST /v1/code, and prints
throughput, p50 / p95 / p99, the error count and the ratio to the single-request latency.

    .venv/bin/python benchmarks/bench_serving.py --flood 8 [--seconds 60] [--env NAME=VALUE ...]

Fair load: one client posts one report at a time (its own key) while `--flood` threads of
another key post POST /v1/code/batch of `--flood-items` reports back to back (waiting the
Retry-After of a 429); prints the one-report client's p50 / p95 and what the flood got.
`--env` sets server variables, e.g. `--env CIMCODER_MAX_CONCURRENT_PER_KEY=1000 --env
CIMCODER_MAX_QUEUED_STAYS=1000000` for the service without its fair-load limits.
"""

from __future__ import annotations

import argparse
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="run folder or MLflow URI")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (N)")
    parser.add_argument("--seconds", type=float, default=30.0, help="load duration (M)")
    parser.add_argument("--single", type=int, default=5, help="sequential requests for the reference")
    parser.add_argument("--reports", type=int, default=32, help="CodiEsp-FR dev reports cycled")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--flood", type=int, default=0, help="batch-flooding threads (fair-load run)")
    parser.add_argument("--flood-items", type=int, default=64, help="reports per flood batch")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    args = parser.parse_args()

    import httpx

    model = resolve_model(args.model)
    reports = dev_reports(args.reports)
    key = secrets.token_urlsafe(24)
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as state_dir:
        flood_key = secrets.token_urlsafe(24)
        env = {
            **os.environ,
            "CIMCODER_API_KEYS": f"bench:{key},flood:{flood_key}",
            "CIMCODER_STATE_DIR": state_dir,
            "CIMCODER_REQUEST_TIMEOUT_S": "300",
            "OMP_NUM_THREADS": "2",
            **dict(item.split("=", 1) for item in args.env),
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
            deadline = time.monotonic() + args.startup_timeout
            while True:
                if server.poll() is not None:
                    print(server.stderr.read() if server.stderr else "", file=sys.stderr)
                    print("server exited before it was ready", file=sys.stderr)
                    return 1
                try:
                    if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    print("server not ready in time", file=sys.stderr)
                    return 1
                time.sleep(0.5)
            headers = {"X-API-Key": key}
            if args.flood:
                return _fair_load(base, headers, {"X-API-Key": flood_key}, reports, args, model)
            return _load(base, headers, reports, args, model)
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()


def _load(base: str, headers: dict[str, str], reports: list[dict[str, str]], args, model) -> int:  # type: ignore[no-untyped-def]
    import httpx

    with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
        client.post("/v1/code", json=reports[0])  # warm-up
        single = []
        for i in range(args.single):
            start = time.perf_counter()
            response = client.post("/v1/code", json=reports[i % len(reports)])
            single.append(time.perf_counter() - start)
            if response.status_code != 200:
                print(f"single request failed: {response.status_code} {response.text[:200]}", file=sys.stderr)
                return 1

    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + args.seconds

    def worker(index: int) -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=600) as client:
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
                        latencies.append(elapsed)
                    else:
                        errors.append(reason)

    started = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started

    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        metrics = client.get("/metrics").text
    sums = {
        name: float(value)
        for name, value in (
            line.split()[:2] for line in metrics.splitlines() if line.startswith("cimcoder_batch_size_")
        )
    }
    batches = sums.get("cimcoder_batch_size_count", 0.0)
    mean_batch = sums.get("cimcoder_batch_size_sum", 0.0) / batches if batches else float("nan")

    single_p50 = statistics.median(single)
    p50 = _percentile(latencies, 50)
    print(f"model             : {model}")
    print(f"load              : {args.clients} clients for {args.seconds:g} s (wall {wall:.1f} s), CodiEsp-FR dev reports")
    print(f"requests          : {len(latencies)} ok, {len(errors)} errors {sorted(set(errors)) if errors else ''}")
    print(f"throughput        : {len(latencies) / wall:.2f} requests/s")
    print(f"latency p50/p95/p99: {p50 * 1000:.0f} / {_percentile(latencies, 95) * 1000:.0f} / {_percentile(latencies, 99) * 1000:.0f} ms")
    print(f"single request p50: {single_p50 * 1000:.0f} ms ({args.single} sequential requests, same server)")
    print(f"ratio p50 loaded / single: {p50 / single_p50:.2f}")
    print(f"micro-batching    : {batches:.0f} model calls, {mean_batch:.2f} reports per call on average")
    return 0 if not errors else 1


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
