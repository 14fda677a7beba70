"""Synthetic French hospital stays (comptes-rendus d'hospitalisation), clearly labelled.

Every stay has `synthetic=True`. They are for demos, tests and scale runs, never to claim
coding quality: the text is templated from the curated scenarios of `synth_scenarios.py`.

What a stay holds:
- the usual CRH sections (motif, antécédents, mode de vie, histoire de la maladie, examen
  clinique, examens complémentaires, évolution, conclusion, traitement de sortie), and a
  compte rendu opératoire for surgical scenarios;
- a DP (and a DR when the DP is a session code such as Z51.1 chemotherapy, Z51.5 palliative
  care or Z49.1 dialysis), DAS from treated comorbidities, complications of the stay,
  scenario-specific associated diagnoses and long-term treatments the PMSI codes (an
  anticoagulant: Z92.1): codes checked against the CIM-10 FR restrictions;
- mentions that must NOT be coded: negated ("Pas d'HTA connue"), suspected then ruled out
  ("suspicion d'EP éliminée par l'angioscanner"), family history ("Père diabétique"), past
  resolved history ("Appendicectomie dans l'enfance"); they are returned in
  `SynthStay.not_coded` with their spans;
- abbreviations (HTA, BPCO, FA, ACFA...), synonyms and light typos;
- lengths from a few hundred to several thousand words (long stays carry daily notes);
- for each code, `Diagnosis.span`: char offsets in `Stay.text` of its first supporting mention.

Generation is seedable and per-stay deterministic: stay i depends only on (seed, i, n).
"""

from __future__ import annotations

import datetime
import logging
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

from cimcoder.training.corpora.errors import CorpusError
from cimcoder.training.corpora.schema import (
    DOCUMENT_SEPARATOR,
    SEXES,
    Corpus,
    Diagnosis,
    Document,
    LoadReport,
    Role,
    Stay,
    StayContext,
)
from cimcoder.training.corpora.synth_scenarios import (
    COMORBIDITIES,
    COMPLICATIONS,
    FAMILY,
    LONG_TERM_TREATMENTS,
    NEGATED,
    PAST_RESOLVED,
    RULED_OUT,
    SCENARIOS,
    Extra,
    Scenario,
)

logger = logging.getLogger(__name__)

_MARK = re.compile(r"\[(DP|DR|M)\]")
_BASE_DATE = datetime.date(2022, 1, 1)
# Scenario frequencies follow a long tail, so that a corpus has frequent and rare codes.
_CUM_WEIGHTS = list(accumulate(1.0 / (1.0 + rank / 6.0) for rank in range(len(SCENARIOS))))
_MAX_N = 50_000_000

