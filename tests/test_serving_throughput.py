"""What keeps the service at the model's pace: the batching window, the scorer's busy time in
/metrics, and `cimcoder serve --workers N` (one model per worker).

Functional checks only: the speed itself is measured by benchmarks/bench_serving.py.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import httpx
import pytest

from cimcoder.serving.batching import MicroBatcher

KEY = "Vt9q2LxR7mKp4sWz8bNc"
HEART = (
    "Patient de 79 ans hospitalisé pour insuffisance cardiaque congestive décompensée. "
    "Hypertension artérielle essentielle traitée."
)

# --- the batching window --------------------------------------------------------------------


def test_reports_reaching_an_idle_scorer_share_one_call() -> None:
    calls: list[list[str]] = []

    def predict(items: list[str]) -> list[str]:
        calls.append(list(items))
        return [item.upper() for item in items]

    async def scenario() -> list[list[str]]:
        batcher: MicroBatcher[str, str] = MicroBatcher(predict, max_size=2, max_wait_s=10.0)
        await batcher.start()
        try:
            first = asyncio.create_task(batcher.submit(["pneumopathie"]))
            await asyncio.sleep(0.05)  # the first waits in the window for a neighbour
            second = asyncio.create_task(batcher.submit(["sepsis"]))
            return [await first, await second]
        finally:
            await batcher.stop()

    assert asyncio.run(scenario()) == [["PNEUMOPATHIE"], ["SEPSIS"]]
    assert calls == [["pneumopathie", "sepsis"]]


def test_each_model_call_reports_its_size_and_scoring_time() -> None:
    seen: list[tuple[int, float]] = []

    async def scenario() -> None:
        batcher: MicroBatcher[str, str] = MicroBatcher(
            lambda items: items, max_wait_s=0.0, on_batch=lambda n, s: seen.append((n, s))
        )
        await batcher.start()
        try:
            await batcher.submit(["hta", "diabète", "bpco"])
        finally:
            await batcher.stop()

    asyncio.run(scenario())
    assert len(seen) == 1
    assert seen[0][0] == 3
    assert seen[0][1] >= 0.0


def test_metrics_show_the_scorer_busy_time(predictor: Any, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from cimcoder.serving.app import create_app
    from cimcoder.serving.settings import Settings

    settings = Settings(model=None, api_keys=[f"dpi:{KEY}"], state_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    with TestClient(create_app(settings, predictor=predictor)) as client:
        response = client.post("/v1/code", json={"text": HEART}, headers={"X-API-Key": KEY})
        assert response.status_code == 200
        assert response.json()["codes"]
        metrics = client.get("/metrics").text
    assert "cimcoder_batch_seconds_count 1.0" in metrics
    assert "cimcoder_batch_size_count 1.0" in metrics
    # Thirty-odd codes an answer, counted by decision in a few increments.
    decided = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("cimcoder_codes_total{")
    )
    assert decided == len(response.json()["codes"])


# --- workers --------------------------------------------------------------------------------


def _serve(argv: list[str]) -> int:
    from cimcoder.cli import main

    return main(["serve", *argv])


_WORKER_ENV = ("CIMCODER_MODEL", "CIMCODER_WORKERS", "CIMCODER_SESSION_SECRET", "CIMCODER_HOST")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in _WORKER_ENV:  # set then deleted: restored to absent after the test
        monkeypatch.setenv(name, "x")
        monkeypatch.delenv(name)
    monkeypatch.setenv("CIMCODER_API_KEYS", f"dpi:{KEY}")
    monkeypatch.setenv("CIMCODER_STATE_DIR", str(tmp_path))
    return monkeypatch


class _FakeSupervisor:
    started: ClassVar[list[tuple[Any, dict[str, str]]]] = []

    def __init__(self, config: Any, sockets: list[Any]) -> None:
        self.config = config
        self.processes: list[Any] = []
        for sock in sockets:
            sock.close()

    def run(self) -> None:
        _FakeSupervisor.started.append((self.config, dict(os.environ)))


def test_serve_with_workers_hands_the_options_to_every_worker(
    clean_env: pytest.MonkeyPatch, tiny_run: Path
) -> None:
    import uvicorn.supervisors

    clean_env.setattr(uvicorn.supervisors, "Multiprocess", _FakeSupervisor)
    _FakeSupervisor.started.clear()
    assert _serve(["--model", str(tiny_run), "--workers", "3", "--port", str(_free_port())]) == 0
    [(config, env)] = _FakeSupervisor.started
    assert config.workers == 3
    assert config.factory is True
    assert config.app == "cimcoder.serving.app:create_app"
    assert env["CIMCODER_MODEL"] == str(tiny_run)
    assert env["CIMCODER_WORKERS"] == "3"
    # One review-session secret for all the workers, drawn once.
    assert len(env["CIMCODER_SESSION_SECRET"]) >= 16


def test_a_configured_session_secret_is_kept_for_the_workers(
    clean_env: pytest.MonkeyPatch, tiny_run: Path
) -> None:
    import uvicorn.supervisors

    clean_env.setattr(uvicorn.supervisors, "Multiprocess", _FakeSupervisor)
    clean_env.setenv("CIMCODER_SESSION_SECRET", "Zq8vR3mT6wY1pK4sLx9n")
    clean_env.setenv("CIMCODER_WORKERS", "2")
    _FakeSupervisor.started.clear()
    assert _serve(["--model", str(tiny_run), "--port", str(_free_port())]) == 0
    [(config, env)] = _FakeSupervisor.started
    assert config.workers == 2
    assert env["CIMCODER_SESSION_SECRET"] == "Zq8vR3mT6wY1pK4sLx9n"


def test_workers_must_be_at_least_one(clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert _serve(["--workers", "0", "--port", str(_free_port())]) == 2
    assert "CIMCODER_WORKERS" in capsys.readouterr().err


def test_workers_refuse_a_model_folder_that_does_not_exist(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _serve(["--model", str(tmp_path / "no-such-run"), "--workers", "2", "--port", str(_free_port())]) != 0
    assert "no-such-run" in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def two_workers(tiny_run: Path, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = _free_port()
    env = {
        **os.environ,
        "CIMCODER_API_KEYS": f"dpi:{KEY}",
        "CIMCODER_STATE_DIR": str(tmp_path),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("CIMCODER_AUTH_DISABLED", None)
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "cimcoder.cli", "serve", "--model", str(tiny_run),
             "--workers", "2", "--port", str(port)],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(base + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log_path.read_text()[-3000:])
            time.sleep(0.3)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and b"resource_tracker" not in (stat.parent / "cmdline").read_bytes():
            out.append(int(stat.parent.name))
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads the worker processes from /proc")
def test_two_workers_each_load_the_model_and_answer(
    two_workers: tuple[str, subprocess.Popen[bytes]],
) -> None:
    base, proc = two_workers
    with httpx.Client(base_url=base, headers={"X-API-Key": KEY}, timeout=60) as client:
        answers = [client.post("/v1/code", json={"text": HEART}) for _ in range(6)]
    assert [a.status_code for a in answers] == [200] * 6
    codes = [[c["code"] for c in a.json()["codes"]] for a in answers]
    assert codes[0] and all(c == codes[0] for c in codes)  # the same model in every worker
    assert len(_children(proc.pid)) == 2
