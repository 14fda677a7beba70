"""Synthetic French stays: valid PMSI codes, mentions not to code, spans, determinism, speed."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path

import pytest

from cimcoder.terminologies import load_cim10
from cimcoder.training.corpora import CorpusError, load_dataset
from cimcoder.training.corpora.synth import generate_corpus, generate_stay, iter_stays, write_jsonl
from cimcoder.training.corpora.synth_scenarios import (
    COMORBIDITIES,
    COMPLICATIONS,
    FAMILY,
    NEGATED,
    PAST_RESOLVED,
    RULED_OUT,
    SCENARIOS,
)

# The nine CRH sections, each with the headings a French report may use for it.
SECTIONS = (
    ("motif",), ("antécédents",), ("mode de vie", "contexte social"),
    ("histoire de la maladie", "anamnèse"), ("examen clinique",),
    ("examens complémentaires", "bilan paraclinique"), ("évolution",), ("conclusion", "au total"),
    ("traitement de sortie", "ordonnance de sortie"),
)


def test_every_scenario_code_respects_pmsi_restrictions() -> None:
    cim10 = load_cim10()
    assert 60 <= len(SCENARIOS) <= 100
    assert len({s.key for s in SCENARIOS}) == len(SCENARIOS)
    for scenario in SCENARIOS:
        dp = cim10[scenario.dp[0]]
        assert dp.code == scenario.dp[0], scenario.key  # canonical spelling
        assert dp.restrictions is not None and dp.restrictions.allows("DP"), (scenario.key, dp.code)
        if scenario.dr is not None:
            assert cim10[scenario.dr[0]].restrictions.allows("DR"), scenario.key
        if scenario.dp[0] in ("Z51.1", "Z51.5", "Z49.1"):
            assert scenario.dr is not None, f"{scenario.key}: a session DP needs a DR"
        for extra in scenario.extras:
            assert cim10[extra.code].restrictions.allows("DAS"), (scenario.key, extra.code)
        for key in scenario.comorbidities:
            assert key in COMORBIDITIES, (scenario.key, key)
    for condition in [*COMORBIDITIES.values(), *COMPLICATIONS.values()]:
        assert cim10[condition.code].restrictions.allows("DAS"), condition.code
    for _sentence, code in (*NEGATED, *RULED_OUT, *FAMILY, *PAST_RESOLVED):
        assert code in cim10, code


def test_stays_are_labelled_synthetic_and_coded_consistently() -> None:
    cim10 = load_cim10()
    seen_negations = Counter()
    for item in iter_stays(300, seed=7):
        stay = item.stay
        assert stay.synthetic is True
        roles = [d.role for d in stay.diagnoses]
        assert roles[0] == "DP" and roles.count("DP") == 1
        assert len(stay.codes) == len(stay.diagnoses)  # no duplicated code
        for diag in stay.diagnoses:
            assert cim10[diag.code].restrictions.allows(diag.role), (item.scenario, diag)
            assert diag.span is not None, (item.scenario, diag.code)
            start, end = diag.span
            assert 0 <= start < end <= len(stay.text)
        if stay.codes[0] in ("Z51.1", "Z51.5", "Z49.1"):
            assert roles[1] == "DR"
        # Mentions not to code are never among the codes (nor their category).
        categories = {code[:3] for code in stay.codes}
        for code, (start, end) in item.not_coded:
            assert code not in stay.codes and code[:3] not in categories
            sentence = stay.text[start:end]
            seen_negations[sentence.split()[0]] += 1
        lower = stay.text.lower()
        missing = [names[0] for names in SECTIONS if not any(name in lower for name in names)]
        assert not missing, (item.scenario, missing)
    assert seen_negations["Pas"] + seen_negations["Absence"] > 0
    assert seen_negations["Père"] + seen_negations["Mère"] + seen_negations["Frère"] + seen_negations["Sœur"] > 0


def test_spans_point_at_the_supporting_mention() -> None:
    item = next(i for i in iter_stays(200, seed=3) if i.scenario == "ic_decompensee")
    stay = item.stay
    dp = stay.diagnoses[0]
    assert dp.code == "I50.01"
    mention = stay.text[dp.span[0]:dp.span[1]].lower()
    assert "cardiaque" in mention or "icc" in mention


def test_a_long_term_anticoagulant_is_coded_z92_1_at_the_drug() -> None:
    # The PMSI codes long-term anticoagulation (Z92.1) as a DAS: a comorbidity's anticoagulant
    # in the treatment at entry is coded, at the drug's name.
    drugs = ("apixaban", "rivaroxaban", "dabigatran", "warfarine", "fluindione")
    stays = [i.stay for i in iter_stays(300, seed=7)]
    coded = [s for s in stays if "Z92.1" in s.codes]
    assert len(coded) >= 10
    for stay in coded:
        [z] = [d for d in stay.diagnoses if d.code == "Z92.1"]
        assert z.role == "DAS" and stay.text[z.span[0]:z.span[1]].startswith(drugs)


def test_generation_is_deterministic_and_seeded() -> None:
    a = generate_stay(11, seed=5, n=50).stay
    b = generate_stay(11, seed=5, n=50).stay
    c = generate_stay(11, seed=6, n=50).stay
    assert a == b
    assert a.text != c.text


def test_lengths_range_from_short_to_several_thousand_words() -> None:
    words = [len(i.stay.text.split()) for i in iter_stays(400, seed=1)]
    assert min(words) < 400
    assert max(words) > 2000
    assert sum(words) / len(words) > 250


def test_abbreviations_and_multiple_documents_occur() -> None:
    corpus = generate_corpus(400, seed=2)
    texts = " ".join(corpus.texts)
    for abbreviation in ("HTA", "BPCO", "FA", "DT2"):
        assert f" {abbreviation}" in texts or f"- {abbreviation}" in texts, abbreviation
    assert any(len(s.documents) == 2 and s.documents[1].doc_type == "cro" for s in corpus)
    patients = Counter(s.patient_id for s in corpus)
    assert max(patients.values()) > 1  # some patients come back: splits must group them
    assert len({s.codes[0] for s in corpus}) > 40


def test_write_jsonl_streams_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "synth.jsonl"
    assert write_jsonl(path, n=120, seed=4) == 120
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert first["synthetic"] is True
    corpus = load_dataset(path)
    assert len(corpus) == 120 and corpus.report.ok
    assert corpus.stays[0] == generate_stay(0, seed=4, n=120).stay


def test_shipped_synth_name() -> None:
    corpus = load_dataset("synth-fr/25@3")
    assert len(corpus) == 25 and all(s.synthetic for s in corpus)


def test_bad_arguments() -> None:
    with pytest.raises(CorpusError, match="from 1 to"):
        generate_corpus(0)
    with pytest.raises(CorpusError, match="no such folder"):
        write_jsonl("/nonexistent-folder/x.jsonl", n=3)


def test_rate_is_well_above_10000_stays_per_minute(tmp_path: Path) -> None:
    start = time.perf_counter()
    write_jsonl(tmp_path / "rate.jsonl", n=1000, seed=0)
    elapsed = time.perf_counter() - start
    # 10,000 stays must take < 60 s; allow a loaded machine a 3x margin on 1,000.
    assert elapsed < 18, f"1,000 synthetic stays took {elapsed:.1f} s"
