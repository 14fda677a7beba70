"""Scoring runtimes: ONNX Runtime fp32 and int8 against torch on a tiny untrained PLM-ICD,
the graph cache, and clear refusals (a bag-of-words model, an unknown runtime)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("transformers")

from test_inference_plm import _reports, build_tiny_plm_run

from cimcoder.cli import main

HEART = "Insuffisance cardiaque congestive décompensée. Hypertension artérielle essentielle."


@pytest.fixture(scope="module")
def plm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_plm_run(tmp_path_factory.mktemp("runs") / "tiny-plm")


def test_onnx_fp32_scores_match_torch_within_1e4(plm_run: Path) -> None:
    from cimcoder.inference import Predictor

    texts = _reports()  # one chunk, two chunks, truncated, short: batches pad chunks and tokens
    torch_scorer = Predictor.load(plm_run).scorer
    onnx_scorer = Predictor.load(plm_run, runtime="onnx").scorer
    for batch_size in (1, 4):
        expected = torch_scorer.predict_scores(texts, batch_size=batch_size)
        got = onnx_scorer.predict_scores(texts, batch_size=batch_size)
        assert got.shape == expected.shape == (len(texts), len(torch_scorer.labels))
        assert np.abs(got - expected).max() < 1e-4


def test_onnx_answers_are_the_torch_answers_with_the_runtime_named(plm_run: Path) -> None:
    from cimcoder.inference import Predictor

    texts = _reports()
    by_torch = Predictor.load(plm_run).predict(texts, batch_size=4)
    by_onnx = Predictor.load(plm_run, runtime="onnx").predict(texts, batch_size=4)
    for a, b in zip(by_torch, by_onnx, strict=True):
        assert a.model.runtime == "torch" and b.model.runtime == "onnx"
        assert a.model.version == b.model.version  # the graph cache is not part of the model
        assert [c.code for c in a.codes] == [c.code for c in b.codes]
        # Evidence comes from the graph's attention output, in the same scoring pass.
        assert [c.evidence for c in a.codes] == [c.evidence for c in b.codes]
        for ca, cb in zip(a.codes, b.codes, strict=True):
            assert cb.score == pytest.approx(ca.score, abs=1e-4)
    assert any(c.evidence for r in by_onnx for c in r.codes)


def test_int8_is_close_and_says_so(plm_run: Path) -> None:
    from cimcoder.inference import Predictor

    texts = _reports()
    expected = Predictor.load(plm_run).scorer.predict_scores(texts)
    int8 = Predictor.load(plm_run, runtime="onnx-int8")
    got = int8.scorer.predict_scores(texts)
    # Quantised weights move scores a little, never by much on this model.
    assert 0 < np.abs(got - expected).max() < 0.02
    answer = int8.predict_one("Chute mécanique au domicile. Fracture du col du fémur.")
    assert answer.model.runtime == "onnx-int8"
    assert all(0 <= e.start < e.end for c in answer.codes for e in c.evidence)


def test_graph_is_cached_per_weights(plm_run: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from cimcoder.inference import Predictor
    from cimcoder.inference.onnx_runtime import FP32_FILE, weights_hash

    run = tmp_path / "copy"
    shutil.copytree(plm_run, run)
    shutil.rmtree(run / "onnx", ignore_errors=True)  # exported by the tests above
    first = Predictor.load(run, runtime="onnx").scorer.model_path
    assert first == run / "onnx" / weights_hash(run) / FP32_FILE
    stamp = first.stat().st_mtime_ns
    assert Predictor.load(run, runtime="onnx").scorer.model_path.stat().st_mtime_ns == stamp

    head = load_file(str(run / "head.safetensors"))
    head["bias"] = head["bias"] + 1.0  # new weights: a new graph, with their scores
    save_file(head, str(run / "head.safetensors"))
    second = Predictor.load(run, runtime="onnx")
    assert second.scorer.model_path != first
    expected = Predictor.load(run).scorer.predict_scores([HEART])
    assert np.abs(second.scorer.predict_scores([HEART]) - expected).max() < 1e-4


def test_onnx_runtime_refuses_a_bag_of_words_model(tiny_run: Path) -> None:
    from cimcoder.inference import Predictor, PredictorError

    with pytest.raises(PredictorError, match=r"transformer \(plm_icd\) models only; this model is tfidf_lr"):
        Predictor.load(tiny_run, runtime="onnx")
    with pytest.raises(PredictorError, match="unknown scoring runtime 'tensorrt'"):
        Predictor.load(tiny_run, runtime="tensorrt")


def _predict(model: Path, tmp_path: Path, *extra: str) -> tuple[int, Path]:
    source = tmp_path / "export.jsonl"
    source.write_text(json.dumps({"id": "7", "text": HEART}, ensure_ascii=False) + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    code = main(["predict", "--model", str(model), "--input", str(source), "--output", str(out), *extra])
    return code, out


def test_cli_runtime_option(plm_run: Path, tmp_path: Path) -> None:
    code, out = _predict(plm_run, tmp_path, "--runtime", "onnx-int8")
    assert code == 0
    (line,) = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert line["id"] == "7"
    assert line["model"]["runtime"] == "onnx-int8"
    assert line["model"]["architecture"] == "plm_icd"


def test_cli_refuses_onnx_for_tfidf_with_exit_2_and_no_traceback(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out = _predict(tiny_run, tmp_path, "--runtime", "onnx")
    assert code == 2
    err = capsys.readouterr().err
    assert "(plm_icd) models only; this model is tfidf_lr" in err and "Traceback" not in err
    assert not out.exists()
    monkeypatch.setenv("CIMCODER_RUNTIME", "gpu")
    assert _predict(tiny_run, tmp_path)[0] == 2
    assert "CIMCODER_RUNTIME='gpu'" in capsys.readouterr().err


def test_serve_setting_reads_cimcoder_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from cimcoder.serving.settings import Settings

    assert Settings(model=None, auth_disabled=True).runtime == "torch"
    monkeypatch.setenv("CIMCODER_RUNTIME", "onnx-int8")
    assert Settings(model=None, auth_disabled=True).runtime == "onnx-int8"
    monkeypatch.setenv("CIMCODER_RUNTIME", "onnx-fp16")
    with pytest.raises(ValidationError, match="onnx-int8"):
        Settings(model=None, auth_disabled=True)
