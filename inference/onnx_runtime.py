"""Scoring runtimes of a PLM-ICD model: torch (the default), ONNX Runtime fp32, ONNX Runtime int8.

`with_runtime(scorer, run_dir, runtime)` returns the scorer to score with. For "onnx" and
"onnx-int8" it is an `OnnxPLMScorer`: the same chunking, batching and evidence code as the
torch scorer, with the network's forward (encoder + label-wise attention, attention weights
included, so evidence still comes from the scoring pass) run by an ONNX Runtime session.

The graph is exported once (`cimcoder.training.models.plm_icd.export_onnx`) and cached in the
run folder, `onnx/<weights hash>/model.onnx`; int8 is ONNX Runtime's dynamic quantization of
that graph's weight matrices (`model.int8.onnx`). New weights mean a new hash, hence a new
export; a read-only run folder (an MLflow artifact) caches under the user's cache folder.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cimcoder.inference.predictor import ONNX_CACHE_DIR, PredictorError
from cimcoder.inference.schemas import RUNTIMES, Runtime
from cimcoder.training.models.plm_icd import (
    ENCODER_DIR,
    HEAD_FILE,
    Batch,
    PLMICDScorer,
    export_onnx,
)

logger = logging.getLogger(__name__)

FP32_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
# Bumped when the exported graph changes for the same weights (cache key).
EXPORT_VERSION = "1"


class RuntimeUnavailableError(PredictorError):
    """The scoring runtime asked for cannot run this model."""


def check_runtime(runtime: str) -> Runtime:
    if runtime not in RUNTIMES:
        raise RuntimeUnavailableError(
            f"unknown scoring runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}"
        )
    return runtime


def with_runtime(scorer: Any, run_dir: Path, runtime: str) -> Any:
    """`scorer` itself for "torch"; for an ONNX runtime, a scorer whose forward runs in ONNX
    Runtime. Refuses (clear error) a model without a transformer network, such as tfidf_lr or
    the hybrid coder, and an install without onnxruntime."""
    runtime = check_runtime(runtime)
    if runtime == "torch":
        return scorer
    if not isinstance(scorer, PLMICDScorer):
        kind = getattr(scorer, "model_name", type(scorer).__name__)
        raise RuntimeUnavailableError(
            f"the {runtime} runtime scores transformer (plm_icd) models only; this model is "
            f"{kind}: use --runtime torch (CIMCODER_RUNTIME=torch)"
        )
    try:
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise RuntimeUnavailableError(
            f"the {runtime} runtime needs onnxruntime ({exc}): pip install onnxruntime"
        ) from None
    path = onnx_model_path(scorer, Path(run_dir), quantized=runtime == "onnx-int8")
    return OnnxPLMScorer(scorer, path, runtime)


def weights_hash(run_dir: Path) -> str:
    """Hash of the files that define the network (encoder weights and config, head)."""
    digest = hashlib.sha256(f"export-{EXPORT_VERSION}".encode())
    encoder = run_dir / ENCODER_DIR
    files = sorted(
        p for p in encoder.iterdir()
        if p.is_file() and (p.suffix in {".safetensors", ".bin"} or p.name == "config.json")
    )
    for path in [*files, run_dir / HEAD_FILE]:
        digest.update(path.name.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def _cache_dir(run_dir: Path, key: str) -> Path:
    folder = run_dir / ONNX_CACHE_DIR / key
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.touch()
        probe.unlink()
        return folder
    except OSError:
        base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
        fallback = base / "cimcoder" / ONNX_CACHE_DIR / key
        logger.warning("%s is not writable: ONNX graphs cached in %s", run_dir, fallback)
        fallback.mkdir(parents=True, exist_ok=True)
        return fallback


def _atomic(target: Path, write: Any) -> Path:
    """Run `write(tmp_path)` then move the result to `target` (no half-written cache)."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".onnx.part")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def onnx_model_path(scorer: Any, run_dir: Path, *, quantized: bool) -> Path:
    """The cached fp32 (or int8) graph of the run's weights, exported on first use."""
    folder = _cache_dir(run_dir, weights_hash(run_dir))
    fp32 = folder / FP32_FILE
    if not fp32.is_file():
        logger.info("exporting %s to ONNX (%s)", run_dir.name, fp32)
        _atomic(fp32, lambda tmp: export_onnx(scorer.net, tmp))
    if not quantized:
        return fp32
    int8 = folder / INT8_FILE
    if not int8.is_file():
        from onnxruntime.quantization import QuantType, quantize_dynamic

        logger.info("quantizing %s to int8 (%s)", fp32.name, int8)
        _atomic(
            int8,
            lambda tmp: quantize_dynamic(
                fp32,
                tmp,
                weight_type=QuantType.QInt8,
                # Weights only: the attention products of two activations stay fp32.
                extra_options={"MatMulConstBOnly": True},
            ),
        )
    return int8


class OnnxPLMScorer(PLMICDScorer):
    """A `PLMICDScorer` whose network runs in an ONNX Runtime session (CPU): chunking,
    batching, evidence and `explain` are the torch scorer's own; only the forward differs."""

    def __init__(self, base: PLMICDScorer, model_path: Path, runtime: Runtime) -> None:
        super().__init__(base.net, base.tokenizer, base.label_space, base.config)
        import onnxruntime as ort

        options = ort.SessionOptions()
        # The thread count torch was given (OMP_NUM_THREADS, torch.set_num_threads).
        options.intra_op_num_threads = torch.get_num_threads()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(
            str(model_path), options, providers=["CPUExecutionProvider"]
        )
        self.runtime = runtime
        self.model_path = model_path

    def forward_batch(
        self, batch: Batch, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        feeds = {
            "input_ids": batch.input_ids.cpu().numpy().astype(np.int64),
            "attention_mask": batch.attention_mask.cpu().numpy().astype(np.int64),
        }
        wanted = ["logits", "attention"] if return_attention else ["logits"]
        outputs = self.session.run(wanted, feeds)
        logits = torch.from_numpy(outputs[0])
        return logits, (torch.from_numpy(outputs[1]) if return_attention else None)
