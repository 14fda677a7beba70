"""Predictor on a tiny PLM-ICD (a BERT built from a local config): chunk budget, evidence,
save/reload determinism."""

from __future__ import annotations

from pathlib import Path

import pytest
from plm_builders import build_untrained_run
from test_inference_predictor import tiny_corpus


def build_tiny_plm_run(run_dir: Path) -> Path:
    """A 1-layer BERT encoder + label-wise head over the tiny corpus's label space (untrained
    but with biases forced from training counts, so decoding is deterministic)."""
    texts, code_sets = tiny_corpus()
    return build_untrained_run(
        run_dir, texts, code_sets, vocab_size=400, min_frequency=1, hidden=32, layers=1,
        heads=2, intermediate=64, max_positions=64, chunking=(32, 2),
    )


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


def _reports() -> list[str]:
    """Notes of the tiny corpus of several lengths (one chunk, two chunks, truncated) and a
    short one, so that a batch pads both chunks and tokens."""
    texts, _ = tiny_corpus(n=9, seed=3)
    return [*texts, "Chute mécanique au domicile.", " ".join(texts[:3])]


def _full_sort_spans(scorer, text: str, codes: list[str], top_k: int) -> dict[str, list[tuple[int, int]]]:  # type: ignore[no-untyped-def]
    """The plain reading of `explain`: every token by decreasing attention (stable), specials and
    padding skipped, whole words, no overlap, `top_k` at most."""
    import numpy as np
    import torch

    from cimcoder.training.models.plm_icd import _word_span

    doc = scorer.chunk([text])[0]
    batch = scorer.batch([doc])
    with torch.inference_mode():
        _, alpha = scorer.net(batch.input_ids, batch.attention_mask, return_attention=True)
    n_tok = batch.input_ids.shape[-1]
    offsets = [o for offs in doc.offsets for o in offs + [(-1, -1)] * (n_tok - len(offs))]
    out = {}
    for code in codes:
        weights = alpha[0, scorer.label_space.index(code)].float().numpy()
        spans: list[tuple[int, int]] = []
        for pos in np.argsort(-weights, kind="stable"):
            start, end = offsets[pos]
            if start < 0 or end <= start or weights[pos] <= 0:
                continue
            span = _word_span(text, start, end)
            if not any(s <= span[0] < e or span[0] <= s < span[1] for s, e in spans):
                spans.append(span)
            if len(spans) >= top_k:
                break
        out[code] = spans
    return out


def test_one_pass_evidence_is_what_explain_gives(plm_run: Path) -> None:
    from cimcoder.inference import Predictor

    predictor = Predictor.load(plm_run)
    scorer = predictor.scorer
    texts = _reports()
    top_k = predictor.evidence_top_k
    explained = [scorer.explain(text, scorer.labels, top_k=top_k) for text in texts]
    # explain itself: the plain full-sort reading of the attention.
    for text, spans in zip(texts, explained, strict=True):
        assert spans == _full_sort_spans(scorer, text, scorer.labels, top_k)
        assert any(spans.values())

    # Predictor: every suggested code, same spans in the same order (batches of 4 reports of
    # different lengths, as the CLI and the service batch them).
    results = predictor.predict(texts, batch_size=4)
    n_suggested = 0
    for spans, result in zip(explained, results, strict=True):
        for code in result.codes:
            if code.decision == "reject":
                continue
            n_suggested += 1
            assert [(e.start, e.end) for e in code.evidence] == spans[code.code], code.code
    assert n_suggested >= len(texts)

    # The index itself, for every label: settled from the kept positions (no second pass) ...
    _, index = scorer.predict_scores_with_evidence(texts, batch_size=4, top_k=top_k)
    for i, spans in enumerate(explained):
        assert index.spans(i, [*scorer.labels, "Z99.9"]) == {**spans, "Z99.9": []}
    assert index.second_passes == 0
    # ... and, when too few positions are kept to settle them, completed by explain.
    _, short = scorer.predict_scores_with_evidence(texts, batch_size=4, top_k=top_k, keep=top_k)
    for i, spans in enumerate(explained):
        assert short.spans(i, scorer.labels) == spans
    assert short.second_passes == len(texts)


def test_predict_with_evidence_runs_the_encoder_once_per_batch(
    plm_run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cimcoder.inference import Predictor

    predictor = Predictor.load(plm_run)
    encoder = predictor.scorer.net.encoder
    calls = []
    forward = encoder.forward

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(kwargs.get("input_ids", args[0] if args else None).shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(encoder, "forward", counted)
    texts = _reports()  # 11 reports: batches of 4, 4 and 3
    results = predictor.predict(texts, batch_size=4)
    assert any(code.evidence for result in results for code in result.codes)
    assert len(calls) == 3, f"{len(calls)} encoder passes for 3 batches"
    calls.clear()
    assert predictor.predict(texts, batch_size=4, evidence=False)
    assert len(calls) == 3
