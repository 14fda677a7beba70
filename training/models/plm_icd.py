"""PLM-ICD: a pretrained encoder read chunk by chunk, with label-wise attention.

Huang et al., "PLM-ICD: Automatic ICD Coding with Pretrained Language Models" (2022):
a long report is split into chunks the encoder can read; the token states of all chunks are
concatenated and every label attends over them with its own query; the attended vector is
scored against the label's own output vector.

Here the label queries and output vectors can start from the encoder's reading of each code's
French label (`head.label_init="text"`), which gives rare and unseen codes a sensible prior.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoModel, AutoTokenizer, PreTrainedModel

from cimcoder.errors import CimcoderError
from cimcoder.run_folder import CONFIG_FILE, LABELS_FILE
from cimcoder.training.config import (
    ChunkingConfig,
    ConfigError,
    RunConfig,
    dump_config,
    read_run_config,
)
from cimcoder.training.labels import LabelSpace, describe_codes
from cimcoder.training.registry import register_model

logger = logging.getLogger(__name__)

ENCODER_DIR = "encoder"
HEAD_FILE = "head.safetensors"

_WORD_CHAR = re.compile(r"\w", re.UNICODE)


class EncoderLoadError(CimcoderError):
    """The encoder directory cannot be loaded as a Hugging Face model + tokenizer."""


# --------------------------------------------------------------------------- chunking


@dataclass
class ChunkedText:
    """One report cut into encoder-sized chunks (special tokens included)."""

    input_ids: list[list[int]]
    offsets: list[list[tuple[int, int]]]  # character span per token; (-1, -1) for specials
    n_tokens: int  # text tokens kept (specials and overlap excluded)
    truncated: bool


class Chunker:
    """Splits reports into chunks of at most `max_chunk_tokens`, `max_chunks` per report."""

    def __init__(self, tokenizer, config: ChunkingConfig) -> None:
        self.tokenizer = tokenizer
        self.config = config
        self.cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        self.sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        if self.cls_id is None or self.sep_id is None:
            raise EncoderLoadError("the tokenizer defines neither [CLS]/[SEP] nor <s>/</s> tokens")

    def __call__(self, texts: Sequence[str]) -> list[ChunkedText]:
        if not texts:
            return []
        enc = self.tokenizer(
            list(texts),
            add_special_tokens=False,
            return_offsets_mapping=True,
            return_attention_mask=False,
            truncation=False,
            verbose=False,
        )
        body = self.config.max_chunk_tokens - 2
        step = body - self.config.stride
        out: list[ChunkedText] = []
        for ids, offs in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            chunks: list[list[int]] = []
            chunk_offs: list[list[tuple[int, int]]] = []
            start = 0
            kept_end = 0
            while start < len(ids) and len(chunks) < self.config.max_chunks:
                piece = ids[start : start + body]
                kept_end = start + len(piece)
                chunks.append([self.cls_id, *piece, self.sep_id])
                chunk_offs.append([(-1, -1), *[tuple(o) for o in offs[start : start + body]], (-1, -1)])
                if start + body >= len(ids):
                    break
                start += step
            if not chunks:  # empty report: one chunk with specials only
                chunks.append([self.cls_id, self.sep_id])
                chunk_offs.append([(-1, -1), (-1, -1)])
            out.append(
                ChunkedText(
                    input_ids=chunks,
                    offsets=chunk_offs,
                    n_tokens=kept_end,
                    truncated=kept_end < len(ids),
                )
            )
        return out


@dataclass
class Batch:
    """Chunked reports padded to tensors: input_ids/attention_mask [B, C, T]."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device))

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())


