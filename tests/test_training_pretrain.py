"""`cimcoder pretrain`: an encoder trained offline loads like any Hugging Face checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_training_helpers import clinical_notes
from transformers import AutoModel, AutoTokenizer

from cimcoder.cli import main
from cimcoder.training.config import load_config, load_pretrain_config
from cimcoder.training.labels import LabelSpace
from cimcoder.training.pretrain import PretrainError, collect_corpus, mask_tokens, pretrain
from cimcoder.training.registry import build_model

TINY = [
    "corpus.codiesp_train=false",
    "corpus.terminology_labels=false",
    "corpus.synthetic_reports=0",
    "tokenizer.vocab_size=300",
    "tokenizer.min_frequency=1",
    "encoder.layers=1",
    "encoder.hidden=32",
    "encoder.heads=2",
    "encoder.intermediate=64",
    "encoder.max_positions=64",
    "training.seq_len=32",
    "training.batch_size=4",
    "training.max_steps=4",
]


@pytest.fixture
def hospital_corpus(tmp_path: Path) -> Path:
    folder = tmp_path / "crh"
    folder.mkdir()
    for i, (text, _) in enumerate(clinical_notes(30, seed=4)):
        (folder / f"crh_{i:02d}.txt").write_text(text, encoding="utf-8")
    with (folder / "autres.jsonl").open("w", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": "Insuffisance cardiaque gauche décompensée."}, ensure_ascii=False) + "\n")
    return folder


def test_pretrain_cli_writes_a_loadable_encoder(hospital_corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "cimcoder-fr-test"
    code = main(["pretrain", "--output", str(out), "--corpus", str(hospital_corpus), *TINY])
    assert code == 0
    info = json.loads((out / "pretrain_info.json").read_text())
    assert info["sources"] == {str(hospital_corpus): 31}
    assert info["steps"] == 4 and info["stop_reason"] == "max_steps"
    # Exactly the code path of a downloaded checkpoint.
    tok = AutoTokenizer.from_pretrained(out)
    enc = AutoModel.from_pretrained(out)
    assert enc.config.hidden_size == 32
    ids = tok("Pneumopathie à pneumocoque", return_offsets_mapping=True)
    assert ids["input_ids"][0] == tok.cls_token_id and ids["input_ids"][-1] == tok.sep_token_id
    cfg = load_config(None, [f"model.encoder={out}", "model.chunking.max_chunk_tokens=32"])
    scorer = build_model(cfg, LabelSpace.from_code_sets([["J13"], ["I10"]]))
    assert scorer.predict_scores(["HTA essentielle."]).shape == (1, 2)


def test_masking_spares_special_tokens(hospital_corpus: Path, tmp_path: Path) -> None:
    import torch

    cfg = load_pretrain_config(None, [*TINY, f"corpus.paths=[{hospital_corpus}]"])
    out = pretrain(cfg, tmp_path / "enc")
    tok = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tok("Diabète de type 2 non insulinotraité")["input_ids"]] * 50)
    inputs, labels = mask_tokens(ids, tok, 0.5, torch.Generator().manual_seed(0))
    assert (labels[:, 0] == -100).all() and (labels[:, -1] == -100).all()
    assert (inputs[:, 0] == tok.cls_token_id).all()
    chosen = labels != -100
    assert 0.3 < chosen[:, 1:-1].float().mean() < 0.7
    assert (labels[chosen] == ids[chosen]).all()


def test_empty_or_unreadable_corpus_is_a_clear_error(tmp_path: Path) -> None:
    cfg = load_pretrain_config(None, TINY)
    with pytest.raises(PretrainError, match="empty"):
        collect_corpus(cfg)
    (tmp_path / "vide").mkdir()
    cfg = load_pretrain_config(None, [*TINY, f"corpus.paths=[{tmp_path / 'vide'}]"])
    with pytest.raises(PretrainError, match=r"no \.txt or \.jsonl"):
        collect_corpus(cfg)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"texte": "Pas d\'HTA connue"}\n', encoding="utf-8")
    cfg = load_pretrain_config(None, [*TINY, f"corpus.paths=[{bad}]"])
    with pytest.raises(PretrainError, match=r"bad\.jsonl:1"):
        collect_corpus(cfg)
    assert main(["pretrain", "training.lrr=1"]) == 2


def test_learning_rate_decays_to_two_percent_and_refits_to_the_budget() -> None:
    import torch

    from cimcoder.training.pretrain import lr_schedule

    cfg = load_pretrain_config(None, ["training.lr=1e-3", "training.warmup_ratio=0.1"])
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    scheduler = lr_schedule(optimizer, cfg.training, total=20)  # 2 warm-up steps

    def lr() -> float:
        return optimizer.param_groups[0]["lr"]

    lrs = []
    for _ in range(11):
        lrs.append(lr())
        optimizer.step()
        scheduler.step()
    # Warm-up s / 2, then 2 % + 98 % * (20 - s) / 18.
    assert lrs[:4] == pytest.approx([0.0, 0.5e-3, 1e-3, 1e-3 * (0.02 + 0.98 * 17 / 18)])
    assert lr() == pytest.approx(1e-3 * (0.02 + 0.98 * 9 / 18))
    # The time budget affords 15 steps in all: the decay is fitted again from step 11 on
    # (1 warm-up step out of 15, already past).
    scheduler = lr_schedule(optimizer, cfg.training, total=15, step=11)
    assert lr() == pytest.approx(1e-3 * (0.02 + 0.98 * 4 / 14))
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert lr() == pytest.approx(1e-3 * 0.02)  # past the planned steps: the floor
