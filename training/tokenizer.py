"""Train a French subword tokenizer (HF `tokenizers`) saved as a `PreTrainedTokenizerFast`.

The result loads with `AutoTokenizer.from_pretrained(dir)`, like any downloaded checkpoint.
Accents are kept: "aiguë" and "aigue" are not the same word in a CRH.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Literal

from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import PreTrainedTokenizerFast

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = {
    "pad_token": "[PAD]",
    "unk_token": "[UNK]",
    "cls_token": "[CLS]",
    "sep_token": "[SEP]",
    "mask_token": "[MASK]",
}


def train_tokenizer(
    texts: Iterable[str],
    *,
    kind: Literal["wordpiece", "bpe"] = "wordpiece",
    vocab_size: int = 8000,
    min_frequency: int = 2,
    lowercase: bool = False,
    model_max_length: int = 512,
) -> PreTrainedTokenizerFast:
    """A BERT-style tokenizer ([CLS] text [SEP]) trained on `texts`, with offset mapping."""
    specials = list(SPECIAL_TOKENS.values())
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        trainer: trainers.Trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials
        )
        tok.decoder = decoders.WordPiece()
    else:
        tok = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##"))
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=specials,
            continuing_subword_prefix="##",
        )
        tok.decoder = decoders.WordPiece()
    steps: list[normalizers.Normalizer] = [normalizers.NFC()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    logger.info("trained a %s tokenizer with %d tokens", kind, tok.get_vocab_size())
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, model_max_length=model_max_length, **SPECIAL_TOKENS
    )
