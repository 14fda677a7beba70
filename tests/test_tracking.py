"""MLflow tracking against temporary local stores: logging, fallback, registration, pyfunc."""

from __future__ import annotations

import json
import logging
import socket
from pathlib import Path

import pytest

from cimcoder.inference.mlflow_model import register_run_model
from cimcoder.training.tracking import (
    RunTracker,
    TrackingError,
    flatten_params,
    load_run_dir_from_uri,
    local_tracking_uri,
    read_run_metric,
    resolve_tracking_uri,
)

NOTES = [
    ("Pneumopathie franche lobaire aiguë à pneumocoque.", ["J13"]),
    ("Pneumopathie à pneumocoque, antigénurie positive.", ["J13"]),
    ("Foyer de pneumopathie à pneumocoque traité par amoxicilline.", ["J13"]),
    ("Diabète de type 2 sous metformine, HbA1c à 8 %.", ["E11.9"]),
    ("Diabète de type 2 non insulinotraité.", ["E11.9"]),
    ("Suivi d'un diabète de type 2 ancien.", ["E11.9"]),
    ("Hypertension artérielle essentielle sous amlodipine.", ["I10"]),
    ("HTA essentielle ancienne, bien contrôlée.", ["I10"]),
    ("Hypertension artérielle mal équilibrée.", ["I10"]),
]


@pytest.fixture(autouse=True)
def _isolated_mlflow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never touch ./mlflow.db or ./mlruns of the repository."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setenv("CIMCODER_MLFLOW_DIR", str(tmp_path / "default-store"))
    monkeypatch.chdir(tmp_path)


def make_run_dir(root: Path, metric: float | None) -> Path:
    """A real (tiny) tfidf_lr run folder, with metrics.json holding `metric` as MAP."""
    from cimcoder.training.baselines import TfidfLrParams, TfidfLrScorer
    from cimcoder.training.config import dump_config, load_config
    from cimcoder.training.labels import LabelSpace

    run_dir = root / "runs" / "notes" / "tfidf"
    space = LabelSpace.from_code_sets([c for _, c in NOTES])
    model = TfidfLrScorer(space, TfidfLrParams(min_df=1, max_word_features=500, max_char_features=500))
    model.fit([t for t, _ in NOTES], [c for _, c in NOTES])
    model.save(run_dir)
    dump_config(load_config(None, ["model.name=tfidf_lr", "model.params.min_df=1"]), run_dir / "config.yaml")
    if metric is not None:
        (run_dir / "metrics.json").write_text(json.dumps({"map": metric, "micro_f1": 0.5}))
    return run_dir


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # released on exit: nothing listens there


def test_default_store_is_sqlite_in_the_configured_folder(tmp_path: Path) -> None:
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'default-store' / 'mlflow.db'}"
    assert resolve_tracking_uri("http://mlflow.chu.local:5000") == "http://mlflow.chu.local:5000"


def test_env_tracking_uri_is_honoured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'env.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    with RunTracker.start("codiesp-fr", "env-run") as tracker:
        assert tracker.tracking_uri == uri
    assert (tmp_path / "env.db").is_file()


def test_flatten_params_dots_nested_keys_and_truncates() -> None:
    flat = flatten_params(
        {"training": {"lr": 3e-5, "seed": 13}, "data": {"labels": {"min_count": 1}},
         "model": {"params": {}}, "note": "x" * 2000, "codes": ["I10", "E11.9"]}
    )
    assert flat["training.lr"] == "3e-05"
    assert flat["data.labels.min_count"] == "1"
    assert flat["model.params"] == "{}"
    assert flat["codes"] == '["I10", "E11.9"]'
    assert len(flat["note"]) == 500 and flat["note"].endswith("...")


def test_credentials_are_hidden_in_printed_uris() -> None:
    from cimcoder.training.tracking import redact_uri

    assert redact_uri("https://dim:s3cret@mlflow.chu.fr/api") == "https://***@mlflow.chu.fr/api"
    # A password holding "@" must not leak its tail; an "@" in the path is not a password.
    assert redact_uri("http://dim:p@ss@mlflow:5000") == "http://***@mlflow:5000"
    assert redact_uri("http://mlflow:5000/runs/a@b") == "http://mlflow:5000/runs/a@b"
    assert redact_uri("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_tracker_logs_params_metrics_and_artefacts(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = local_tracking_uri(tmp_path / "store")
    report = tmp_path / "report"
    report.mkdir()
    (report / "evaluation.md").write_text("| code | F1 |\n| I10 | 0.8 |\n", encoding="utf-8")
    with RunTracker.start("codiesp-fr", "plm-mini", tracking_uri=uri, tags={"dataset": "codiesp-fr"}) as t:
        t.log_params({"training": {"lr": 5e-5, "epochs": 3}, "model": {"name": "plm_icd"}})
        for epoch, value in enumerate([0.21, 0.34, 0.41]):
            t.log_metrics({"dev": {"map": value}, "train_loss": 1.0 / (epoch + 1)}, step=epoch)
        t.log_artifacts(report, "evaluation")
        t.log_dict({"codes": ["I10", "J13"]}, "labels.json")
        run_id = t.run_id
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "plm-mini"
    assert run.data.params["training.lr"] == "5e-05"
    assert run.data.params["model.name"] == "plm_icd"
    assert run.data.tags["dataset"] == "codiesp-fr"
    history = client.get_metric_history(run_id, "dev.map")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 0.21), (1, 0.34), (2, 0.41)
    ]
    names = {a.path for a in client.list_artifacts(run_id)}
    assert {"evaluation", "labels.json"} <= names
    local = Path(client.download_artifacts(run_id, "evaluation/evaluation.md", str(tmp_path / "dl")))
    assert "I10" in local.read_text(encoding="utf-8")
    experiment = client.get_experiment(t.experiment_id)
    assert experiment.name == "codiesp-fr"
    # Artefacts live beside the database, not in ./mlruns of the working directory.
    assert experiment.artifact_location.startswith((tmp_path / "store" / "mlartifacts").as_uri())
    assert not (tmp_path / "mlruns").exists()


