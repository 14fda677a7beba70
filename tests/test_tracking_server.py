"""Against a real `mlflow server` process on loopback (SQLite backend, served artefacts)."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow_server import MlflowServer
from test_tracking import make_run_dir

from cimcoder.inference.mlflow_model import register_run_model
from cimcoder.training.tracking import RunTracker, load_run_dir_from_uri

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as srv:
        yield srv


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("CIMCODER_MLFLOW_DIR", str(tmp_path / "fallback"))
    monkeypatch.chdir(tmp_path)


def test_run_registration_and_champion_through_the_server(
    server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.tracking import MlflowClient

    run_dir = make_run_dir(tmp_path, metric=0.37)
    with RunTracker.start("codiesp-fr", "tfidf-notes", tracking_uri=server.uri) as tracker:
        assert not tracker.fell_back
        tracker.log_params({"model": {"name": "tfidf_lr"}, "training": {"seed": 13}})
        tracker.log_metrics({"map": 0.37, "micro_f1": 0.5}, step=0)
        registered = register_run_model(run_dir, tracker, name="cimcoder-srv", promote=True)
    assert registered.promoted

    client = MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.name"] == "tfidf_lr"
    assert run.data.metrics["map"] == 0.37
    champion = client.get_model_version_by_alias("cimcoder-srv", "champion")
    assert str(champion.version) == registered.version
    assert champion.tags["cimcoder.map"] == "0.37"
    # The artefacts went through the server (--serve-artifacts), not to a local path.
    assert (server.root / "server-artifacts").is_dir()
    assert any((server.root / "server-artifacts").rglob("baseline.joblib"))

    local = load_run_dir_from_uri(
        "models:/cimcoder-srv@champion", dst=tmp_path / "download", tracking_uri=server.uri
    )
    assert (local / "config.yaml").is_file()
    assert json.loads((local / "metrics.json").read_text())["map"] == 0.37

    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    model = mlflow.pyfunc.load_model("models:/cimcoder-srv@champion")
    out = model.predict(pd.DataFrame({"text": ["Diabète de type 2 sous metformine."]}))
    assert json.loads(out["codes"].iloc[0])[0] == "E11.9"


def test_server_dying_mid_run_keeps_the_run_locally(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow.tracking import MlflowClient

    # Fail fast once the server is gone instead of MLflow's minutes of retries.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    caplog.set_level(logging.WARNING, logger="cimcoder.training.tracking")
    with MlflowServer(tmp_path / "short-lived") as short_lived:
        tracker = RunTracker.start("codiesp-fr", "epoch-run", tracking_uri=short_lived.uri)
        tracker.log_params({"training": {"lr": 5e-5}})
        tracker.log_metrics({"map": 0.10}, step=0)
    # The server is stopped here; training goes on.
    tracker.log_metrics({"map": 0.20}, step=1)
    tracker.end()
    assert tracker.fell_back
    assert tracker.tracking_uri == f"sqlite:///{tmp_path / 'fallback' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    history = sorted(client.get_metric_history(tracker.run_id, "map"), key=lambda m: m.step)
    assert [(m.step, m.value) for m in history] == [(0, 0.10), (1, 0.20)]
    assert client.get_run(tracker.run_id).data.params["training.lr"] == "5e-05"
    assert any("kept in the local store" in r.getMessage() for r in caplog.records)
