"""Tiny French clinical corpus and tiny encoder shared by the training and model tests.

No test lives here: the module builds what they need in a temporary folder, offline.
"""

from __future__ import annotations

import random
from pathlib import Path

from transformers import BertConfig, BertModel

from cimcoder.training.tokenizer import train_tokenizer

# (sentence, codes): each note combines a few findings; negated findings carry no code.
FINDINGS: list[tuple[str, set[str]]] = [
    ("Pneumopathie franche lobaire aiguë à pneumocoque du lobe inférieur droit.", {"J13"}),
    ("Antigénurie pneumocoque positive, condensation lobaire avec fièvre à 39.", {"J13"}),
    ("HTA essentielle traitée par amlodipine, chiffres tensionnels équilibrés.", {"I10"}),
    ("Hypertension artérielle essentielle connue, sous IEC.", {"I10"}),
    ("Diabète de type 2 non insulinotraité, HbA1c à 7,2 %.", {"E11.9"}),
    ("Diabète non insulinodépendant sous metformine.", {"E11.9"}),
    ("Infection urinaire à Escherichia coli, ECBU positif.", {"N39.0"}),
    ("Cystite fébrile, leucocyturie et nitrites positifs.", {"N39.0"}),
]
FILLERS = [
    "Patient de 67 ans adressé par son médecin traitant.",
    "Patiente de 54 ans, sans antécédent notable.",
    "Examen clinique par ailleurs sans particularité.",
    "Retour à domicile avec un suivi par le médecin traitant.",
    "Pas d'allergie médicamenteuse connue.",
]
NEGATIONS = ["Pas d'HTA connue.", "Pas de diabète.", "Absence de signe urinaire."]


def clinical_notes(n: int, seed: int) -> list[tuple[str, set[str]]]:
    """`n` notes with one or two findings each, and their gold codes."""
    rng = random.Random(seed)
    notes = []
    for i in range(n):
        picks = rng.sample(FINDINGS, 1 + (i % 2))
        sentences = [rng.choice(FILLERS)] + [s for s, _ in picks] + [rng.choice(NEGATIONS), rng.choice(FILLERS)]
        codes = set().union(*(c for _, c in picks))
        notes.append((" ".join(sentences), codes))
    return notes


def write_text_folder(folder: Path, notes: list[tuple[str, set[str]]], prefix: str) -> Path:
    """A data set in the shipped layout: text/<id>.txt and codes.tsv."""
    (folder / "text").mkdir(parents=True, exist_ok=True)
    lines = ["stay_id\tcode"]
    for i, (text, codes) in enumerate(notes):
        stay_id = f"{prefix}{i:03d}"
        (folder / "text" / f"{stay_id}.txt").write_text(text, encoding="utf-8")
        lines += [f"{stay_id}\t{code}" for code in sorted(codes)]
    (folder / "codes.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def build_tiny_encoder(folder: Path) -> Path:
    """A 2-layer, 32-wide BERT with a WordPiece vocabulary trained on the notes.

    Byte-identical on every build, in any process (`train_tokenizer` is deterministic and the
    weights are seeded): tests/test_tokenizer_determinism.py checks it.
    """
    texts = [t for t, _ in clinical_notes(60, seed=1)] + [s for s, _ in FINDINGS] * 3
    texts += ["Pneumopathie à pneumocoque", "Hypertension essentielle (primitive)",
              "Diabète sucré de type 2, sans complication", "Infection des voies urinaires, siège non précisé"]
    tokenizer = train_tokenizer(texts, vocab_size=400, min_frequency=1, model_max_length=64)
    config = BertConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
