"""The top-level job, as a data scientist runs it: `cimcoder run` trains, calibrates,
evaluates and registers a model; `cimcoder promote` only moves `champion` to a challenger
that beats it on the same stays. Real MLflow store (temporary), real models (the TF-IDF
baseline, fast enough for a test), synthetic French stays."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from cimcoder.cli import main
from cimcoder.eval.report import read_report
from cimcoder.training.tracking import load_run_dir_from_uri, local_tracking_uri

pytestmark = pytest.mark.slow


def _config(tmp: Path, name: str, **data: object) -> Path:
    config = {
        "data": {"train": "synth-fr/160@1", "dev": "synth-fr/120@2", "validation": "dev", **data},
        "model": {
            "name": "tfidf_lr",
            "params": {"max_char_features": 0, "max_word_features": 5000, "max_iter": 100},
        },
        "tracking": {"experiment": "synth-fr", "run_name": name},
        "output_dir": str(tmp / "runs"),
    }
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture()
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIMCODER_MLFLOW_DIR", str(tmp_path / "mlflow"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def test_run_trains_calibrates_evaluates_and_registers_champion(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(_config(workdir, "champion")), "--target-precision", "0.9"]) == 0
    out = capsys.readouterr().out

    run_dir = workdir / "runs" / "synth-fr" / "champion"
    policy = json.loads((run_dir / "policy.json").read_text(encoding="utf-8"))
    assert policy["target_precision"] == 0.9
    reports = list((run_dir / "eval").glob("*/*.json"))
    assert reports, "the evaluation report (JSON twin) is written into the run folder"
    assert list((run_dir / "eval").glob("*/*.html"))
    report = read_report(reports[0])
    # Fitted on the whole dev set; each stay measured by the fold policy fitted without it.
    assert report.dataset == policy["fitted_on"]["data"] and policy["fitted_on"]["folds"] == 5
    assert any("validation croisée à 5 plis" in n for n in report.notes)
    # Synthetic stays name their diagnoses plainly: a working model ranks well; a broken one
    # (random scores over ~100 codes) stays far below.
    assert report.metrics.map > 0.5
    assert "| champion |" in out and "MAP" in out

    local = load_run_dir_from_uri(
        "models:/cimcoder@champion",
        dst=workdir / "download",
        tracking_uri=local_tracking_uri(workdir / "mlflow"),
    )
    assert (local / "policy.json").is_file()
    assert json.loads((local / "labels.json").read_text(encoding="utf-8"))["codes"]


def test_promote_keeps_champion_against_a_weaker_challenger(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(_config(workdir, "champion"))]) == 0
    uri = local_tracking_uri(workdir / "mlflow")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion_version = client.get_model_version_by_alias("cimcoder", "champion").version

    # A challenger that saw only 12 stays cannot beat the champion on the same dev half.
    weak = _config(workdir, "weak", max_train_stays=12)
    assert main(["train", str(weak)]) == 0
    assert main(["calibrate", str(workdir / "runs" / "synth-fr" / "weak")]) == 0
    capsys.readouterr()
    rc = main(["promote", str(workdir / "runs" / "synth-fr" / "weak"), "--data", "synth-fr/120@2#B"])
    out = capsys.readouterr().out
    assert rc == 1, out
    assert "not promoted" in out
    assert client.get_model_version_by_alias("cimcoder", "champion").version == champion_version

    # The DIM may still force it (e.g. a terminology change); the alias then moves.
    assert main(["promote", str(workdir / "runs" / "synth-fr" / "weak"),
                 "--data", "synth-fr/120@2#B", "--force"]) == 0
    assert client.get_model_version_by_alias("cimcoder", "champion").version != champion_version


def test_unknown_config_key_is_a_clear_error(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(workdir, "typo")
    assert main(["train", str(path), "training.learning_rate=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "learning_rate" in err and "Traceback" not in err


def test_cimcoder_train_logs_a_tiny_transformer_to_a_real_mlflow_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient
    from mlflow_server import MlflowServer
    from test_training_helpers import build_tiny_encoder, clinical_notes, write_text_folder

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CIMCODER_MLFLOW_DIR", str(tmp_path / "fallback"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    build_tiny_encoder(tmp_path / "encoder")
    write_text_folder(tmp_path / "train", clinical_notes(40, seed=2), "sejour")
    write_text_folder(tmp_path / "dev", clinical_notes(16, seed=3), "dev")
    config = {
        "data": {"train": str(tmp_path / "train"), "dev": str(tmp_path / "dev")},
        "model": {
            "name": "plm_icd",
            "encoder": str(tmp_path / "encoder"),
            "chunking": {"max_chunk_tokens": 32, "max_chunks": 4},
        },
        "training": {"epochs": 2, "lr": 1e-3, "head_lr": 1e-2, "num_threads": 1},
        "tracking": {"experiment": "tiny", "run_name": "plm-tiny"},
        "output_dir": str(tmp_path / "runs"),
    }
    path = tmp_path / "plm-tiny.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")

    with MlflowServer(tmp_path / "server") as server:
        assert main(["train", str(path), f"tracking.tracking_uri={server.uri}"]) == 0
        client = MlflowClient(tracking_uri=server.uri)
        experiment = client.get_experiment_by_name("tiny")
        assert experiment is not None
        (run,) = client.search_runs([experiment.experiment_id])
        assert run.info.status == "FINISHED"
        assert run.data.params["model.name"] == "plm_icd"
        assert run.data.params["training.epochs"] == "2"
        # One validation figure per epoch reached the server.
        assert any(len(client.get_metric_history(run.info.run_id, k)) >= 2
                   for k in run.data.metrics)
        # The run folder (weights, labels, config) went through the server's artefact store.
        assert any((tmp_path / "server").rglob("head.safetensors"))
        assert any((tmp_path / "server").rglob("labels.json"))
    assert not (tmp_path / "fallback" / "mlflow.db").exists(), "the server was up: no fallback"


def test_missing_default_encoder_is_pretrained_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make demo` on a fresh machine: the config names the offline encoder, which does not
    exist yet, so `cimcoder run` builds it first (here with a tiny pretraining config)."""
    from test_training_pretrain import TINY

    import cimcoder.pipeline as pipeline
    from cimcoder.training.config import DEFAULT_ENCODER

    monkeypatch.chdir(tmp_path)
    tiny = tmp_path / "tiny-pretrain.yaml"
    tiny.write_text(
        yaml.safe_dump({"corpus": {"synthetic_reports": 40}}), encoding="utf-8"
    )
    monkeypatch.setattr(pipeline, "DEFAULT_PRETRAIN_CONFIG", tiny)
    monkeypatch.setattr(pipeline, "PRETRAIN_OVERRIDES", tuple(o for o in TINY if "synthetic" not in o))
    pipeline.ensure_encoder(DEFAULT_ENCODER)
    assert (tmp_path / DEFAULT_ENCODER / "config.json").is_file()
    assert (tmp_path / DEFAULT_ENCODER / "tokenizer.json").is_file()


def test_missing_user_encoder_is_a_clear_error(tmp_path: Path) -> None:
    from cimcoder.errors import CimcoderError
    from cimcoder.pipeline import ensure_encoder

    with pytest.raises(CimcoderError, match="camembert-bio"):
        ensure_encoder(str(tmp_path / "camembert-bio-base"))