_HEADINGS = {
    "motif": ("MOTIF D'HOSPITALISATION", "Motif d'hospitalisation :", "Motif :"),
    "atcd": ("ANTÉCÉDENTS", "Antécédents :", "Antécédents médicaux et chirurgicaux :"),
    "family": ("Antécédents familiaux :",),
    "life": ("MODE DE VIE", "Mode de vie :", "Contexte social :"),
    "entry": ("Traitement à l'entrée :", "Traitement habituel :"),
    "hdm": ("HISTOIRE DE LA MALADIE", "Histoire de la maladie :", "Anamnèse :"),
    "exam": ("EXAMEN CLINIQUE", "Examen clinique à l'entrée :", "Examen clinique :"),
    "workup": ("EXAMENS COMPLÉMENTAIRES", "Examens complémentaires :", "Bilan paraclinique :"),
    "evolution": ("ÉVOLUTION", "Évolution dans le service :", "Évolution :"),
    "conclusion": ("CONCLUSION", "Conclusion :", "Au total :"),
    "exit": ("TRAITEMENT DE SORTIE", "Traitement de sortie :", "Ordonnance de sortie :"),
}
_LIFE = (
    "Vit à domicile avec son conjoint, autonome pour les actes de la vie quotidienne.",
    "Vit seul{e} en appartement au 2e étage sans ascenseur, aide ménagère deux fois par semaine.",
    "Retraité{e}, ancien{ne} employé{e} de bureau. Marié{e}, deux enfants.",
    "Vit en EHPAD, déambule avec un déambulateur.",
    "En activité professionnelle, sportif{ve} occasionnel{le}.",
    "Vit chez ses parents, scolarisé{e}.",
    "Vit avec sa fille qui l'aide pour les courses, passage d'une infirmière à domicile pour le pilulier.",
)
_EXAM_EXTRA = (
    "Abdomen souple, dépressible et indolore.",
    "Bruits du cœur réguliers, sans souffle audible.",
    "Auscultation pulmonaire claire et symétrique.",
    "Mollets souples et indolores.",
    "Conscience normale, orienté{e} dans le temps et l'espace.",
    "Pas de raideur méningée.",
    "État cutané sans particularité.",
)
_EVOLUTION_EXTRA = (
    "La sortie est organisée en lien avec le médecin traitant.",
    "L'assistante sociale a été sollicitée pour renforcer les aides à domicile.",
    "Le traitement habituel a été repris sans modification.",
    "Éducation thérapeutique réalisée auprès de {lep} et de son entourage.",
    "Une consultation de suivi est programmée dans un mois.",
)
_DAILY = (
    "{lep_cap} est stable, apyrétique, constantes correctes.",
    "Bonne tolérance du traitement, poursuite de la mobilisation.",
    "Douleur contrôlée, EVA à 2/10, reprise progressive de l'alimentation.",
    "Bilan biologique de contrôle : {bio}.",
    "Passage du kinésithérapeute, marche dans le couloir avec aide.",
    "Entretien avec la famille au sujet du projet de sortie.",
    "Nuit calme, sommeil correct, pas d'événement nocturne.",
    "Diurèse conservée, transit présent.",
    "Pansement propre, cicatrice en bon état.",
    "Poursuite du traitement en cours, pas de modification ce jour.",
    "Réévaluation médicale : évolution conforme aux attentes.",
    "Constantes : PA {pas}/{pad} mmHg, FC {fc}/min, SpO2 {sat} %.",
    "Consultation diététique : apports jugés suffisants.",
    "L'équipe paramédicale ne signale pas de difficulté particulière.",
)
_CONCLUSION = ("Au total : [DP].", "Diagnostic retenu : [DP].", "Au total, {lep} a été pris{e} en charge pour [DP].")
_CONCLUSION_DR = ("Ce séjour s'inscrit dans le cadre d'[DR].", "Pathologie sous-jacente : [DR].")
_DOCTORS = ("Dr A. Martin", "Dr C. Bernard", "Dr L. Petit", "Dr S. Moreau", "Dr J. Laurent", "Dr N. Girard")
_ACCENTS = str.maketrans("éèêàùç", "eeeauc")


@dataclass
class SynthStay:
    """A generated stay and the mentions in it that must not be coded (code, span)."""

    stay: Stay
    not_coded: list[tuple[str, tuple[int, int]]] = field(default_factory=list)
    scenario: str = ""


class _Text:
    """Appends text pieces, recording the spans of coded mentions."""

    __slots__ = ("decoys", "parts", "pos", "spans")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.pos = 0
        self.spans: dict[str, tuple[int, int]] = {}
        self.decoys: list[tuple[str, tuple[int, int]]] = []

    def add(self, text: str) -> None:
        self.parts.append(text)
        self.pos += len(text)

    def mention(self, text: str, code: str) -> None:
        start = self.pos
        self.add(text)
        self.spans.setdefault(code, (start, self.pos))

    def decoy(self, text: str, code: str) -> None:
        start = self.pos
        self.add(text)
        self.decoys.append((code, (start, self.pos)))

    def value(self) -> str:
        return "".join(self.parts)


def _typo(rng: random.Random, text: str) -> str:
    """One light typo: swapped letters, a lost accent or a doubled letter, in a long word."""
    words = text.split(" ")
    candidates = [i for i, word in enumerate(words) if len(word) > 5 and word.isalpha()]
    if not candidates:
        return text
    i = rng.choice(candidates)
    word = words[i]
    kind = rng.random()
    if kind < 0.4:
        j = rng.randrange(1, len(word) - 2)
        word = word[:j] + word[j + 1] + word[j] + word[j + 2:]
    elif kind < 0.7 and word != word.translate(_ACCENTS):
        word = word.translate(_ACCENTS)
    else:
        j = rng.randrange(1, len(word) - 1)
        word = word[:j] + word[j] + word[j:]
    words[i] = word
    return " ".join(words)