def test_failed_training_marks_the_run_failed(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = local_tracking_uri(tmp_path / "store")
    with pytest.raises(RuntimeError), RunTracker.start("codiesp-fr", "crash", tracking_uri=uri) as t:
        raise RuntimeError("CUDA out of memory")
    assert MlflowClient(tracking_uri=uri).get_run(t.run_id).info.status == "FAILED"


def test_unreachable_server_falls_back_to_the_local_store(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow.tracking import MlflowClient

    dead = f"http://127.0.0.1:{closed_port()}"
    caplog.set_level(logging.WARNING, logger="cimcoder.training.tracking")
    with RunTracker.start(
        "codiesp-fr", "offline", tracking_uri=dead, fallback_dir=tmp_path / "offline"
    ) as t:
        t.log_params({"training": {"lr": 5e-5}})
        t.log_metrics({"map": 0.3}, step=1)
    assert t.fell_back
    db = tmp_path / "offline" / "mlflow.db"
    assert t.tracking_uri == f"sqlite:///{db}"
    assert db.is_file()
    warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "unreachable" in warning
    assert str(db) in warning
    assert "mlflow ui --backend-store-uri" in warning
    run = MlflowClient(tracking_uri=t.tracking_uri).get_run(t.run_id)
    assert run.data.metrics["map"] == 0.3
    assert run.data.tags["cimcoder.tracking_fallback"] == "true"


def test_local_store_that_cannot_be_written_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(TrackingError, match="cannot start an MLflow run"):
        RunTracker.start("codiesp-fr", tracking_uri=f"sqlite:///{blocker / 'mlflow.db'}")


def test_read_run_metric_finds_flat_and_nested_values(tmp_path: Path) -> None:
    (tmp_path / "metrics.json").write_text(json.dumps({"dev": {"map": 0.42, "micro_f1": 0.3}}))
    assert read_run_metric(tmp_path, "map") == 0.42
    (tmp_path / "metrics.json").write_text(json.dumps({"map": 0.5}))
    assert read_run_metric(tmp_path, "map") == 0.5
    assert read_run_metric(tmp_path / "nowhere", "map") is None


@pytest.mark.slow
def test_register_promotes_only_a_better_model_and_loads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc
    from mlflow.tracking import MlflowClient

    uri = local_tracking_uri(tmp_path / "store")
    run_dir = make_run_dir(tmp_path / "a", metric=0.40)
    with RunTracker.start("notes", "first", tracking_uri=uri) as t1:
        first = register_run_model(run_dir, t1, name="cimcoder-test")
    assert first.promoted and first.version == "1"

    worse = make_run_dir(tmp_path / "b", metric=0.30)
    with RunTracker.start("notes", "second", tracking_uri=uri) as t2:
        second = register_run_model(worse, t2, name="cimcoder-test")
    assert not second.promoted

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(client.get_model_version_by_alias("cimcoder-test", "champion").version) == "1"
    assert client.get_run(t1.run_id).info.status == "FINISHED"
    assert "run/metrics.json" in {a.path for a in client.list_artifacts(t1.run_id, "run")}

    local = load_run_dir_from_uri("models:/cimcoder-test@champion", dst=tmp_path / "dl", tracking_uri=uri)
    assert json.loads((local / "metrics.json").read_text())["map"] == 0.40
    assert (local / "baseline.joblib").is_file()

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model("models:/cimcoder-test@champion")
    import pandas as pd

    out = model.predict(pd.DataFrame({"text": ["Pneumopathie lobaire à pneumocoque."]}))
    codes = json.loads(out["codes"].iloc[0])
    assert codes[0] == "J13"
    prediction = json.loads(out["prediction"].iloc[0])
    assert prediction["codes"][0]["code"] == "J13"
    assert prediction["model"]["calibrated"] is False


def test_load_run_dir_from_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    uri = local_tracking_uri(tmp_path / "store")
    with pytest.raises(TrackingError, match="cannot load model models:/absent@champion"):
        load_run_dir_from_uri("models:/absent@champion", tracking_uri=uri)


def test_pyfunc_rejects_input_without_text() -> None:
    import pandas as pd

    from cimcoder.inference.mlflow_model import ModelInputError, texts_from_input

    assert texts_from_input(pd.DataFrame({"text": ["HTA."]})) == ["HTA."]
    assert texts_from_input(["HTA.", "Diabète."]) == ["HTA.", "Diabète."]
    with pytest.raises(ModelInputError, match="'text' column"):
        texts_from_input(pd.DataFrame({"id": [1], "report": ["HTA"]}))
    with pytest.raises(ModelInputError, match="must be a string"):
        texts_from_input([None])


def test_param_logged_twice_with_another_value_keeps_the_first(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    uri = local_tracking_uri(tmp_path / "store")
    with RunTracker.start("codiesp-fr", "twice", tracking_uri=uri) as t:
        t.log_params({"training": {"lr": 5e-5}})
        t.log_params({"training": {"lr": 1e-4, "seed": 13}})
    params = MlflowClient(tracking_uri=uri).get_run(t.run_id).data.params
    assert params["training.lr"] == "5e-05"
    assert params["training.seed"] == "13"
