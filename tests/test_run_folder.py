"""`RunFolder`: one home for a run folder's file names, paths and atomic JSON writes."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from cimcoder import run_folder
from cimcoder.run_folder import (
    CONFIG_FILE,
    LABELS_FILE,
    METRICS_FILE,
    POLICY_FILE,
    RunFolder,
    write_json_atomic,
)


def test_paths_are_named_once(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    assert run.config == tmp_path / "config.yaml"
    assert run.labels == tmp_path / "labels.json"
    assert run.metrics == tmp_path / "metrics.json"
    assert run.policy == tmp_path / "policy.json"
    assert run.checkpoints == tmp_path / "checkpoints"
    assert run.eval_dir == tmp_path / "eval"
    assert run / "head.safetensors" == tmp_path / "head.safetensors"
    assert RunFolder(str(tmp_path)).path == tmp_path  # a str is taken too


def test_is_run_and_has_follow_the_files(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    assert not run.is_run() and not run.has(POLICY_FILE)
    run.config.write_text("model:\n  name: tfidf_lr\n", encoding="utf-8")
    run.write_json(POLICY_FILE, {"format": 2})
    assert run.is_run() and run.has(POLICY_FILE)
    (tmp_path / LABELS_FILE).mkdir()  # a folder is not the file
    assert not run.has(LABELS_FILE)


def test_write_then_read_round_trips_french_text(tmp_path: Path) -> None:
    run = RunFolder(tmp_path / "runs" / "codiesp-fr" / "tfidf_lr")  # made on first write
    data = {"crosswalk": ["I50.0 « insuffisance cardiaque congestive » -> I50.0"],
            "map": 0.5, "best_epoch": 3, "history": [{"epoch": 1, "dev_loss": None}]}
    path = run.write_json(METRICS_FILE, data)
    assert path == run.metrics
    assert run.read_json(METRICS_FILE) == data
    # The bytes the trainer, the label space and the policy wrote before: UTF-8, indent 1.
    text = path.read_text(encoding="utf-8")
    assert text == json.dumps(data, ensure_ascii=False, indent=1)
    assert "« insuffisance cardiaque congestive »" in text


def test_atomic_write_leaves_no_temporary_file(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / METRICS_FILE, {"map": 0.4})
    write_json_atomic(tmp_path / METRICS_FILE, {"map": 0.5})  # replaces
    assert [p.name for p in tmp_path.iterdir()] == [METRICS_FILE]
    assert json.loads((tmp_path / METRICS_FILE).read_text(encoding="utf-8")) == {"map": 0.5}


def test_unserialisable_data_keeps_the_old_file_whole(tmp_path: Path) -> None:
    run = RunFolder(tmp_path)
    run.write_json(METRICS_FILE, {"map": 0.4})
    with pytest.raises(TypeError):
        run.write_json(METRICS_FILE, {"map": 0.5, "scorer": object()})
    assert run.read_json(METRICS_FILE) == {"map": 0.4}
    assert [p.name for p in tmp_path.iterdir()] == [METRICS_FILE]


def test_a_write_failing_midway_keeps_the_old_file_and_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    run = RunFolder(tmp_path)
    run.write_json(POLICY_FILE, {"format": 2, "labels": ["I10"]})
    real_write_text = Path.write_text

    def disk_full(self: Path, text: str, *args: object, **kwargs: object) -> int:
        real_write_text(self, text[: len(text) // 2], encoding="utf-8")  # half of it landed
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError, match="No space left"):
        run.write_json(POLICY_FILE, {"format": 2, "labels": ["I10", "J13"]})
    monkeypatch.undo()
    assert run.read_json(POLICY_FILE) == {"format": 2, "labels": ["I10"]}
    assert [p.name for p in tmp_path.iterdir()] == [POLICY_FILE]


def test_every_area_uses_the_same_names() -> None:
    from cimcoder.eval import policy
    from cimcoder.inference import mlflow_model, predictor
    from cimcoder.serving.review import monitoring
    from cimcoder.training import baselines, config, labels, tracking, trainer
    from cimcoder.training.models import plm_icd

    assert trainer.METRICS_FILE is baselines.METRICS_FILE is run_folder.METRICS_FILE
    assert predictor.LABELS_FILE is labels.LABELS_FILE is monitoring.LABELS_FILE is LABELS_FILE
    assert predictor.POLICY_FILE is policy.POLICY_FILE is mlflow_model.POLICY_FILE is POLICY_FILE
    assert plm_icd.CONFIG_FILE is config.CONFIG_FILE is tracking.CONFIG_FILE is CONFIG_FILE
    assert trainer.CHECKPOINT_DIR is run_folder.CHECKPOINT_DIR
    assert tracking.RUN_SUMMARY_FILES == (CONFIG_FILE, LABELS_FILE, METRICS_FILE, POLICY_FILE)


def test_no_module_spells_a_run_folder_file_name_itself() -> None:
    """Messages and docstrings may cite `labels.json`; code names the file from `run_folder`."""
    root = Path(__file__).resolve().parents[1]
    names = set(run_folder.SUMMARY_FILES)
    spelled = {}
    for folder in ("cimcoder", "terminologies", "training", "eval", "inference", "serving", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            if path.name == "run_folder.py":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            found = sorted({node.value for node in ast.walk(tree)
                            if isinstance(node, ast.Constant) and node.value in names})
            if found:
                spelled[str(path.relative_to(root))] = found
    assert spelled == {}