def collate(docs: Sequence[ChunkedText], pad_id: int) -> Batch:
    n_chunks = max(len(d.input_ids) for d in docs)
    n_tok = max(len(c) for d in docs for c in d.input_ids)
    ids = torch.full((len(docs), n_chunks, n_tok), pad_id, dtype=torch.long)
    mask = torch.zeros((len(docs), n_chunks, n_tok), dtype=torch.long)
    for b, doc in enumerate(docs):
        for c, chunk in enumerate(doc.input_ids):
            ids[b, c, : len(chunk)] = torch.tensor(chunk, dtype=torch.long)
            mask[b, c, : len(chunk)] = 1
    return Batch(ids, mask)


# --------------------------------------------------------------------------- network


class LabelWiseAttention(nn.Module):
    """logit_l = w_l . sum_t softmax_t(q_l . tanh(W h_t)) h_t + b_l"""

    def __init__(self, hidden: int, num_labels: int, attention_dim: int, dropout: float) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden, attention_dim)
        self.queries = nn.Parameter(torch.empty(num_labels, attention_dim))
        self.outputs = nn.Parameter(torch.empty(num_labels, hidden))
        self.bias = nn.Parameter(torch.zeros(num_labels))
        nn.init.normal_(self.queries, std=0.03)
        nn.init.normal_(self.outputs, std=0.03)

    def forward(
        self, states: torch.Tensor, mask: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # states [B, N, H], mask [B, N] (1 = real token)
        states = self.dropout(states)
        z = torch.tanh(self.proj(states))  # [B, N, A]
        scores = torch.einsum("bna,la->bln", z, self.queries.to(z.dtype))  # [B, L, N]
        scores = scores.masked_fill(~mask.bool()[:, None, :], torch.finfo(scores.dtype).min)
        alpha = torch.softmax(scores.float(), dim=-1).to(states.dtype)
        attended = torch.einsum("bln,bnh->blh", alpha, states)  # [B, L, H]
        logits = (attended.float() * self.outputs.float()).sum(-1) + self.bias.float()
        return logits, (alpha if return_attention else None)


class PLMICDNet(nn.Module):
    def __init__(self, encoder: PreTrainedModel, head: LabelWiseAttention) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        bsz, n_chunks, n_tok = input_ids.shape
        flat_ids = input_ids.view(-1, n_tok)
        flat_mask = attention_mask.view(-1, n_tok)
        # Encode only real chunks: short reports in a batch of long ones cost nothing extra.
        real = flat_mask[:, 0].bool()
        hidden = self.encoder.config.hidden_size
        out = self.encoder(input_ids=flat_ids[real], attention_mask=flat_mask[real]).last_hidden_state
        states = out.new_zeros((bsz * n_chunks, n_tok, hidden))
        states[real] = out
        states = states.view(bsz, n_chunks * n_tok, hidden)
        return self.head(states, attention_mask.view(bsz, -1), return_attention)


class ExportableNet(nn.Module):
    """`PLMICDNet` as a graph for export (ONNX): logits [B, L] and attention [B, L, C * T].

    Every chunk is encoded, padding chunks included: boolean indexing of the real chunks
    gives data-dependent shapes that exporters handle badly. A padding chunk's tokens are
    masked in the head, where their attention weight is exactly 0, so the scores are those of
    `PLMICDNet` (its only cost: encoding the padding chunks of a mixed-length batch).
    """

    def __init__(self, net: PLMICDNet) -> None:
        super().__init__()
        self.encoder = net.encoder
        self.head = net.head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bsz, n_chunks, n_tok = input_ids.shape
        out = self.encoder(
            input_ids=input_ids.reshape(-1, n_tok), attention_mask=attention_mask.reshape(-1, n_tok)
        ).last_hidden_state
        states = out.reshape(bsz, n_chunks * n_tok, out.shape[-1])
        logits, alpha = self.head(states, attention_mask.reshape(bsz, -1), return_attention=True)
        assert alpha is not None
        return logits, alpha


ONNX_INPUTS = ("input_ids", "attention_mask")
ONNX_OUTPUTS = ("logits", "attention")


@torch.no_grad()
def export_onnx(net: PLMICDNet, path: str | Path, opset: int = 17) -> Path:
    """Write `net` (encoder + label-wise attention) as an ONNX graph with dynamic batch, chunk
    and token axes; inputs `ONNX_INPUTS` (int64 [B, C, T]), outputs `ONNX_OUTPUTS`."""
    path = Path(path)
    device = next(net.parameters()).device
    graph = ExportableNet(net).cpu().eval()
    # The eager attention traces to plain MatMul/Softmax; SDPA and mask helpers of recent
    # transformers versions trace to shape-specialised code.
    config = net.encoder.config
    previous = getattr(config, "_attn_implementation", None)
    config._attn_implementation = "eager"
    example = (torch.ones((2, 2, 8), dtype=torch.long), torch.ones((2, 2, 8), dtype=torch.long))
    dynamic = {0: "batch", 1: "chunks", 2: "tokens"}
    try:
        with warnings.catch_warnings():
            # Tracing warns of Python values read from shapes (transformers' mask helpers): each
            # is the same for every input here (the mask is as long as the chunk), as the
            # equality test of the ONNX runtime checks on batches of mixed shapes.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message="Exporting aten::index operator")
            torch.onnx.export(
                graph,
                example,
                str(path),
                input_names=list(ONNX_INPUTS),
                output_names=list(ONNX_OUTPUTS),
                dynamic_axes={
                    "input_ids": dynamic,
                    "attention_mask": dynamic,
                    "logits": {0: "batch"},
                    "attention": {0: "batch", 2: "positions"},
                },
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        config._attn_implementation = previous
        net.to(device)
    return path


# --------------------------------------------------------------------------- helpers


def _check_encoder_dir(path: str) -> None:
    p = Path(path)
    looks_local = p.is_absolute() or path.startswith(".") or "artifacts" in p.parts or p.exists()
    if looks_local and not (p / "config.json").is_file():
        hint = ""
        if "cimcoder-fr-mini" in path:
            hint = " Run `cimcoder pretrain` first to build the offline default encoder."
        raise EncoderLoadError(f"no Hugging Face encoder at {path} (config.json missing).{hint}")


def load_encoder(path: str) -> tuple[PreTrainedModel, object]:
    """AutoModel + AutoTokenizer from a local directory (or a hub name when reachable)."""
    _check_encoder_dir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        encoder = AutoModel.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise EncoderLoadError(f"cannot load encoder {path}: {exc}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise EncoderLoadError(f"{path}: a fast tokenizer is needed (offsets for evidence spans)")
    return encoder, tokenizer


def _max_positions(encoder: PreTrainedModel, tokenizer) -> int:
    limit = int(getattr(encoder.config, "max_position_embeddings", 512) or 512)
    if getattr(encoder.config, "model_type", "") in ("roberta", "camembert", "xlm-roberta"):
        limit -= 2  # RoBERTa positions start after the padding index
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 100_000:
        limit = min(limit, tok_max)
    return limit


@torch.no_grad()
def encode_label_texts(
    encoder: PreTrainedModel, tokenizer, texts: Sequence[str], batch_size: int = 64
) -> torch.Tensor:
    """Mean-pooled last hidden states of each text, [len(texts), H]."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    rows = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(
            list(texts[i : i + batch_size]),
            padding=True,
            truncation=True,
            max_length=64,
            return_tensors="pt",
        )
        mask = enc["attention_mask"].to(device)
        out = encoder(input_ids=enc["input_ids"].to(device), attention_mask=mask).last_hidden_state
        m = mask.unsqueeze(-1).to(out.dtype)
        rows.append(((out * m).sum(1) / m.sum(1).clamp(min=1)).float().cpu())
    encoder.train(was_training)
    return torch.cat(rows) if rows else torch.zeros(0, encoder.config.hidden_size)


def _device(device: str | torch.device | None) -> torch.device:
    """`device`, else the CUDA device when one is present, else the CPU."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def _word_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Widen a sub-word span to whole words."""
    while start > 0 and _WORD_CHAR.match(text[start - 1]):
        start -= 1
    while end < len(text) and _WORD_CHAR.match(text[end]):
        end += 1
    return start, end


# --------------------------------------------------------------------------- evidence

# Markers in a ranked row of token positions (`rank_attention`).
SKIP = -1  # padding, or a token of zero weight: never evidence
UNKNOWN = -2  # past the positions kept: their order is not known


def rank_attention(alpha: torch.Tensor, docs: Sequence[ChunkedText], keep: int | None) -> np.ndarray:
    """Token positions of each row of `alpha` by decreasing weight (ties: earlier first).

    `alpha` [B, R, C * T] is the label-wise attention of a batch of `docs` padded to C chunks
    of T tokens. Returns [B, R, k] int32 positions in each report's own flat token list
    (its chunks one after the other, specials included, no padding), k = min(keep, C * T)
    (all positions for `keep=None`). Padding and zero-weight tokens are `SKIP`. When only the
    `keep` heaviest positions are kept, those tied with the lightest kept one may not be all
    of their weight, so they and what follows are `UNKNOWN`: `select_spans` then knows where
    its certain order ends.
    """
    n_pos = alpha.shape[-1]
    k = n_pos if keep is None else max(1, min(keep, n_pos))
    values_t, index_t = torch.topk(alpha, k, dim=-1, sorted=True)
    values = values_t.float().cpu().numpy()
    index = index_t.cpu().numpy().astype(np.int64)
    if (values[..., 1:] == values[..., :-1]).any():
        # torch.topk orders ties arbitrarily: equal weights go by position, as a stable sort.
        order = np.lexsort((index, -values), axis=-1)
        values = np.take_along_axis(values, order, -1)
        index = np.take_along_axis(index, order, -1)
    n_tok = max(len(c) for d in docs for c in d.input_ids)  # as `collate` pads
    n_chunks = n_pos // n_tok
    chunk, tok = np.divmod(index, n_tok)
    out = np.full(index.shape, SKIP, dtype=np.int32)
    for b, doc in enumerate(docs):
        lengths = np.zeros(n_chunks, dtype=np.int64)
        lengths[: len(doc.input_ids)] = [len(c) for c in doc.input_ids]
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        real = tok[b] < lengths[chunk[b]]
        out[b][real] = (starts[chunk[b]] + tok[b])[real]
    out[values <= 0] = SKIP
    if k < n_pos:
        lightest = values[..., -1:]
        out[(values == lightest) & (lightest > 0)] = UNKNOWN
    return out


def select_spans(
    text: str, ranked: Sequence[int], offsets: Sequence[tuple[int, int]], top_k: int
) -> tuple[list[tuple[int, int]], bool]:
    """Up to `top_k` whole-word spans of `text`, heaviest first, from one row of
    `rank_attention` (`offsets`: the character span of each token of the report's flat token
    list). Specials, padding and words already given are skipped. The flag is False when the
    row ran out of known positions before `top_k` spans: the spans are then incomplete."""
    spans: list[tuple[int, int]] = []
    for pos in ranked:
        if pos == UNKNOWN:
            return spans, False
        if pos < 0:
            continue
        start, end = offsets[pos]
        if start < 0 or end <= start:
            continue
        span = _word_span(text, start, end)
        if any(s <= span[0] < e or span[0] <= s < span[1] for s, e in spans):
            continue
        spans.append(span)
        if len(spans) >= top_k:
            break
    return spans, True


def flat_offsets(doc: ChunkedText) -> list[tuple[int, int]]:
    """Character span of each token of the report's flat token list (`rank_attention`)."""
    return [o for chunk_offs in doc.offsets for o in chunk_offs]


class EvidenceIndex:
    """Evidence spans of scored reports, read from the scoring pass's attention.

    `spans(i, codes)` gives what `PLMICDScorer.explain(texts[i], codes, top_k)` gives, from the
    token positions kept per (report, label) during scoring. In the rare row where the kept
    positions do not settle all `top_k` spans (many sub-words or overlap copies of the same
    words at the top), the report's `explain` is run for those codes (`second_passes` counts
    these).
    """

    def __init__(
        self,
        scorer: PLMICDScorer,
        texts: Sequence[str],
        docs: Sequence[ChunkedText],
        ranked: np.ndarray,
        top_k: int,
    ) -> None:
        self.scorer = scorer
        self.texts = list(texts)
        self.docs = list(docs)
        self.ranked = ranked  # [n_reports, n_labels, k]
        self.top_k = top_k
        self.second_passes = 0

    def __len__(self) -> int:
        return len(self.texts)

    def spans(self, i: int, codes: Sequence[str]) -> dict[str, list[tuple[int, int]]]:
        text = self.texts[i]
        space = self.scorer.label_space
        if not text.strip() or not any(c in space for c in codes):
            return {c: [] for c in codes}
        offsets = flat_offsets(self.docs[i])
        result: dict[str, list[tuple[int, int]]] = {}
        unsettled: list[str] = []
        for code in codes:
            if code not in space:
                result[code] = []
                continue
            spans, complete = select_spans(text, self.ranked[i, space.index(code)], offsets, self.top_k)
            result[code] = spans
            if not complete:
                unsettled.append(code)
        if unsettled:
            self.second_passes += 1
            result.update(self.scorer.explain(text, unsettled, top_k=self.top_k))
        return result


def _sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-logits.astype(np.float64)))).astype(np.float32)


