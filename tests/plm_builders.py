"""A real PLM-ICD run folder of any size, built without training, for tests and benchmarks.

`tests/test_inference_plm.py` builds a 1-layer one; `benchmarks/bench_predict.py` a 4-layer one
to time inference (speed does not depend on the weights).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def build_untrained_run(
    run_dir: str | Path,
    texts: Sequence[str],
    code_sets: Sequence[Sequence[str]],
    *,
    vocab_size: int,
    min_frequency: int,
    hidden: int,
    layers: int,
    heads: int,
    intermediate: int,
    max_positions: int,
    chunking: tuple[int, int],
    min_count: int = 1,
    seed: int = 0,
) -> Path:
    """An untrained PLM-ICD run folder: a WordPiece tokenizer trained on `texts`, a randomly
    initialised BERT of the given size, a label-wise head over the codes of `code_sets`, its
    biases set from their counts; `chunking` is (max_chunk_tokens, max_chunks)."""
    import torch
    from transformers import BertConfig, BertModel

    from cimcoder.terminologies import load_terminology
    from cimcoder.training.config import ChunkingConfig, HeadConfig, ModelConfig, RunConfig
    from cimcoder.training.labels import LabelSpace
    from cimcoder.training.models.plm_icd import PLMICDScorer
    from cimcoder.training.tokenizer import train_tokenizer

    run = Path(run_dir)
    torch.manual_seed(seed)
    tokenizer = train_tokenizer(list(texts), vocab_size=vocab_size, min_frequency=min_frequency,
                                model_max_length=max_positions)
    encoder_dir = run.parent / f"{run.name}-encoder"
    BertModel(BertConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=intermediate,
        max_position_embeddings=max_positions,
    )).save_pretrained(encoder_dir)
    tokenizer.save_pretrained(encoder_dir)
    label_space = LabelSpace.from_code_sets(
        code_sets, terminology="cim10", edition=load_terminology("cim10").edition, min_count=min_count
    )
    config = RunConfig(model=ModelConfig(
        name="plm_icd", encoder=str(encoder_dir),
        chunking=ChunkingConfig(max_chunk_tokens=chunking[0], max_chunks=chunking[1]),
        head=HeadConfig(label_init="random", dropout=0.0),
    ))
    scorer = PLMICDScorer.from_config(config, label_space)
    scorer.init_bias_from_counts(label_space.train_counts, len(texts))
    scorer.save(run)
    return run
