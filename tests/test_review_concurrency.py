"""Several coders saving at once lose nothing; a server killed mid-save loses no committed
decision and leaves no half-written one. On SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from test_review_store import enqueue_cases, full_review, make_case

from cimcoder.serving.review import workflow
from cimcoder.serving.review.store import (
    AuditEvent,
    Review,
    ReviewCode,
    ReviewConflict,
    ReviewStay,
    ReviewStore,
)

KEY = "Vw4nP8sQ2xL6rT0yCoder"
CODERS = [f"codeur-{i}" for i in range(6)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def review_server(database_url: str, tmp_path: Path, **env: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """The real app under uvicorn, in its own process, with one key per coder."""
    port = free_port()
    keys = ",".join(f"{c}:{KEY}{i}" for i, c in enumerate(CODERS))
    environ = {
        **os.environ,
        "CIMCODER_MODEL": "",
        "CIMCODER_API_KEYS": keys,
        "CIMCODER_ROLES": ",".join(f"{c}=coder" for c in CODERS),
        "CIMCODER_DATABASE_URL": database_url,
        "CIMCODER_STATE_DIR": str(tmp_path),
        "CIMCODER_REVIEW_QC_SAMPLE_RATE": "0",
        **env,
    }
    log = (tmp_path / f"uvicorn-{port}.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "cimcoder.serving.app:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        env=environ, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError((tmp_path / f"uvicorn-{port}.log").read_text()[-3000:])
            time.sleep(0.2)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        log.close()


def key_of(coder: str) -> dict[str, str]:
    return {"X-API-Key": f"{KEY}{CODERS.index(coder)}"}


def save_until_done(
    client: httpx.Client, base: str, stay_id: str, coder: str, dp: str
) -> dict[str, object]:
    """What a coder's page does: save, and on a conflict reload the stay and save again."""
    decision_id = str(uuid.uuid4())
    version = client.get(f"{base}/v1/review/stays/{stay_id}", headers=key_of(coder)).json()["version"]
    while True:
        body = full_review(version, decision_id=decision_id, dp=dp).model_dump()
        answer = client.post(
            f"{base}/v1/review/stays/{stay_id}/decisions", json=body, headers=key_of(coder)
        )
        if answer.status_code == 200:
            return answer.json()  # type: ignore[no-any-return]
        assert answer.status_code == 409, answer.text
        version = answer.json()["current"]["version"]


def check_consistent(store: ReviewStore) -> dict[str, int]:
    """Every review complete, versions gap-free, one audit event per review."""
    with store.session() as session:
        reviews = session.scalars(select(Review)).all()
        for review in reviews:
            assert len(review.codes) == review.n_codes
        for stay in session.scalars(select(ReviewStay)).all():
            versions = sorted(r.new_version for r in reviews if r.stay_id == stay.id)
            assert versions == list(range(2, stay.version + 1)), stay.id
        saved_events = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.event == "review.saved")
        )
        assert saved_events == len(reviews)
        codes = session.scalar(select(func.count()).select_from(ReviewCode))
    return {"reviews": len(reviews), "codes": int(codes or 0)}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'review.db'}"
    server = request.getfixturevalue("postgres_server")
    return server.create_database(f"review_conc_{uuid.uuid4().hex[:10]}")  # type: ignore[no-any-return]


def test_many_threads_saving_in_the_store_lose_nothing(database_url: str) -> None:
    store = ReviewStore(database_url)
    ids = [f"sej-conc-{i}" for i in range(12)]
    enqueue_cases(store, ids)

    def coder_work(coder: str) -> int:
        saved = 0
        for stay_id in ids:  # every coder saves every stay: maximum contention
            decision_id = uuid.uuid4().hex
            with store.session() as session:
                version = session.get(ReviewStay, stay_id).version
            while True:
                try:
                    workflow.save_review(
                        store, stay_id, full_review(version, decision_id=decision_id), coder
                    )
                    saved += 1
                    break
                except ReviewConflict as exc:
                    version = exc.current.get("version") or version + 1
        return saved

    with ThreadPoolExecutor(len(CODERS)) as pool:
        results = list(pool.map(coder_work, CODERS))
    assert results == [len(ids)] * len(CODERS)
    counts = check_consistent(store)
    assert counts["reviews"] == len(ids) * len(CODERS)
    with store.session() as session:
        versions = set(session.scalars(select(ReviewStay.version)))
    assert versions == {1 + len(CODERS)}
    store.close()


@pytest.mark.slow
def test_simultaneous_http_saves_on_the_real_server_lose_nothing(
    database_url: str, tmp_path: Path
) -> None:
    store = ReviewStore(database_url)
    ids = [f"sej-http-{i}" for i in range(8)]
    enqueue_cases(store, ids)
    with review_server(database_url, tmp_path) as (base, _proc):
        barrier = threading.Barrier(len(CODERS))

        def coder_work(coder: str) -> list[str]:
            done = []
            with httpx.Client(timeout=30) as client:
                barrier.wait()
                for stay_id in ids:
                    answer = save_until_done(client, base, stay_id, coder, "I50.0")
                    done.append(str(answer["decision_id"]))
            return done

        with ThreadPoolExecutor(len(CODERS)) as pool:
            acknowledged = [d for batch in pool.map(coder_work, CODERS) for d in batch]
    assert len(acknowledged) == len(ids) * len(CODERS)
    with store.session() as session:
        stored = set(session.scalars(select(Review.id)))
        coders = set(session.scalars(select(Review.coder)))
    assert set(acknowledged) <= stored
    assert coders == set(CODERS)
    assert check_consistent(store)["reviews"] == len(acknowledged)
    store.close()


@pytest.mark.slow
def test_server_killed_mid_save_keeps_every_committed_decision(
    database_url: str, tmp_path: Path
) -> None:
    store = ReviewStore(database_url)
    ids = [f"sej-kill-{i}" for i in range(4)]
    enqueue_cases(store, ids)
    acknowledged: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    with review_server(database_url, tmp_path) as (base, proc):

        with httpx.Client(timeout=60) as warm:  # first save of the process, before the rush
            first = save_until_done(warm, base, ids[0], "codeur-0", "I50.0")
            acknowledged.append(str(first["decision_id"]))

        def hammer(coder: str) -> None:
            with httpx.Client(timeout=60) as client:
                while not stop.is_set():
                    try:
                        for stay_id in ids:
                            answer = save_until_done(client, base, stay_id, coder, "I50.0")
                            with lock:
                                acknowledged.append(str(answer["decision_id"]))
                    except httpx.HTTPError:
                        return  # the server is gone

        threads = [threading.Thread(target=hammer, args=(c,)) for c in CODERS]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)  # mid-save: requests are in flight
        proc.wait(timeout=10)
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
    assert len(acknowledged) >= 20

    # A fresh process opens the store: nothing committed is missing, nothing half-written.
    reopened = ReviewStore(database_url)
    with reopened.session() as session:
        stored = set(session.scalars(select(Review.id)))
    assert set(acknowledged) <= stored
    check_consistent(reopened)
    # And the store still takes saves (no lock left behind by the killed server).
    with reopened.session() as session:
        version = session.get(ReviewStay, ids[0]).version
    workflow.save_review(reopened, ids[0], full_review(version), "codeur-0")
    reopened.close()
    store.close()


def test_enqueue_check_rejects_prediction_for_another_stay(tmp_path: Path) -> None:
    store = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}")
    stay, prediction = make_case("sej-a")
    stay["id"] = "sej-b"
    with pytest.raises(workflow.ReviewError, match="does not match"), store.session(write=True) as session:
        workflow.enqueue(session, stay, prediction)
