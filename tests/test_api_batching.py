"""Micro-batching: concurrent requests share one model call, answers go back to their caller."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cimcoder.serving.batching import MicroBatcher


def test_concurrent_requests_are_batched_and_routed_back() -> None:
    calls: list[list[str]] = []
    gate = threading.Event()

    def predict(items: list[str]) -> list[str]:
        calls.append(list(items))
        gate.wait(5)  # the first call holds the worker so that the others queue up
        return [f"codé:{item}" for item in items]

    async def scenario() -> list[list[str]]:
        batcher: MicroBatcher[str, str] = MicroBatcher(predict, max_size=8, max_wait_s=0.05)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(["HTA"]))
            await asyncio.sleep(0.1)
            rest = [
                asyncio.create_task(batcher.submit([f"crh-{i}a", f"crh-{i}b"])) for i in range(3)
            ]
            await asyncio.sleep(0.05)
            gate.set()
            return [await first] + [await task for task in rest]
        finally:
            await batcher.stop()

    results = asyncio.run(scenario())
    assert results[0] == ["codé:HTA"]
    assert results[1:] == [[f"codé:crh-{i}a", f"codé:crh-{i}b"] for i in range(3)]
    assert calls[0] == ["HTA"]
    assert calls[1] == [f"crh-{i}{s}" for i in range(3) for s in "ab"]  # one call for all three


def test_one_failing_request_does_not_fail_its_neighbours() -> None:
    def predict(items: list[str]) -> list[str]:
        if any(not item.strip() for item in items):
            raise ValueError("empty report")
        return [item.upper() for item in items]

    async def scenario() -> tuple[object, ...]:
        batcher: MicroBatcher[str, str] = MicroBatcher(predict, max_size=8, max_wait_s=0.05)
        await batcher.start()
        try:
            return tuple(
                await asyncio.gather(
                    batcher.submit(["insuffisance cardiaque"]),
                    batcher.submit(["  "]),
                    batcher.submit(["diabète"]),
                    return_exceptions=True,
                )
            )
        finally:
            await batcher.stop()

    good, bad, other = asyncio.run(scenario())
    assert good == ["INSUFFISANCE CARDIAQUE"]
    assert other == ["DIABÈTE"]
    assert isinstance(bad, ValueError)


def test_submit_before_start_is_refused() -> None:
    batcher: MicroBatcher[str, str] = MicroBatcher(lambda items: items)
    with pytest.raises(RuntimeError, match="not running"):
        asyncio.run(batcher.submit(["HTA"]))
