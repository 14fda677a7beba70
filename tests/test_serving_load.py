"""Fair load: a bounded scoring queue (429 with Retry-After, never a 504 for waiting), a limit
on one key's requests in flight, and a cap on report characters per request."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_api import AUTH, HEART, OTHER_KEY, make_settings

from cimcoder.serving.app import create_app
from cimcoder.serving.batching import MicroBatcher, QueueFull


def test_a_full_queue_refuses_at_once_with_a_retry_delay() -> None:
    gate = threading.Event()

    def predict(items: list[str]) -> list[str]:
        gate.wait(5)  # the first batch holds the scorer while others arrive
        return [f"codé:{item}" for item in items]

    async def scenario() -> tuple[list[list[str]], QueueFull, float]:
        batcher: MicroBatcher[str, str] = MicroBatcher(
            predict, max_size=4, max_wait_s=0.0, max_queued=2
        )
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(["HTA"]))
            await asyncio.sleep(0.05)  # taken by the worker: the queue is empty again
            second = asyncio.create_task(batcher.submit(["diabète", "BPCO"]))
            await asyncio.sleep(0.01)
            assert batcher.queued == 2
            started = time.perf_counter()
            with pytest.raises(QueueFull) as refused:
                await batcher.submit(["insuffisance cardiaque"])
            waited = time.perf_counter() - started
            gate.set()
            return [await first, await second], refused.value, waited
        finally:
            await batcher.stop()

    answers, refused, waited = asyncio.run(scenario())
    assert answers == [["codé:HTA"], ["codé:diabète", "codé:BPCO"]]
    assert refused.queued == 2 and refused.retry_after_s >= 1
    assert waited < 0.1  # refused at once, not after a timeout


def test_the_expected_wait_bounds_the_queue_too() -> None:
    def predict(items: list[str]) -> list[str]:
        time.sleep(0.2)
        return items

    async def scenario() -> QueueFull:
        batcher: MicroBatcher[str, str] = MicroBatcher(
            predict, max_size=1, max_wait_s=0.0, max_queue_wait_s=0.5
        )
        await batcher.start()
        try:
            await batcher.submit(["HTA"])  # one batch timed: about 0.2 s
            running = asyncio.create_task(batcher.submit(["a"]))
            await asyncio.sleep(0.02)
            queued = [asyncio.create_task(batcher.submit([f"crh-{i}"])) for i in range(2)]
            await asyncio.sleep(0.01)
            # Two stays ahead at 0.2 s each, and this one: 0.6 s > 0.5 s.
            with pytest.raises(QueueFull) as refused:
                await batcher.submit(["crh-3"])
            await asyncio.gather(running, *queued)
            return refused.value
        finally:
            await batcher.stop()

    refused = asyncio.run(scenario())
    assert refused.retry_after_s == 1


class GatedPredictor:
    """The real tiny predictor, whose scoring waits for the test to open a gate."""

    def __init__(self, predictor: Any) -> None:
        self._predictor = predictor
        self.gate = threading.Event()
        self.calls = 0

    def predict(self, items: Sequence[Any], **kw: Any) -> Any:
        self.calls += 1
        self.gate.wait(10)
        return self._predictor.predict(items, **kw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._predictor, name)


@pytest.fixture
def gated(predictor: Any) -> GatedPredictor:
    return GatedPredictor(predictor)


def _client(tmp_path: Path, gated: GatedPredictor, **overrides: object) -> TestClient:
    settings = make_settings(tmp_path, batch_max_wait_ms=0, **overrides)
    return TestClient(create_app(settings, predictor=gated))


def _post_in_thread(
    client: TestClient, headers: dict[str, str], out: list[Any]
) -> threading.Thread:
    def run() -> None:
        out.append(client.post("/v1/code", json={"text": HEART}, headers=headers))

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_until(condition: Any) -> None:
    deadline = time.monotonic() + 10
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


@pytest.fixture
def cleanup() -> Iterator[list[tuple[GatedPredictor, threading.Thread]]]:
    held: list[tuple[GatedPredictor, threading.Thread]] = []
    yield held
    for gate_owner, thread in held:
        gate_owner.gate.set()
        thread.join(10)


def test_one_key_cannot_hold_more_requests_than_its_limit(
    tmp_path: Path, gated: GatedPredictor, cleanup: list[Any]
) -> None:
    with _client(tmp_path, gated, max_concurrent_per_key=1) as client:
        out: list[Any] = []
        thread = _post_in_thread(client, AUTH, out)
        cleanup.append((gated, thread))
        _wait_until(lambda: gated.calls == 1)  # the first request is being scored
        refused = client.post("/v1/code", json={"text": HEART}, headers=AUTH)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert (
            "'dim-hopital-nord' already has 1 coding requests in flight" in refused.json()["detail"]
        )
        # Another key is not refused for it.
        other: list[Any] = []
        other_thread = _post_in_thread(client, {"X-API-Key": OTHER_KEY}, other)
        cleanup.append((gated, other_thread))
        gated.gate.set()
        thread.join(10)
        other_thread.join(10)
        assert out[0].status_code == 200 and other[0].status_code == 200
        # The slot is given back: the same key is served again.
        assert client.post("/v1/code", json={"text": HEART}, headers=AUTH).status_code == 200


def test_a_full_scoring_queue_is_429_with_retry_after_not_504(
    tmp_path: Path, gated: GatedPredictor, cleanup: list[Any]
) -> None:
    with _client(tmp_path, gated, max_queued_stays=1) as client:
        first: list[Any] = []
        thread = _post_in_thread(client, AUTH, first)
        cleanup.append((gated, thread))
        _wait_until(lambda: gated.calls == 1)
        second: list[Any] = []
        second_thread = _post_in_thread(client, {"X-API-Key": OTHER_KEY}, second)
        cleanup.append((gated, second_thread))
        batcher = client.app.state.batcher  # type: ignore[attr-defined]
        _wait_until(lambda: batcher.queued == 1)
        refused = client.post("/v1/code", json={"text": HEART}, headers=AUTH)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert "the scoring queue is full (1 stays waiting)" in refused.json()["detail"]
        gated.gate.set()
        thread.join(10)
        second_thread.join(10)
        assert first[0].status_code == 200 and second[0].status_code == 200


def test_report_characters_per_request_are_capped(tmp_path: Path, predictor: Any) -> None:
    settings = make_settings(tmp_path, max_chars_per_request=200)
    with TestClient(create_app(settings, predictor=predictor)) as client:
        assert len(HEART) < 200
        assert client.post("/v1/code", json={"text": HEART}, headers=AUTH).status_code == 200
        long = client.post("/v1/code", json={"text": HEART * 2}, headers=AUTH)
        assert long.status_code == 413
        assert long.json()["detail"] == (
            f"too much text in one request: {2 * len(HEART)} characters > 200 "
            "(send fewer or shorter reports)"
        )
        batch = {"items": [{"id": "a", "text": HEART}, {"id": "b", "text": HEART}]}
        assert client.post("/v1/code/batch", json=batch, headers=AUTH).status_code == 413


def test_waiting_requests_are_served_in_turn_per_key() -> None:
    calls: list[list[str]] = []
    gate = threading.Event()

    def predict(items: list[str]) -> list[str]:
        calls.append(list(items))
        gate.wait(5)
        return items

    async def scenario() -> None:
        batcher: MicroBatcher[str, str] = MicroBatcher(predict, max_size=2, max_wait_s=0.0)
        await batcher.start()
        try:
            flood = [asyncio.create_task(batcher.submit(["lot-1a", "lot-1b"], key="dpi"))]
            await asyncio.sleep(0.05)  # being scored
            flood += [
                asyncio.create_task(batcher.submit([f"lot-{i}a", f"lot-{i}b"], key="dpi"))
                for i in (2, 3, 4)
            ]
            await asyncio.sleep(0.01)
            probe = asyncio.create_task(batcher.submit(["HTA"], key="urgences"))
            await asyncio.sleep(0.01)
            gate.set()
            await asyncio.gather(probe, *flood)
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    # The one-report request is scored after lot-2 (first in the queue), then it is urgences'
    # turn: not behind the whole flood, as first-come-first-served would leave it; and on its
    # own, since adding lot-3 would pass max_size.
    assert calls == [
        ["lot-1a", "lot-1b"],
        ["lot-2a", "lot-2b"],
        ["HTA"],
        ["lot-3a", "lot-3b"],
        ["lot-4a", "lot-4b"],
    ]
