"""`train_tokenizer` and the tiny test encoder are the same, byte for byte, in every process.

The `tokenizers` trainer used to learn another vocabulary in each process (Rust seeds its hash
maps afresh, and ties between merges were broken by ids handed out in hash-map order), so the
tests' tiny models, and `cimcoder pretrain`, changed from one run to the next.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from test_training_helpers import FINDINGS, build_tiny_encoder, clinical_notes

# Run in a fresh interpreter (no torch import: a second or so): trains both kinds, prints sha256s.
FINGERPRINT = """
import hashlib, json, sys
from pathlib import Path
from cimcoder.training.tokenizer import train_tokenizer

out = Path(sys.argv[1])
texts = json.loads(Path(sys.argv[2]).read_text(encoding="utf-8"))
sums = {}
for kind, lowercase in (("wordpiece", False), ("bpe", True)):
    folder = out / kind
    train_tokenizer(texts, kind=kind, vocab_size=300, min_frequency=1, lowercase=lowercase).save_pretrained(folder)
    sums[kind] = hashlib.sha256((folder / "tokenizer.json").read_bytes()).hexdigest()
print(json.dumps(sums))
"""


def _fingerprint(folder: Path, hash_seed: str) -> dict[str, str]:
    corpus = folder.with_name("corpus.json")
    texts = [t for t, _ in clinical_notes(80, seed=5)] + [s for s, _ in FINDINGS]
    corpus.write_text(json.dumps(texts, ensure_ascii=False), encoding="utf-8")
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        [sys.executable, "-c", FINGERPRINT, str(folder), str(corpus)],
        env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_tokenizer_training_is_the_same_in_every_process(tmp_path: Path) -> None:
    first = _fingerprint(tmp_path / "a", hash_seed="1")
    second = _fingerprint(tmp_path / "b", hash_seed="2")
    assert set(first) == {"wordpiece", "bpe"}
    assert first == second
    for kind in first:
        assert (tmp_path / "a" / kind / "tokenizer.json").read_bytes() == (
            tmp_path / "b" / kind / "tokenizer.json"
        ).read_bytes()


def test_retrained_tokenizer_keeps_only_the_bert_specials_as_added_tokens(tmp_path: Path) -> None:
    # The "##c" tokens handed to the trainer to fix their ids are ordinary vocabulary: "##e" in a
    # text is not matched verbatim, and decoding joins the pieces back.
    build_tiny_encoder(tmp_path)
    state = json.loads((tmp_path / "tokenizer.json").read_text(encoding="utf-8"))
    assert [t["content"] for t in state["added_tokens"]] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert "##e" in state["model"]["vocab"]
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert "##e" not in tokenizer.tokenize("Pneumopathie ##e")
    text = "Pneumopathie franche lobaire aiguë à pneumocoque."
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_tiny_encoder_is_the_same_on_every_build(tmp_path: Path) -> None:
    sums = []
    for name in ("a", "b"):
        folder = build_tiny_encoder(tmp_path / name)
        sums.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())})
    assert "tokenizer.json" in sums[0] and "model.safetensors" in sums[0]
    assert sums[0] == sums[1]
