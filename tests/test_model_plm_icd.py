"""PLM-ICD model: chunking, label-wise attention, label-text init, save/reload, evidence spans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_training_helpers import build_tiny_encoder

from cimcoder.errors import CimcoderError
from cimcoder.training.config import load_config
from cimcoder.training.labels import LabelSpace
from cimcoder.training.models.plm_icd import PLMICDScorer
from cimcoder.training.registry import Scorer, build_model, load_scorer, registered_models

CODES = ["J13", "I10", "E11.9", "N39.0"]
NOTE = (
    "Patient de 67 ans. Pneumopathie franche lobaire aiguë à pneumocoque. "
    "HTA essentielle traitée. Pas de diabète."
)


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_encoder(tmp_path_factory.mktemp("encoder"))


def _config(encoder_dir: Path, *overrides: str):
    return load_config(
        None,
        [
            f"model.encoder={encoder_dir}",
            "model.chunking.max_chunk_tokens=16",
            "model.chunking.max_chunks=8",
            "model.head.dropout=0.0",
            *overrides,
        ],
    )


def _space() -> LabelSpace:
    return LabelSpace.from_code_sets([["J13", "I10"], ["E11.9"], ["N39.0"]], edition="test")


def test_every_registered_model_builds_from_its_default_config(encoder_dir: Path) -> None:
    for name in registered_models():
        cfg = _config(encoder_dir, f"model.name={name}")
        model = build_model(cfg, _space())
        assert isinstance(model, Scorer), name
        assert model.labels == _space().codes


def test_long_report_is_chunked_within_budget(encoder_dir: Path) -> None:
    scorer = build_model(_config(encoder_dir, "model.chunking.stride=4"), _space())
    long_report = " ".join([NOTE] * 12)
    (doc,) = scorer.chunk([long_report])
    assert len(doc.input_ids) == 8  # max_chunks
    assert doc.truncated
    # 14 text tokens per chunk, each chunk starting 10 tokens after the previous one.
    assert doc.n_tokens == 14 + 7 * 10
    assert all(len(c) <= 16 for c in doc.input_ids)
    cls_id, sep_id = scorer.tokenizer.cls_token_id, scorer.tokenizer.sep_token_id
    assert all(c[0] == cls_id and c[-1] == sep_id for c in doc.input_ids)
    # Consecutive chunks overlap by `stride` tokens.
    assert doc.input_ids[0][-5:-1] == doc.input_ids[1][1:5]
    # Offsets point back into the report text.
    start, end = doc.offsets[0][1]
    assert long_report[start:end] == "Patient"
    (short,) = scorer.chunk(["Pas d'HTA connue."])
    assert len(short.input_ids) == 1 and not short.truncated
    scores = scorer.predict_scores([long_report, "Pas d'HTA connue.", ""])
    assert scores.shape == (3, 4)
    assert np.all((scores >= 0) & (scores <= 1))


def test_chunk_larger_than_encoder_is_refused(encoder_dir: Path) -> None:
    with pytest.raises(CimcoderError, match="max_chunk_tokens=128 exceeds"):
        build_model(_config(encoder_dir, "model.chunking.max_chunk_tokens=128"), _space())


def test_missing_encoder_gives_a_clear_error(tmp_path: Path) -> None:
    cfg = load_config(None, [f"model.encoder={tmp_path / 'cimcoder-fr-mini'}"])
    with pytest.raises(CimcoderError, match="cimcoder pretrain"):
        build_model(cfg, _space())


def test_forced_bias_decodes_deterministically_and_reloads_exactly(
    encoder_dir: Path, tmp_path: Path
) -> None:
    scorer = build_model(_config(encoder_dir, "model.head.label_init=random"), _space())
    assert isinstance(scorer, PLMICDScorer)
    with torch.no_grad():
        scorer.net.head.outputs.zero_()
        scorer.net.head.bias.copy_(torch.tensor([8.0, -8.0, 0.0, -8.0]))
    texts = [NOTE, "Cystite fébrile, ECBU positif.", "Pas d'HTA connue."]
    forced = scorer.predict_scores(texts)
    expected = 1 / (1 + np.exp(-np.array([8.0, -8.0, 0.0, -8.0])))
    np.testing.assert_allclose(forced, np.tile(expected, (3, 1)), rtol=1e-6)
    scorer.save(tmp_path / "run")
    reloaded = load_scorer(tmp_path / "run")
    assert reloaded.labels == scorer.labels
    assert reloaded.label_space.edition == "test"
    assert np.array_equal(reloaded.predict_scores(texts), forced)
    # Not only the bias: real (unforced) scores reload bit for bit too.
    with torch.no_grad():
        scorer.net.head.outputs.normal_(std=0.5)
    scorer.save(tmp_path / "run2")
    assert np.array_equal(load_scorer(tmp_path / "run2").predict_scores(texts), scorer.predict_scores(texts))
    # Batch size does not change the scores.
    np.testing.assert_allclose(
        scorer.predict_scores(texts, batch_size=1), scorer.predict_scores(texts, batch_size=3), atol=1e-6
    )


def test_incomplete_run_folder_is_refused(encoder_dir: Path, tmp_path: Path) -> None:
    scorer = build_model(_config(encoder_dir), _space())
    scorer.save(tmp_path / "run")
    (tmp_path / "run" / "head.safetensors").unlink()
    with pytest.raises(CimcoderError, match=r"head\.safetensors missing"):
        load_scorer(tmp_path / "run")


def test_label_text_init_depends_on_label_text(encoder_dir: Path) -> None:
    text_init = build_model(_config(encoder_dir), _space())
    other = build_model(_config(encoder_dir), _space())
    random_init = build_model(_config(encoder_dir, "model.head.label_init=random"), _space())
    q_text = text_init.net.head.queries.detach()
    # Built from label text, hence reproducible without any seed, and distinct per label.
    assert torch.equal(q_text, other.net.head.queries.detach())
    assert not torch.equal(q_text, random_init.net.head.queries.detach())
    sims = torch.nn.functional.normalize(text_init.net.head.outputs.detach(), dim=-1)
    off_diag = (sims @ sims.T - torch.eye(4)).abs()
    assert off_diag.max() < 0.999
    # Output vectors are the (centred) readings of the French labels: J13's label
    # ("Pneumopathie ... pneumocoque") points elsewhere than I10's ("Hypertension essentielle").
    j13, i10 = text_init.label_space.index("J13"), text_init.label_space.index("I10")
    assert float(sims[j13] @ sims[i10]) < 0.9


def test_explain_returns_word_spans_of_the_report(encoder_dir: Path) -> None:
    scorer = build_model(_config(encoder_dir), _space())
    spans = scorer.explain(NOTE, ["J13", "I10", "Z99.9"], top_k=3)
    assert set(spans) == {"J13", "I10", "Z99.9"}
    assert spans["Z99.9"] == []  # not in the label space
    for code in ("J13", "I10"):
        assert 1 <= len(spans[code]) <= 3
        for start, end in spans[code]:
            word = NOTE[start:end]
            assert word.strip() == word and word  # whole words, no padding or specials
            assert 0 <= start < end <= len(NOTE)
    assert scorer.explain("", ["J13"]) == {"J13": []}