class _Writer:
    def __init__(self, rng: random.Random, fmt: dict[str, str], typo_rate: float) -> None:
        self.rng = rng
        self.fmt = fmt
        self.typo_rate = typo_rate
        self.out = _Text()

    def f(self, text: str) -> str:
        return text.format_map(self.fmt) if "{" in text else text

    def plain(self, text: str) -> None:
        text = self.f(text)
        if self.rng.random() < self.typo_rate:
            text = _typo(self.rng, text)
        self.out.add(text)

    def heading(self, key: str) -> None:
        self.out.add("\n\n" + self.rng.choice(_HEADINGS[key]) + "\n")

    def render(self, template: str, marks: dict[str, tuple[str, str]]) -> None:
        """A template whose [DP]/[DR]/[M] marks become coded mentions."""
        text = self.f(template)
        pos = 0
        for match in _MARK.finditer(text):
            self.plain(text[pos:match.start()])
            code, phrase = marks[match.group(1)]
            phrase = self.f(phrase)
            if self.rng.random() < self.typo_rate / 2:
                phrase = _typo(self.rng, phrase)
            self.out.mention(phrase, code)
            pos = match.end()
        self.plain(text[pos:])


def _of(noun: str) -> str:
    """French "de" with elision: "de cardiologie", "d'oncologie"."""
    return f"d'{noun}" if noun[:1].lower() in "aeiouyéèêâîôh" else f"de {noun}"


def _number(value: float, digits: int = 1) -> str:
    return f"{value:.{digits}f}".replace(".", ",")


def _bio(rng: random.Random) -> str:
    return (
        f"Hb {_number(rng.uniform(11.5, 15.5))} g/dl, leucocytes {_number(rng.uniform(4.5, 9.5))} G/l, "
        f"plaquettes {rng.randint(160, 380)} G/l, CRP {rng.randint(1, 9)} mg/l, "
        f"créatinine {rng.randint(55, 100)} µmol/l, natrémie {rng.randint(136, 143)} mmol/l, "
        f"kaliémie {_number(rng.uniform(3.7, 4.8))} mmol/l"
    )


def _vitals(rng: random.Random) -> dict[str, str]:
    return {
        "pas": str(rng.randint(110, 150)), "pad": str(rng.randint(60, 90)),
        "fc": str(rng.randint(60, 95)), "sat": str(rng.randint(94, 99)),
    }


