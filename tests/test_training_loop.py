"""Training loop on a tiny French corpus: it learns, stops early, checkpoints and resumes."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from test_training_helpers import build_tiny_encoder, clinical_notes, write_text_folder

from cimcoder.training import load_config, load_scorer, train
from cimcoder.training.data import prepare_data
from cimcoder.training.registry import build_model
from cimcoder.training.trainer import (
    TrainingError,
    TrainState,
    build_optimization,
    encode_data,
    load_checkpoint,
    optimizer_step,
    owned_global_state,
    save_checkpoint,
    train_one_epoch,
    validate,
)

PROBES = [
    "Pneumopathie franche lobaire aiguë à pneumocoque, antigénurie positive.",
    "HTA essentielle traitée par amlodipine.",
]


def ranking_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Micro ROC AUC: a gold code should outscore an absent one."""
    return float(roc_auc_score(y_true.ravel(), scores.ravel()))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("training")
    build_tiny_encoder(root / "encoder")  # the same on every build
    write_text_folder(root / "train", clinical_notes(40, seed=2), "sejour")
    write_text_folder(root / "dev", clinical_notes(16, seed=3), "dev")
    return root


def _config(root: Path, run_name: str, *overrides: str):
    return load_config(
        None,
        [
            f"model.encoder={root / 'encoder'}",
            f"data.train={root / 'train'}",
            f"data.dev={root / 'dev'}",
            f"output_dir={root / 'runs'}",
            f"tracking.run_name={run_name}",
            "tracking.experiment=tiny",
            "model.chunking.max_chunk_tokens=32",
            "model.chunking.max_chunks=4",
            "training.lr=1e-3",
            "training.head_lr=1e-2",
            "training.batch_size=8",
            "training.num_threads=1",
            *overrides,
        ],
    )


class RecordingTracker:
    def __init__(self) -> None:
        self.params: dict = {}
        self.metrics: list[tuple[dict, int]] = []
        self.artifacts: list[str] = []

    def log_params(self, params: dict) -> None:
        self.params.update(params)

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.metrics.append((metrics, step))

    def log_artifacts(self, path: str) -> None:
        self.artifacts.append(path)


def test_tiny_model_learns_to_tell_pneumonia_from_hypertension(workspace: Path) -> None:
    tracker = RecordingTracker()
    cfg = _config(workspace, "learns", "training.epochs=8", "training.patience=8")
    run = train(cfg, validation_metric=ranking_auc, tracker=tracker)
    assert run == workspace / "runs" / "tiny" / "learns"
    for name in ("config.yaml", "labels.json", "head.safetensors", "metrics.json", "encoder/config.json"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["validation_metric"] == "ranking_auc"
    assert metrics["n_train"] == 40 and metrics["n_validation"] == 16
    # A model that learnt nothing ranks at chance (0.5); this one must rank well on dev.
    assert metrics["dev_metric"] >= 0.85
    assert metrics["history"][-1]["train_loss"] < metrics["history"][0]["train_loss"]
    assert tracker.params["training.lr"] == 1e-3
    assert len(tracker.metrics) == 8 and tracker.artifacts == [str(run)]

    scorer = load_scorer(run)
    assert set(scorer.labels) == {"J13", "I10", "E11.9", "N39.0"}
    scores = scorer.predict_scores(PROBES)
    j13, i10 = scorer.label_space.index("J13"), scorer.label_space.index("I10")
    assert scores[0, j13] > scores[0, i10]
    assert scores[1, i10] > scores[1, j13]


def test_training_does_not_depend_on_the_callers_rng_or_threads(workspace: Path) -> None:
    # train() seeds python/numpy/torch and sets the thread count from the config, then gives
    # the caller's back: what ran before (other tests, their seeds) cannot change its result.
    callers_threads = torch.get_num_threads()
    runs = []
    try:
        for name, seed, threads in (("global-a", 123, 1), ("global-b", 7, max(2, callers_threads))):
            random.seed(seed)
            np.random.seed(seed + 1)
            torch.manual_seed(seed + 2)
            torch.set_num_threads(threads)
            rng = torch.get_rng_state()
            runs.append(train(_config(workspace, name, "training.epochs=2")))
            assert torch.get_num_threads() == threads
            assert torch.equal(torch.get_rng_state(), rng)
            assert np.random.get_state()[1][0] == seed + 1
    finally:
        torch.set_num_threads(callers_threads)
    scores = [load_scorer(run).predict_scores(PROBES) for run in runs]
    if torch.cuda.is_available():  # CUDA backward kernels may use atomics: last bits can differ
        np.testing.assert_allclose(scores[0], scores[1], atol=1e-4)
        return
    history = [json.loads((run / "metrics.json").read_text())["history"] for run in runs]
    assert history[0] == history[1]
    np.testing.assert_array_equal(scores[0], scores[1])  # bit-identical


def test_interrupted_run_resumes_where_it_stopped(workspace: Path, caplog: pytest.LogCaptureFixture) -> None:
    # 40 stays / batch 8 = 5 steps per epoch; stop in the middle of epoch 1.
    run = train(_config(workspace, "resume", "training.epochs=2", "training.max_steps=3"))
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["global_step"] == 3 and state["epoch"] == 0 and state["batch_in_epoch"] == 3
    assert (run / "metrics.json").exists()  # a usable model even after a smoke run

    caplog.set_level(logging.INFO, logger="cimcoder.training.trainer")
    train(_config(workspace, "resume", "training.epochs=2"))
    assert "resuming" in caplog.text
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["global_step"] == 10 and state["epoch"] == 2
    assert [h["step"] for h in state["history"]] == [3, 5, 10]

    # Resuming gives the same weights as never stopping: same data order, RNG, optimizer.
    straight = train(_config(workspace, "straight", "training.epochs=2"))
    resumed_w = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]
    straight_w = torch.load(straight / "checkpoints" / "last.pt", weights_only=False)["model"]
    for key in ("head.queries", "head.outputs", "head.bias", "encoder.embeddings.word_embeddings.weight"):
        torch.testing.assert_close(resumed_w[key], straight_w[key], rtol=1e-5, atol=1e-6)


