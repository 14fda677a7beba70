"""Training on two CPU processes (gloo): the loss curve of one process, one writer, resumable.

Tolerance. Both runs see the same global batches in the same order and start from the same
weights; what differs is float32 arithmetic: each process averages the loss of 4 reports
instead of 8, pads to its own longest report, and the two gradients are summed by an
all-reduce. Measured on this corpus after 10 steps: train loss within 3e-8 (float32 rounding
of a ~0.9 mean), dev loss and MAP identical. We allow 1e-4 (absolute): a margin for other CPUs
and BLAS builds, whose reassociations Adam carries from step to step, and still 40x below what a
wrong split gives (processes taking their 4 reports as the whole batch, i.e. one process at
batch 4: train loss 0.018 / 0.060 off, dev loss 0.004 / 0.020 off, MAP 0.06 / 0.13 off).
Dropout is off in this test: the masks drawn for two shards of 4 reports are not those drawn
for one batch of 8, so with dropout the two curves agree only statistically.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_training_helpers import build_tiny_encoder, clinical_notes, write_text_folder

from cimcoder.cli import main
from cimcoder.eval.metrics import mean_average_precision
from cimcoder.training import load_config, train
from cimcoder.training.tracking import local_tracking_uri

LOSS_TOLERANCE = 1e-4

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not torch.distributed.is_available() or not torch.distributed.is_gloo_available()
        or torch.cuda.is_available(),  # there a process takes a GPU (NCCL): one GPU per process
        reason="needs torch.distributed with gloo, on CPU",
    ),
]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("distributed")
    encoder = build_tiny_encoder(root / "encoder")
    config = json.loads((encoder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (encoder / "config.json").write_text(json.dumps(config))
    write_text_folder(root / "train", clinical_notes(40, seed=2), "sejour")
    write_text_folder(root / "dev", clinical_notes(16, seed=3), "dev")
    return root


def _overrides(root: Path, run_name: str, *more: str) -> list[str]:
    return [
        f"model.encoder={root / 'encoder'}",
        f"data.train={root / 'train'}",
        f"data.dev={root / 'dev'}",
        f"output_dir={root / 'runs'}",
        f"tracking.run_name={run_name}",
        "tracking.experiment=tiny",
        "model.chunking.max_chunk_tokens=32",
        "model.chunking.max_chunks=4",
        "model.head.dropout=0",
        "training.lr=1e-3",
        "training.head_lr=1e-2",
        "training.batch_size=8",  # the global batch: 4 reports per process with --nproc 2
        "training.num_threads=1",
        "training.epochs=2",
        "training.keep_checkpoints=true",
        *more,
    ]


def _history(run: Path) -> list[dict]:
    return json.loads((run / "metrics.json").read_text())["history"]


def _assert_same_curve(two: list[dict], one: list[dict]) -> None:
    assert [(h["epoch"], h["step"]) for h in two] == [(h["epoch"], h["step"]) for h in one]
    for a, b in zip(two, one, strict=True):
        for key in ("train_loss", "dev_loss", "dev_metric"):
            assert a[key] == pytest.approx(b[key], abs=LOSS_TOLERANCE), (a["epoch"], key)


@pytest.fixture(scope="module")
def one_process(workspace: Path) -> Path:
    config = load_config(None, _overrides(workspace, "one"))
    return train(config, validation_metric=mean_average_precision)


def test_two_processes_follow_the_one_process_loss_curve_and_resume(
    workspace: Path, one_process: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("CIMCODER_MLFLOW_DIR", str(tmp_path / "mlflow"))
    config = tmp_path / "tiny.yaml"
    config.write_text("model:\n  name: plm_icd\n", encoding="utf-8")
    run = workspace / "runs" / "tiny" / "two"

    # Stopped in the middle of epoch 1 (step 3 of 5: 40 reports / global batch 8), as by a crash.
    args = ["train", "--nproc", "2", str(config), *_overrides(workspace, "two")]
    assert main([*args, "training.max_steps=3"]) == 0
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert (state["epoch"], state["batch_in_epoch"], state["global_step"]) == (0, 3, 3)
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert len(ckpt["rng_by_rank"]) == 2
    assert set(ckpt["model"]) == set(torch.load(one_process / "checkpoints" / "last.pt",
                                                weights_only=False)["model"])  # no "module." prefix

    # Resumed on two processes to the end: the completed epochs are those of one process
    # that never stopped, 5 steps an epoch.
    assert main(args) == 0
    history = _history(run)
    assert [h["step"] for h in history] == [3, 5, 10]
    _assert_same_curve(history[1:], _history(one_process))
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert (state["epoch"], state["global_step"]) == (2, 10)
    two_w = torch.load(run / "checkpoints" / "last.pt", weights_only=False)["model"]
    one_w = torch.load(one_process / "checkpoints" / "last.pt", weights_only=False)["model"]
    for key in ("head.queries", "head.outputs", "head.bias"):
        torch.testing.assert_close(two_w[key], one_w[key], rtol=0, atol=1e-3)

    # Rank 0 alone tracked: one MLflow run per command, one value per validation.
    client = MlflowClient(tracking_uri=local_tracking_uri(tmp_path / "mlflow"))
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    assert [r.info.status for r in runs] == ["FINISHED", "FINISHED"]
    steps = [[m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] for r in runs]
    assert steps == [[3], [5, 10]]
    # And wrote the folder once: what one process writes, no leftover of a second writer.
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in one_process.iterdir())
    assert not list(run.rglob("*.tmp"))