def generate_stay(index: int, seed: int = 0, n: int = 1) -> SynthStay:
    """Stay number `index` of a corpus of `n` synthetic stays drawn with `seed`."""
    rng = random.Random(f"cimcoder-synth:{seed}:{index}")
    scenario: Scenario = rng.choices(SCENARIOS, cum_weights=_CUM_WEIGHTS)[0]
    # Drawn exactly as rng.choice("MF") was: seeded stays are unchanged.
    sex = scenario.sex or rng.choice(SEXES)
    female = sex == "F"
    age = rng.randint(*scenario.ages)
    los = rng.randint(*scenario.los)
    fmt = {
        "lep": "la patiente" if female else "le patient",
        "Lep": "La patiente" if female else "Le patient",
        "lep_cap": "La patiente" if female else "Le patient",
        "il": "elle" if female else "il", "Il": "Elle" if female else "Il",
        "e": "e" if female else "", "ne": "ne" if female else "", "ve": "ve" if female else "", "le": "le" if female else "",
        "age": str(age),
    }
    typo_rate = rng.choice((0.0, 0.03, 0.08))
    w = _Writer(rng, fmt, typo_rate)

    # Codes: DP, DR, then DAS (treated comorbidities, complications, scenario extras).
    dp_code, dp_phrases = scenario.dp
    marks = {"DP": (dp_code, rng.choice(dp_phrases))}
    if scenario.dr is not None:
        marks["DR"] = (scenario.dr[0], rng.choice(scenario.dr[1]))
    comorbid = [key for key in scenario.comorbidities if rng.random() < 0.45]
    if rng.random() < 0.15:
        comorbid.append(rng.choice(sorted(COMORBIDITIES)))
    comorbid = [k for k in dict.fromkeys(comorbid) if COMORBIDITIES[k].code not in (dp_code, marks.get("DR", ("",))[0])]
    extras: list[Extra] = [extra for extra in scenario.extras if rng.random() < extra.probability]
    complication_rate = 0.03 + (0.05 if age >= 75 else 0.0) + (0.04 if los >= 10 else 0.0)
    if scenario.los[1] == 0:  # a day-case session has no time for complications
        complication_rate = 0.0
    extras += [c for c in COMPLICATIONS.values() if rng.random() < complication_rate]
    coded = {dp_code, marks.get("DR", ("", ""))[0]}
    coded |= {COMORBIDITIES[k].code for k in comorbid}
    extras = [e for e in extras if e.code not in coded and not coded.add(e.code)]  # type: ignore[func-returns-value]

    def usable(pool: tuple[tuple[str, str], ...], k: int) -> list[tuple[str, str]]:
        categories = {code[:3] for code in coded}
        options = [item for item in pool if item[1] not in coded and item[1][:3] not in categories]
        return rng.sample(options, min(k, len(options)))

    negated = usable(NEGATED, rng.randint(0, 3))
    ruled_out = usable(RULED_OUT, rng.choice((0, 0, 1, 1, 2)))
    family = usable(FAMILY, rng.choice((0, 1, 1, 2)))
    past = usable(PAST_RESOLVED, rng.choice((0, 1, 1, 2)))

    # Length class: most reports are short; long stays carry daily notes (one per day).
    length = rng.random()
    days = 0
    if scenario.los[1] > 0:  # no daily notes for day-case sessions (chemotherapy, dialysis)
        if length > 0.9:
            days = rng.randint(20, 60)
        elif length > 0.55:
            days = rng.randint(3, 10)
        los = max(los, days)
    admission = _BASE_DATE + datetime.timedelta(days=rng.randrange(1461))
    discharge = admission + datetime.timedelta(days=los)
    doctor = rng.choice(_DOCTORS)

    # --- compte rendu d'hospitalisation ---
    out = w.out
    unit = _of(scenario.unit)
    out.add(f"COMPTE RENDU D'HOSPITALISATION\nService {unit}\n")
    out.add(f"Séjour du {admission:%d/%m/%Y} au {discharge:%d/%m/%Y}" if los else f"Venue du {admission:%d/%m/%Y}")
    out.add(f"\n{fmt['Lep']}, {age} ans.")
    w.heading("motif")
    w.render(rng.choice(scenario.motif), marks)
    w.heading("atcd")
    if not comorbid and not past:
        out.add("Pas d'antécédent notable.")
    for key in comorbid:
        cond = COMORBIDITIES[key]
        out.add("- ")
        w.render("[M]" + rng.choice(("", " depuis plusieurs années", ", suivi par le médecin traitant", ", stable")), {"M": (cond.code, rng.choice(cond.mentions))})
        out.add("\n")
    for sentence, code in past:
        out.add("- ")
        out.decoy(sentence, code)
        out.add("\n")
    out.add(rng.choice(("Allergies : aucune connue.", "Pas d'allergie médicamenteuse connue.", "Allergie à la pénicilline.")))
    w.heading("family")
    if family:
        for sentence, code in family:
            out.decoy(sentence, code)
            out.add(" ")
    else:
        out.add("Sans particularité.")
    w.heading("life")
    w.plain(rng.choice(_LIFE if age >= 18 else _LIFE[5:6]))
    treatments = [t for k in comorbid for t in COMORBIDITIES[k].treatments[:1]]
    long_term = [code for code, drugs in LONG_TERM_TREATMENTS.items() if code not in coded
                 and any(t.lower().startswith(drugs) for t in treatments)]
    if treatments:
        w.heading("entry")
        for i, t in enumerate(treatments):
            out.add("\n- " if i else "- ")
            treated = next((c for c in long_term if t.lower().startswith(LONG_TERM_TREATMENTS[c])), None)
            if treated is None:
                out.add(t)
            else:
                out.mention(t, treated)
    w.heading("hdm")
    w.render(rng.choice(scenario.hdm), marks)
    for sentence, code in negated[:1]:
        out.add(" ")
        out.decoy(sentence, code)
    w.heading("exam")
    vitals = _vitals(rng)
    out.add(f"PA {vitals['pas']}/{vitals['pad']} mmHg, FC {vitals['fc']}/min, "
            f"température {_number(rng.uniform(36.2, 37.6))} °C, poids {rng.randint(48, 110)} kg. ")
    w.render(rng.choice(scenario.exam), marks)
    for extra_sentence in rng.sample(_EXAM_EXTRA, rng.randint(0, 3)):
        out.add(" ")
        w.plain(extra_sentence)
    for sentence, code in negated[1:]:
        out.add(" ")
        out.decoy(sentence, code)
    w.heading("workup")
    w.render(rng.choice(scenario.workup), marks)
    w.heading("evolution")
    w.render(rng.choice(scenario.evolution), marks)
    for extra in extras:
        out.add(" ")
        w.render(rng.choice(extra.templates), {"M": (extra.code, rng.choice(extra.mentions))})
    for sentence, code in ruled_out:
        out.add(" ")
        out.decoy(sentence, code)
    for day in range(1, days + 1):
        out.add(f"\nJ{day} : ")
        for sentence in rng.sample(_DAILY, rng.randint(3, 6)):
            fmt_day = {**fmt, **_vitals(rng), "bio": _bio(rng)} if "{" in sentence else fmt
            out.add(sentence.format_map(fmt_day) + " ")
    out.add("\n" if days else " ")
    w.plain(rng.choice(_EVOLUTION_EXTRA))
    w.heading("conclusion")
    w.render(rng.choice(_CONCLUSION), marks)
    if "DR" in marks:
        out.add(" ")
        w.render(rng.choice(_CONCLUSION_DR), marks)
    w.heading("exit")
    exit_lines = list(scenario.treatment) + treatments
    out.add("\n".join(f"- {w.f(t)}" for t in exit_lines))
    out.add(f"\n\n{doctor}, service {unit}.")
    crh_end = out.pos

    documents = [Document(text="", doc_type="crh", date=discharge)]
    if scenario.operative and rng.random() < 0.8:
        out.add(DOCUMENT_SEPARATOR)
        out.add(f"COMPTE RENDU OPÉRATOIRE\nDate : {admission + datetime.timedelta(days=min(1, los)):%d/%m/%Y}\nIndication : ")
        w.render("[DP].", marks)
        out.add("\n" + rng.choice(scenario.operative) + f"\nOpérateur : {rng.choice(_DOCTORS)}.")
        documents.append(Document(text="", doc_type="cro", date=admission + datetime.timedelta(days=min(1, los))))
    text = out.value()
    documents[0] = documents[0].model_copy(update={"text": text[:crh_end]})
    if len(documents) > 1:
        documents[1] = documents[1].model_copy(update={"text": text[crh_end + len(DOCUMENT_SEPARATOR):]})

    diagnoses: list[Diagnosis] = []
    roles: list[tuple[str, Role]] = [(dp_code, "DP")]
    if "DR" in marks:
        roles.append((marks["DR"][0], "DR"))
    roles += [(COMORBIDITIES[k].code, "DAS") for k in comorbid]
    roles += [(code, "DAS") for code in long_term]
    roles += [(e.code, "DAS") for e in extras]
    for code, role in roles:
        diagnoses.append(Diagnosis(code=code, role=role, source_code=code, span=out.spans.get(code)))
    n_patients = max(1, int(n * 0.85))
    stay = Stay(
        id=f"synth-{seed}-{index:07d}",
        patient_id=f"synth-p{seed}-{rng.randrange(n_patients):07d}",
        documents=documents,
        diagnoses=diagnoses,
        terminology="cim10",
        context=StayContext(unit=scenario.unit, age=age, sex=sex, length_of_stay=los),
        synthetic=True,
        template=f"synth-fr:{scenario.key}",
    )
    return SynthStay(stay=stay, not_coded=out.decoys, scenario=scenario.key)


