"""Review store throughput: coders saving decisions at once.

    python benchmarks/bench_review.py [--url sqlite:///tmp/bench.db] [--stays 200] [--coders 4]
                                      [--hold 1.0]

Each coder (a thread) saves every stay once, reloading and retrying on a version conflict,
exactly as the review page does. Prints saves/s, conflicts and p50/p95/p99 save latency,
then checks that no save was lost (reviews stored == saves acknowledged).

Then the read latency while a save holds the write lock: one thread keeps a write
transaction open for `--hold` seconds; another times a queue read (the first page of the
queue, its counts) started 0.1 s into it, once as a read session (now) and once as a write
transaction (`BEGIN IMMEDIATE`, how every read ran before).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sqlalchemy import func, select

from cimcoder.inference.schemas import StayPrediction
from cimcoder.serving.review import workflow
from cimcoder.serving.review.schemas import CodeDecisionIn, ReviewIn
from cimcoder.serving.review.store import Review, ReviewConflict, ReviewStay, ReviewStore, utcnow

TEXT = (
    "Motif : dyspnée. Évolution : insuffisance cardiaque congestive décompensée sous "
    "furosémide. Antécédents : hypertension artérielle, diabète de type 2."
)
CODES = [
    ("I50.0", 0.95, "auto", "DP", "insuffisance cardiaque congestive"),
    ("I10", 0.7, "review", "DAS", "hypertension artérielle"),
    ("E11.9", 0.6, "review", "DAS", "diabète de type 2"),
]


def prediction(stay_id: str) -> StayPrediction:
    codes = []
    for code, score, decision, role, mention in CODES:
        start = TEXT.index(mention)
        codes.append({"code": code, "label": None, "score": score, "decision": decision,
                      "role": role, "cim11": [],
                      "evidence": [{"start": start, "end": start + len(mention), "text": mention}]})
    return StayPrediction.model_validate({
        "id": stay_id, "codes": codes,
        "model": {"name": "bench", "version": "bench-1", "source": "bench",
                  "architecture": "tfidf_lr", "terminology": "cim10",
                  "edition": "cim10-fr-edsnlp-0.23.0", "labels": 3,
                  "thresholds_version": None, "calibrated": False},
    })


def read_while_saving(store: ReviewStore, stay_id: str, hold_s: float, *, write: bool) -> float:
    """Seconds a queue read takes while another thread holds the write lock for `hold_s`."""
    locked = threading.Event()

    def hold() -> None:
        with store.session(write=True) as session:
            stay = session.get(ReviewStay, stay_id)
            assert stay is not None
            stay.updated_at = utcnow()
            session.flush()  # the write lock is taken; the save is "in flight"
            locked.set()
            time.sleep(hold_s)

    holder = threading.Thread(target=hold)
    holder.start()
    locked.wait()
    time.sleep(0.1)
    start = time.perf_counter()
    with store.session(write=write) as session:
        workflow.list_stays(session, workflow.QueueFilter(limit=100))
        workflow.status_counts(session)
    elapsed = time.perf_counter() - start
    holder.join()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="database URL (default: a temporary SQLite file)")
    parser.add_argument("--stays", type=int, default=200)
    parser.add_argument("--coders", type=int, default=4)
    parser.add_argument("--hold", type=float, default=1.0,
                        help="seconds a save holds the write lock while a read is timed")
    args = parser.parse_args()
    tmp = tempfile.TemporaryDirectory()
    url = args.url or f"sqlite:///{Path(tmp.name) / 'bench.db'}"
    store = ReviewStore(url)
    ids = [f"bench-{uuid.uuid4().hex[:8]}-{i}" for i in range(args.stays)]
    t0 = time.perf_counter()
    with store.session(write=True) as session:
        for stay_id in ids:
            workflow.enqueue(session, {"id": stay_id, "unit": "Cardiologie", "text": TEXT},
                             prediction(stay_id), default_qc_rate=0.0)
    enqueue_s = time.perf_counter() - t0
    workflow.check_code("I50.0", "cim10")  # terminology loaded before timing

    def coder(name: str) -> tuple[list[float], int]:
        latencies, conflicts = [], 0
        for stay_id in ids:
            decision_id = uuid.uuid4().hex
            with store.session() as session:
                version = session.get(ReviewStay, stay_id).version  # type: ignore[union-attr]
            while True:
                body = ReviewIn(
                    decision_id=decision_id, base_version=version, dp="I50.0",
                    codes=[CodeDecisionIn(code="I50.0", action="accept"),
                           CodeDecisionIn(code="I10", action="accept"),
                           CodeDecisionIn(code="E11.9", action="reject")],
                )
                start = time.perf_counter()
                try:
                    workflow.save_review(store, stay_id, body, name)
                    latencies.append(time.perf_counter() - start)
                    break
                except ReviewConflict as exc:
                    conflicts += 1
                    version = int(exc.current.get("version", version + 1))
        return latencies, conflicts

    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.coders) as pool:
        results = list(pool.map(coder, [f"codeur-{i}" for i in range(args.coders)]))
    wall = time.perf_counter() - t0
    latencies = sorted(x for lat, _ in results for x in lat)
    conflicts = sum(c for _, c in results)
    with store.session() as session:
        stored = session.scalar(
            select(func.count()).select_from(Review).where(Review.stay_id.in_(ids))
        )
    q = statistics.quantiles(latencies, n=100)
    print(f"database            {store.engine.dialect.name}")
    print(f"stays enqueued      {len(ids)} in {enqueue_s:.2f} s ({len(ids) / enqueue_s:.0f} stays/s)")
    print(f"coders (threads)    {args.coders}")
    print(f"saves acknowledged  {len(latencies)} in {wall:.2f} s ({len(latencies) / wall:.0f} saves/s)")
    print(f"version conflicts   {conflicts} (reloaded and saved again)")
    print(f"save latency        p50 {q[49] * 1000:.1f} ms, p95 {q[94] * 1000:.1f} ms, "
          f"p99 {q[98] * 1000:.1f} ms")
    print(f"reviews stored      {stored} (lost: {len(latencies) - int(stored or 0)})")
    if store.engine.dialect.name == "sqlite":
        now = min(read_while_saving(store, ids[0], args.hold, write=False) for _ in range(3))
        before = min(read_while_saving(store, ids[0], args.hold, write=True) for _ in range(3))
        print(f"queue read while a save holds the write lock {args.hold:.1f} s (best of 3): "
              f"{now * 1000:.1f} ms as a read session, {before * 1000:.1f} ms as a write "
              "transaction (BEGIN IMMEDIATE, before)")
    store.close()


if __name__ == "__main__":
    main()
