"""Train a French subword tokenizer (HF `tokenizers`) saved as a `PreTrainedTokenizerFast`.

The result loads with `AutoTokenizer.from_pretrained(dir)`, like any downloaded checkpoint.
Accents are kept: "aiguë" and "aigue" are not the same word in a CRH.

Training is reproducible: the same texts and options give a byte-identical `tokenizer.json` in
every process (see `_continuation_tokens`).
"""

from __future__ import annotations

import json
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
    """A BERT-style tokenizer ([CLS] text [SEP]) trained on `texts`, with offset mapping.

    Deterministic: the same `texts` and options give the same vocabulary, with the same ids.
    """
    texts = texts if isinstance(texts, list) else list(texts)
    specials = list(SPECIAL_TOKENS.values())
    steps: list[normalizers.Normalizer] = [normalizers.NFC()]
    if lowercase:
        steps.append(normalizers.Lowercase())
    if kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    else:
        tok = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.Sequence(steps)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    continuations = _continuation_tokens(tok, texts)
    seeded = specials + continuations  # the trainer gives these their ids first, in this order
    if kind == "wordpiece":
        trainer: trainers.Trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=seeded
        )
    else:
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=seeded,
            continuing_subword_prefix="##",
        )
    tok.train_from_iterator(texts, trainer=trainer)
    tok = _drop_added_tokens(tok, set(continuations))
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


def _continuation_tokens(tok: Tokenizer, texts: list[str]) -> list[str]:
    """The "##c" tokens the trainer would create, one per character seen inside a word, sorted.

    The `tokenizers` BPE/WordPiece trainer (0.23 and before, huggingface/tokenizers#1794) gives
    these tokens their ids while iterating over a hash map that Rust seeds afresh in every
    process, and it breaks ties between equally frequent merges by those ids: the learnt
    vocabulary (not only its order) changed from one run to the next. Handed to the trainer as
    special tokens, they get fixed ids before anything else, and the rest of the training is
    deterministic (the alphabet is sorted, and merges are ranked by count, then by ids).
    """
    assert tok.normalizer is not None and tok.pre_tokenizer is not None
    normalize, pre_tokenize = tok.normalizer.normalize_str, tok.pre_tokenizer.pre_tokenize_str
    words: set[str] = set()
    for text in texts:
        words.update(w for w, _ in pre_tokenize(normalize(text)))
    inner = {c for w in words for c in w[1:]}
    return [f"##{c}" for c in sorted(inner)]


def _drop_added_tokens(tok: Tokenizer, tokens: set[str]) -> Tokenizer:
    """`tok` without `tokens` among its added (special) tokens; they stay in the model's vocabulary.

    The trainer registers its special tokens as added tokens, which the tokenizer would match
    verbatim in the text and skip on decoding: the "##c" ones must be ordinary vocabulary.
    """
    state = json.loads(tok.to_str())
    state["added_tokens"] = [t for t in state["added_tokens"] if t["content"] not in tokens]
    return Tokenizer.from_str(json.dumps(state))