def _check(n: int, seed: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1 or n > _MAX_N:
        raise CorpusError(f"number of synthetic stays must be an integer from 1 to {_MAX_N}, got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise CorpusError(f"seed must be an integer, got {seed!r}")


def iter_stays(n: int, seed: int = 0) -> Iterator[SynthStay]:
    """Generate `n` synthetic stays, one at a time."""
    _check(n, seed)
    for index in range(n):
        yield generate_stay(index, seed, n)


def generate_corpus(n: int = 100, seed: int = 0, name: str | None = None) -> Corpus:
    """`n` synthetic stays in memory (use `write_jsonl` for large `n`)."""
    stays = [item.stay for item in iter_stays(n, seed)]
    report = LoadReport(source=f"synthetic (n={n}, seed={seed})", records_read=n)
    return Corpus(stays=stays, report=report, name=name or f"synth-fr/{n}@{seed}")


def write_jsonl(path: str | Path, n: int, seed: int = 0) -> int:
    """Stream `n` synthetic stays to a JSONL file (full Stay shape); returns the count."""
    _check(n, seed)
    path = Path(path)
    if path.is_dir():
        raise CorpusError(f"{path} is a folder; give a .jsonl file path")
    if not path.parent.exists():
        raise CorpusError(f"{path.parent}: no such folder")
    count = 0
    try:
        with path.open("w", encoding="utf-8") as handle:
            for item in iter_stays(n, seed):
                handle.write(item.stay.model_dump_json(exclude_none=True))
                handle.write("\n")
                count += 1
    except OSError as exc:
        raise CorpusError(f"{path}: cannot write: {exc.strerror}") from None
    logger.info("wrote %d synthetic stays (seed %d) to %s", count, seed, path)
    return count