def test_crash_resumes_from_last_epoch_checkpoint(workspace: Path) -> None:
    calls = {"n": 0}

    def flaky_metric(y_true: np.ndarray, scores: np.ndarray) -> float:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("coupure de courant")
        return ranking_auc(y_true, scores)

    cfg = _config(workspace, "crash", "training.epochs=3")
    with pytest.raises(RuntimeError, match="coupure"):
        train(cfg, validation_metric=flaky_metric)
    state = json.loads((cfg.run_dir / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 1 and state["global_step"] == 5

    train(cfg, validation_metric=ranking_auc)
    state = json.loads((cfg.run_dir / "checkpoints" / "state.json").read_text())
    assert state["epoch"] == 3 and state["global_step"] == 15
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]


def test_changed_config_does_not_resume_silently(workspace: Path) -> None:
    train(_config(workspace, "changed", "training.epochs=1", "training.max_steps=2"))
    with pytest.raises(TrainingError, match=r"different config.*training\.lr"):
        train(_config(workspace, "changed", "training.epochs=1", "training.lr=5e-4"))
    # Asked to start over, it does.
    run = train(_config(workspace, "changed", "training.epochs=1", "training.lr=5e-4"), resume=False)
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["global_step"] == 5


def test_early_stopping_on_a_train_holdout(workspace: Path) -> None:
    cfg = _config(
        workspace, "holdout", "data.validation=train_holdout", "data.holdout_fraction=0.25",
        "training.epochs=30", "training.patience=1", "training.lr=1e-2", "training.head_lr=1e-1",
    )
    run = train(cfg)
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 < metrics["n_validation"] < 40 and metrics["n_train"] + metrics["n_validation"] == 40
    assert metrics["validation_metric"] == "dev_loss"
    assert metrics["stopped_early"] and metrics["epochs_run"] < 30


def test_cim11_label_space(workspace: Path) -> None:
    from cimcoder import terminologies

    cfg = _config(workspace, "cim11", "data.labels.terminology=cim11", "training.epochs=1")
    run = train(cfg)
    labels = json.loads((run / "labels.json").read_text())
    assert labels["terminology"] == "cim11"
    cim11 = terminologies.load_cim11()
    assert labels["codes"] and all(code in cim11 for code in labels["codes"])
    # J13 (pneumopathie à pneumocoque) maps to CIM-11 CA40.0 (pneumonie à Streptococcus pneumoniae).
    assert any(code.startswith("CA40") for code in labels["codes"])


# ------------------------------------------------------------------ the loop's steps


def _tiny_run(workspace: Path, *overrides: str):
    cfg = _config(workspace, "steps", *overrides)
    data = prepare_data(cfg)
    scorer = build_model(cfg, data.label_space)
    opt = build_optimization(scorer.net, cfg.training, len(data.train))
    return cfg, data, scorer, opt, encode_data(scorer, data, cfg, opt.device)


def test_checkpoint_round_trip_restores_the_state_and_what_it_trains(workspace: Path, tmp_path: Path) -> None:
    with owned_global_state(seed=13, num_threads=1):
        cfg, _, scorer, opt, encoded = _tiny_run(workspace)
        state = TrainState()
        # 40 stays / batch 8 = 5 batches: stop after 3, as training.max_steps=3 does.
        three_steps = cfg.training.model_copy(update={"max_steps": 3})
        assert not train_one_epoch(state, scorer, opt, encoded, three_steps)
        assert (state.epoch, state.batch_in_epoch, state.global_step, len(state.epoch_losses)) == (0, 3, 3, 3)
        state.history.append({"epoch": 1, "step": 3, "train_loss": 0.7, "dev_loss": 0.6, "partial_epoch": True})
        state.best_metric, state.best_epoch = -0.6, 1
        path = tmp_path / "checkpoints" / "last.pt"
        save_checkpoint(path, state, opt)
        assert json.loads((path.parent / "state.json").read_text()) == state.to_dict()

        # Straight on: the epoch's last two batches.
        assert train_one_epoch(state, scorer, opt, encoded, cfg.training)
        straight = {k: v.clone() for k, v in opt.net.state_dict().items()}

        # Another process: a fresh model (other initial weights), then the checkpoint.
        _, _, scorer2, opt2, encoded2 = _tiny_run(workspace)
        resumed = load_checkpoint(path, opt2)
        assert resumed == TrainState.from_dict(json.loads((path.parent / "state.json").read_text()))
        assert resumed.global_step == 3 and resumed.epoch_losses == state.epoch_losses[:3]
        assert opt2.scheduler.last_epoch == 3
        assert train_one_epoch(resumed, scorer2, opt2, encoded2, cfg.training)
    assert (resumed.global_step, resumed.batch_in_epoch, resumed.tokens_seen) == (
        state.global_step, state.batch_in_epoch, state.tokens_seen)
    assert resumed.epoch_losses == state.epoch_losses  # the same batches, bit for bit
    for key, value in opt2.net.state_dict().items():
        torch.testing.assert_close(value, straight[key], rtol=0, atol=0, msg=key)


def test_state_of_an_older_checkpoint_resumes_with_defaults() -> None:
    # A checkpoint written before elapsed_seconds / stop_reason / epoch_losses were saved.
    old = {"epoch": 2, "batch_in_epoch": 0, "global_step": 10, "best_metric": 0.91, "best_epoch": 2,
           "epochs_without_improvement": 0, "stopped_early": False, "history": [], "tokens_seen": 800,
           "train_seconds": 3.5}
    state = TrainState.from_dict(old)
    assert (state.epoch, state.global_step, state.best_metric) == (2, 10, 0.91)
    assert state.elapsed_seconds == 0.0 and state.stop_reason is None and state.epoch_losses == []


def test_validate_gives_the_loss_and_the_metric(workspace: Path) -> None:
    with owned_global_state(seed=13, num_threads=1):
        _, data, scorer, _, encoded = _tiny_run(workspace)
        metrics = validate(scorer, encoded, ranking_auc, batch_size=16)
    logits = scorer.predict_logits(encoded.validation_docs, batch_size=16)
    y = encoded.y_validation
    bce = np.mean(np.logaddexp(0, logits) - y * logits)
    assert set(metrics) == {"dev_loss", "dev_metric"}
    assert metrics["dev_loss"] == pytest.approx(bce, rel=1e-5)
    assert metrics["dev_metric"] == pytest.approx(ranking_auc(y, 1 / (1 + np.exp(-logits))))
    assert encoded.y_validation.shape == (len(data.validation), len(data.label_space))


class _TwoPartNet(torch.nn.Module):
    """An encoder and a head, as the optimizer groups them."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(3, 3)
        self.head = torch.nn.Linear(3, 2)


def test_learning_rate_warms_up_linearly_then_decays_to_zero() -> None:
    # 40 reports / batch 8 = 5 steps per epoch, 2 epochs: 10 steps, 3 of warm-up.
    cfg = load_config(None, ["training.epochs=2", "training.batch_size=8", "training.warmup_ratio=0.3",
                             "training.lr=1e-3", "training.head_lr=1e-2"])
    opt = build_optimization(_TwoPartNet(), cfg.training, n_train=40)
    head, encoder = [], []
    for _ in range(10):
        head.append(opt.optimizer.param_groups[0]["lr"])
        encoder.append(opt.optimizer.param_groups[1]["lr"])
        optimizer_step(opt, max_grad_norm=1.0)
    # transformers' schedule: s / 3 while warming up (the first step at 0), then (10 - s) / 7.
    factors = [0, 1 / 3, 2 / 3, 1, 6 / 7, 5 / 7, 4 / 7, 3 / 7, 2 / 7, 1 / 7]
    assert head == pytest.approx([1e-2 * f for f in factors])
    assert encoder == pytest.approx([1e-3 * f for f in factors])
    assert opt.optimizer.param_groups[0]["lr"] == 0.0


class FailingTracker(RecordingTracker):
    """An MLflow store that stops answering after the parameters."""

    def log_metrics(self, metrics: dict, step: int) -> None:
        raise ConnectionError("serveur MLflow injoignable")


def test_a_tracking_failure_does_not_stop_training(workspace: Path, caplog: pytest.LogCaptureFixture) -> None:
    tracker = FailingTracker()
    caplog.set_level(logging.WARNING, logger="cimcoder.training.trainer")
    run = train(_config(workspace, "tracking-down", "training.epochs=2"), tracker=tracker)
    assert tracker.params["training.epochs"] == 2
    assert tracker.artifacts == []  # tracking ended at the first failure
    assert caplog.text.count("tracking failed (ConnectionError") == 1
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 2
