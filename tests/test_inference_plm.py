"""Predictor on a tiny PLM-ICD (a BERT built from a local config): chunk budget, evidence,
save/reload determinism."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_inference_predictor import tiny_corpus


def build_tiny_plm_run(run_dir: Path) -> Path:
    """A 1-layer BERT encoder + label-wise head over the tiny corpus's label space (untrained
    but with biases forced from training counts, so decoding is deterministic)."""
    import torch
    from transformers import BertConfig, BertModel

    from cimcoder.terminologies import load_terminology
    from cimcoder.training import LabelSpace, build_model
    from cimcoder.training.config import ChunkingConfig, HeadConfig, ModelConfig, RunConfig
    from cimcoder.training.tokenizer import train_tokenizer

    texts, code_sets = tiny_corpus()
    torch.manual_seed(0)
    tokenizer = train_tokenizer(texts, vocab_size=400, min_frequency=1, model_max_length=64)
    encoder_dir = run_dir.parent / f"{run_dir.name}-encoder"
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(encoder_dir)
    tokenizer.save_pretrained(encoder_dir)
    edition = load_terminology("cim10").edition
    label_space = LabelSpace.from_code_sets(code_sets, terminology="cim10", edition=edition)
    run_config = RunConfig(
        model=ModelConfig(
            name="plm_icd",
            encoder=str(encoder_dir),
            chunking=ChunkingConfig(max_chunk_tokens=32, max_chunks=2),
            head=HeadConfig(label_init="random", dropout=0.0),
        )
    )
    scorer = build_model(run_config, label_space)
    scorer.init_bias_from_counts(label_space.train_counts, len(texts))  # type: ignore[attr-defined]
    scorer.save(run_dir)
    return run_dir


@pytest.fixture(scope="module")
def plm_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    return build_tiny_plm_run(tmp_path_factory.mktemp("runs") / "tiny-plm")


def test_plm_run_predicts_with_spans_inside_the_text(plm_run: Path) -> None:
    from cimcoder.inference import Predictor

    predictor = Predictor.load(plm_run)
    text = "Insuffisance rénale aiguë fonctionnelle. Chute mécanique au domicile."
    result = predictor.predict_one(text)
    assert result.model.architecture == "plm_icd"
    assert result.model.calibrated is False
    assert {c.decision for c in result.codes} == {"review"}
    assert len(result.codes) == len(predictor.labels)
    assert result.model.input.truncated is False
    spans = [e for c in result.codes for e in c.evidence]
    assert spans, "every suggested code gets evidence"
    for span in spans:
        assert text[span.start : span.end] == span.text
        assert span.text.strip() == span.text and span.text  # whole words


def test_reload_gives_exactly_the_same_answer(plm_run: Path) -> None:
    from cimcoder.inference import Predictor

    text = "Diabète de type 2 sous metformine. Hypertension artérielle essentielle traitée."
    first = Predictor.load(plm_run).predict_one(text)
    second = Predictor.load(plm_run).predict_one(text)
    assert first.model_dump() == second.model_dump()