# --------------------------------------------------------------------------- scorer


@register_model("plm_icd")
class PLMICDScorer:
    """Trainable scorer: `net` (encoder + label-wise attention) and its tokenizer."""

    def __init__(
        self,
        net: PLMICDNet,
        tokenizer,
        label_space: LabelSpace,
        config: RunConfig,
    ) -> None:
        self.net = net
        self.tokenizer = tokenizer
        self.label_space = label_space
        self.labels = list(label_space.codes)
        self.config = config
        limit = _max_positions(net.encoder, tokenizer)
        if config.model.chunking.max_chunk_tokens > limit:
            raise ConfigError(
                f"model.chunking.max_chunk_tokens={config.model.chunking.max_chunk_tokens} "
                f"exceeds what the encoder reads ({limit} tokens)"
            )
        self.chunker = Chunker(tokenizer, config.model.chunking)

    # -- building

    @classmethod
    def from_config(
        cls, config: RunConfig, label_space: LabelSpace, device: str | torch.device | None = None
    ) -> PLMICDScorer:
        """A new scorer on `device` (default: CUDA when present, else CPU), where the label
        texts are read for `label_init: text` and where training goes on."""
        if not label_space.codes:
            raise CimcoderError("the label space is empty: no training code passed min_count")
        encoder, tokenizer = load_encoder(config.model.encoder)
        hidden = encoder.config.hidden_size
        head_cfg = config.model.head
        head = LabelWiseAttention(
            hidden, len(label_space), head_cfg.attention_dim or hidden, head_cfg.dropout
        )
        scorer = cls(PLMICDNet(encoder, head), tokenizer, label_space, config)
        scorer.net.to(_device(device))
        if head_cfg.label_init == "text":
            scorer.init_from_label_text(
                describe_codes(label_space.codes, label_space.terminology, head_cfg.label_text)
            )
        if config.model.freeze_encoder:
            for p in encoder.parameters():
                p.requires_grad_(False)
        return scorer

    @torch.no_grad()
    def init_from_label_text(self, texts: Sequence[str]) -> None:
        """Queries and output vectors from the encoder's mean-pooled reading of label texts.

        Mean-pooled sentence vectors of one encoder are all alike; centring them keeps what
        distinguishes one label from another.
        """
        head = self.net.head
        emb = encode_label_texts(self.net.encoder, self.tokenizer, texts)
        emb = emb.to(head.outputs.device)
        centred = emb - emb.mean(0, keepdim=True)
        norm = emb.norm(dim=-1).mean().clamp(min=1e-6)
        head.outputs.copy_(nn.functional.normalize(centred, dim=-1) * (2.0 / norm))
        if head.proj.in_features == head.proj.out_features:
            # Identity projection: attention starts as the likeness of each token's state to
            # the label's reading, and does not depend on a random draw.
            head.proj.weight.copy_(torch.eye(head.proj.in_features))
            head.proj.bias.zero_()
        z = torch.tanh(head.proj(emb))
        zc = z - z.mean(0, keepdim=True)
        head.queries.copy_(nn.functional.normalize(zc, dim=-1) * math.sqrt(head.queries.shape[1]) * 0.25)

    @torch.no_grad()
    def init_bias_from_counts(self, counts: dict[str, int], n_stays: int) -> None:
        """Start each label's bias at the logit of its training prevalence (smoothed)."""
        n = max(n_stays, 1)
        p = torch.tensor(
            [(counts.get(c, 0) + 0.1) / (n + 1.0) for c in self.labels], dtype=torch.float32
        ).clamp(1e-5, 0.5)
        self.net.head.bias.copy_(torch.log(p / (1 - p)))

    # -- scoring

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def chunk(self, texts: Sequence[str]) -> list[ChunkedText]:
        return self.chunker(texts)

    def batch(self, docs: Sequence[ChunkedText]) -> Batch:
        return collate(docs, self.chunker.pad_id)

    def forward_batch(
        self, batch: Batch, return_attention: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits [B, L] (and attention [B, L, C * T]) of one padded batch, in eval mode: the
        one place scoring and `explain` run the network (an ONNX runtime replaces it)."""
        batch = batch.to(self.device)
        return self.net(batch.input_ids, batch.attention_mask, return_attention=return_attention)

    def predict_logits(self, docs: Sequence[ChunkedText], batch_size: int = 8) -> np.ndarray:
        return self._score_docs(docs, batch_size)[0]

    @torch.inference_mode()
    def _score_docs(
        self, docs: Sequence[ChunkedText], batch_size: int = 8, keep: int = 0
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits [n, L]; with `keep` > 0 also the `keep` heaviest attention positions per
        (report, label), ranked (`rank_attention`, [n, L, k]), from the same forward pass."""
        was_training = self.net.training
        self.net.eval()
        out = np.zeros((len(docs), len(self.labels)), dtype=np.float32)
        ranked: np.ndarray | None = None
        # Batches of reports of similar length: less padding, same scores.
        order = sorted(range(len(docs)), key=lambda j: sum(len(c) for c in docs[j].input_ids))
        try:
            for i in range(0, len(order), batch_size):
                idx = order[i : i + batch_size]
                batch_docs = [docs[j] for j in idx]
                logits, alpha = self.forward_batch(self.batch(batch_docs), return_attention=keep > 0)
                out[idx] = logits.float().cpu().numpy()
                if alpha is not None:
                    rows = rank_attention(alpha, batch_docs, keep)
                    if ranked is None:
                        ranked = np.full((len(docs), len(self.labels), keep), SKIP, dtype=np.int32)
                    ranked[idx, :, : rows.shape[-1]] = rows
        finally:
            self.net.train(was_training)
        return out, ranked

    def _chunk_for_scoring(self, texts: Sequence[str]) -> list[ChunkedText]:
        if isinstance(texts, str):
            raise TypeError("predict_scores takes a list of texts, not one string")
        docs = self.chunk(texts)
        truncated = sum(d.truncated for d in docs)
        if truncated:
            logger.info(
                "%d of %d reports exceed the %d-token budget; their end is not read",
                truncated,
                len(docs),
                self.config.model.chunking.max_total_tokens,
            )
        return docs

    def predict_scores(self, texts: Sequence[str], batch_size: int = 8) -> np.ndarray:
        logits = self.predict_logits(self._chunk_for_scoring(texts), batch_size)
        return _sigmoid(logits)

    def predict_scores_with_evidence(
        self, texts: Sequence[str], batch_size: int = 8, top_k: int = 3, keep: int | None = None
    ) -> tuple[np.ndarray, EvidenceIndex]:
        """`predict_scores` and, from the same forward pass, every code's evidence spans.

        Per (report, label) the `keep` heaviest token positions of the label's attention are
        kept (default 4 x `top_k`, at least 12: room for sub-words, overlap copies and
        specials); `EvidenceIndex.spans(i, codes)` turns them into the spans
        `explain(texts[i], codes, top_k)` gives.
        """
        docs = self._chunk_for_scoring(texts)
        keep = max(4 * top_k, 12) if keep is None else keep
        if keep < 1:
            raise ValueError("keep must be at least 1")
        logits, ranked = self._score_docs(docs, batch_size, keep=keep)
        if ranked is None:  # no report
            ranked = np.zeros((0, len(self.labels), keep), dtype=np.int32)
        return _sigmoid(logits), EvidenceIndex(self, texts, docs, ranked, top_k)

    @torch.inference_mode()
    def explain(
        self, text: str, codes: Sequence[str], top_k: int = 3
    ) -> dict[str, list[tuple[int, int]]]:
        """Character spans of the words each code's attention weighs most (whole words)."""
        wanted = [c for c in codes if c in self.label_space]
        if not wanted or not text.strip():
            return {c: [] for c in codes}
        doc = self.chunk([text])[0]
        batch = self.batch([doc])
        was_training = self.net.training
        self.net.eval()
        try:
            _, alpha = self.forward_batch(batch, return_attention=True)
        finally:
            self.net.train(was_training)
        assert alpha is not None
        rows = torch.tensor([self.label_space.index(c) for c in wanted], device=alpha.device)
        ranked = rank_attention(alpha[:, rows], [doc], keep=None)[0]  # every position: complete
        offsets = flat_offsets(doc)
        found = {code: select_spans(text, ranked[r], offsets, top_k)[0] for r, code in enumerate(wanted)}
        return {c: found.get(c, []) for c in codes}

    # -- persistence

    def save(self, run_dir: str | Path) -> None:
        run = Path(run_dir)
        run.mkdir(parents=True, exist_ok=True)
        self.net.encoder.save_pretrained(run / ENCODER_DIR)
        self.tokenizer.save_pretrained(run / ENCODER_DIR)
        head_state = {k: v.detach().float().cpu().contiguous() for k, v in self.net.head.state_dict().items()}
        save_file(head_state, str(run / HEAD_FILE))
        self.label_space.save(run)
        dump_config(self.config, run / CONFIG_FILE)

    @classmethod
    def load(cls, run_dir: str | Path, device: str | torch.device | None = None) -> PLMICDScorer:
        """The scorer saved in `run_dir`, on `device` (default: CUDA when present, else CPU)."""
        run = Path(run_dir)
        for needed in (ENCODER_DIR, HEAD_FILE, CONFIG_FILE):
            if not (run / needed).exists():
                raise CimcoderError(f"{run} is not a complete plm_icd run folder ({needed} missing)")
        config = read_run_config(run)
        label_space = LabelSpace.load(run)
        encoder, tokenizer = load_encoder(str(run / ENCODER_DIR))
        state = load_file(str(run / HEAD_FILE))
        num_labels, attention_dim = state["queries"].shape
        if num_labels != len(label_space):
            raise CimcoderError(
                f"{run}: head has {num_labels} labels but {LABELS_FILE} lists {len(label_space)}"
            )
        head = LabelWiseAttention(encoder.config.hidden_size, num_labels, attention_dim, 0.0)
        head.load_state_dict(state)
        net = PLMICDNet(encoder, head)
        net.eval()
        net.to(_device(device))
        return cls(net, tokenizer, label_space, config)
