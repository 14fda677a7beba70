"""Two `cimcoder serve` replicas (real uvicorn processes) on one PostgreSQL review store, as
behind a load balancer: coders' saves go through either one, none is lost, and a save based on
a version the other replica has already moved past gets the API's 409 with the current review.

Replicas share nothing but the database: a stay's version is checked and bumped in the save's
transaction, so which process answers does not matter.
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from test_review_concurrency import CODERS, check_consistent, key_of, review_server
from test_review_store import enqueue_cases, full_review

from cimcoder.serving.review.store import Review, ReviewStay, ReviewStore

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

SESSION_SECRET = "Zq8vR3mT6wY1pK4sLx9n"  # the same on every replica, as the README says


@pytest.fixture
def database_url(postgres_server) -> str:  # type: ignore[no-untyped-def]
    return postgres_server.create_database(f"review_replicas_{uuid.uuid4().hex[:10]}")  # type: ignore[no-any-return]


def _replicas(stack: ExitStack, database_url: str, tmp_path: Path, n: int = 2) -> list[str]:
    bases = []
    for i in range(n):
        state = tmp_path / f"replica-{i}"  # no shared state folder: only the database is shared
        state.mkdir()
        base, _proc = stack.enter_context(
            review_server(database_url, state, CIMCODER_SESSION_SECRET=SESSION_SECRET))
        bases.append(base)
    return bases


def _save(client: httpx.Client, bases: list[str], stay_id: str, coder: str, turn: int) -> dict:
    """A coder's page behind a load balancer: it opens the stay through one replica and saves
    through the other; on a conflict it takes the current version from the 409 and saves again."""
    decision_id = str(uuid.uuid4())
    opened = client.get(f"{bases[turn % 2]}/v1/review/stays/{stay_id}", headers=key_of(coder))
    assert opened.status_code == 200, opened.text
    version = opened.json()["version"]
    while True:
        body = full_review(version, decision_id=decision_id).model_dump()
        turn += 1
        answer = client.post(f"{bases[turn % 2]}/v1/review/stays/{stay_id}/decisions",
                             json=body, headers=key_of(coder))
        if answer.status_code == 200:
            return answer.json()  # type: ignore[no-any-return]
        assert answer.status_code == 409, answer.text
        assert answer.json()["current"]["version"] > version
        version = answer.json()["current"]["version"]


def test_concurrent_saves_through_two_replicas_lose_nothing(database_url: str, tmp_path: Path) -> None:
    store = ReviewStore(database_url)  # the schema is upgraded once, before the replicas start
    ids = [f"sej-replica-{i}" for i in range(6)]
    enqueue_cases(store, ids)
    with ExitStack() as stack:
        bases = _replicas(stack, database_url, tmp_path)
        barrier = threading.Barrier(len(CODERS))

        def coder_work(coder: str) -> list[str]:
            done = []
            with httpx.Client(timeout=30) as client:
                barrier.wait()
                for turn, stay_id in enumerate(ids):  # every coder saves every stay
                    done.append(str(_save(client, bases, stay_id, coder, turn + CODERS.index(coder))["decision_id"]))
            return done

        with ThreadPoolExecutor(len(CODERS)) as pool:
            acknowledged = [d for batch in pool.map(coder_work, CODERS) for d in batch]
    assert len(acknowledged) == len(set(acknowledged)) == len(ids) * len(CODERS)
    with store.session() as session:
        stored = set(session.scalars(select(Review.id)))
        versions = set(session.scalars(select(ReviewStay.version)))
    assert set(acknowledged) <= stored
    assert versions == {1 + len(CODERS)}  # each stay: one version per coder, none skipped
    assert check_consistent(store)["reviews"] == len(acknowledged)
    store.close()


def test_a_stale_save_on_the_other_replica_gets_the_409_and_a_login_holds_on_both(
    database_url: str, tmp_path: Path,
) -> None:
    store = ReviewStore(database_url)
    enqueue_cases(store, ["sej-replica-stale"])
    url = "/v1/review/stays/sej-replica-stale"
    with ExitStack() as stack, httpx.Client(timeout=30) as client:
        a, b = _replicas(stack, database_url, tmp_path)
        # Both coders open version 1, one through each replica.
        assert client.get(a + url, headers=key_of("codeur-0")).json()["version"] == 1
        assert client.get(b + url, headers=key_of("codeur-1")).json()["version"] == 1

        first_body = full_review(1).model_dump()
        first = client.post(a + url + "/decisions", json=first_body, headers=key_of("codeur-0"))
        assert first.status_code == 200, first.text
        assert first.json()["version"] == 2 and first.json()["replayed"] is False

        stale = client.post(b + url + "/decisions", json=full_review(1).model_dump(), headers=key_of("codeur-1"))
        assert stale.status_code == 409
        assert stale.json()["current"]["version"] == 2
        assert stale.json()["current"]["validated_by"] == "codeur-0"

        # Replaying the first save through the other replica is idempotent, not a conflict.
        replay = client.post(b + url + "/decisions", json=first_body, headers=key_of("codeur-0"))
        assert replay.status_code == 200
        assert replay.json()["version"] == 2 and replay.json()["replayed"] is True
        # The second coder reloads and saves on top: version 3, seen by both replicas.
        merged = client.post(b + url + "/decisions", json=full_review(2).model_dump(), headers=key_of("codeur-1"))
        assert merged.status_code == 200 and merged.json()["version"] == 3
        assert client.get(a + url, headers=key_of("codeur-0")).json()["version"] == 3

        # A coder who logged in on the review page through one replica is still logged in
        # when the balancer sends the next page to the other (shared session secret).
        login = client.post(a + "/review/login", data={"username": "codeur-2", "key": key_of("codeur-2")["X-API-Key"]},
                            follow_redirects=False)
        assert login.status_code == 303, login.text
        queue = client.get(b + "/review", follow_redirects=False)
        assert queue.status_code == 200 and "<table" in queue.text  # the queue, not the login form
        anonymous = httpx.get(b + "/review", follow_redirects=False)
        assert anonymous.status_code in (302, 303, 307)
        assert anonymous.headers["location"].startswith("/review/login")
    store.close()
