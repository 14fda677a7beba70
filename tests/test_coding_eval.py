"""Coding metrics on expert-coded reports (cimcoder.eval.coding) and benchmarks/bench_crh.py.

Fractions are computed by hand on a toy set of two stays; the loader and the benchmark run on
tiny coded folders written into tmp_path (never on crh-dev, a held-out test set).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cimcoder.eval.coding import (
    CodedFolderError,
    CodedReport,
    CodingInputError,
    GoldCode,
    Trap,
    code_key,
    coding_metrics,
    load_coded_folder,
)

# Stay A: « Décompensation cardiaque globale, FEVG 30 %, sur cardiopathie ischémique.
#   HTA traitée par amlodipine. Pas d'embolie pulmonaire (angioscanner normal). »
#   Gold: I50.02 (DP), I25.5, I10. Trap: I26.9 (negated).
# Stay B: « Pneumopathie franche lobaire aiguë à pneumocoque, hyponatrémie sur SIADH.
#   Pas de sepsis. Père décédé d'un cancer du côlon. »
#   Gold: J13 (DP), E22.2. Traps: A41.9 (negated), C18.9 (family).
REPORTS = [
    CodedReport(
        "crh_a",
        "Décompensation cardiaque globale, FEVG 30 %...",
        (GoldCode("I50.02", "DP"), GoldCode("I25.5", "DAS"), GoldCode("I10", "DAS")),
        (Trap("I26.9", "negated"),),
    ),
    CodedReport(
        "crh_b",
        "Pneumopathie franche lobaire aiguë à pneumocoque...",
        (GoldCode("J13", "DP"), GoldCode("E22.2", "DAS")),
        (Trap("A41.9", "negated"), Trap("C18.9", "family")),
    ),
]
# Ranked predictions (best first), as (code, decision, role).
PREDICTIONS = [
    [
        ("I50.09", "auto", "DP"),  # the right heart failure at 4 characters, not exactly
        ("I10", "auto", "DAS"),  # right
        ("I26.9", "review", "DAS"),  # the negated pulmonary embolism: a trap, exact
        ("I25.5", "reject", "DAS"),  # right but rejected: counts for R@k only
        ("N17.9", "review", "DAS"),  # wrong
    ],
    [
        ("J13", "auto", "DP"),  # right
        ("E22.2", "review", "DAS"),  # right
        ("C18.7", "review", "DAS"),  # the father's colon cancer: a trap at category level
        ("A41.9", "reject", "DAS"),  # the negated sepsis, rejected: no trap hit
    ],
]


def test_suggested_codes_micro_precision_recall_f1() -> None:
    m = coding_metrics(REPORTS, PREDICTIONS)
    # Suggested: I50.09, I10, I26.9, N17.9 | J13, E22.2, C18.7 -> 3 right of 7, 3 of 5 gold.
    assert m.suggested.recall == 3 / 5
    assert m.suggested.precision == 3 / 7
    assert m.suggested.f1 == pytest.approx(2 * 3 / (2 * 3 + 4 + 2))
    assert (m.suggested.tp, m.suggested.fp, m.suggested.fn) == (3, 4, 2)
    assert m.suggested.emitted == 7
    assert (m.reports, m.gold_codes, m.traps) == (2, 5, 3)


def test_auto_codes_alone() -> None:
    m = coding_metrics(REPORTS, PREDICTIONS)
    # Auto: I50.09, I10 | J13 -> 2 right of 3.
    assert m.auto.precision == 2 / 3
    assert m.auto.recall == 2 / 5
    assert m.auto.f1 == pytest.approx(2 * 2 / (2 * 2 + 1 + 3))
    assert m.auto.emitted == 3


def test_cross_checked_against_scikit_learn() -> None:
    from sklearn.metrics import f1_score, precision_score, recall_score
    from sklearn.preprocessing import MultiLabelBinarizer

    gold = [{g.code for g in r.gold} for r in REPORTS]
    suggested = [{c for c, d, _ in preds if d != "reject"} for preds in PREDICTIONS]
    binarizer = MultiLabelBinarizer().fit(gold + suggested)
    y, d = binarizer.transform(gold), binarizer.transform(suggested)
    m = coding_metrics(REPORTS, PREDICTIONS)
    assert m.suggested.precision == pytest.approx(precision_score(y, d, average="micro"))
    assert m.suggested.recall == pytest.approx(recall_score(y, d, average="micro"))
    assert m.suggested.f1 == pytest.approx(f1_score(y, d, average="micro"))


def test_dp_at_four_characters_and_exact() -> None:
    m = coding_metrics(REPORTS, PREDICTIONS)
    # A: I50.09 for I50.02 (same I500, not exact); B: J13 for J13.
    assert m.dp.four_chars == 2 / 2
    assert m.dp.exact == 1 / 2
    assert (m.dp.hits_four_chars, m.dp.hits_exact, m.dp.reports) == (2, 1, 2)


def test_dp_is_the_code_with_role_dp_whatever_its_rank() -> None:
    # « Hyperkaliémie chez un hémodialysé » : the model ranks the dialysis first but
    # proposes E87.5 as DP.
    report = CodedReport("crh_c", "...", (GoldCode("E87.50", "DP"), GoldCode("Z99.2+0", "DAS")))
    preds = [[("Z99.2+0", "auto", "DAS"), ("E87.58", "review", "DP")]]
    m = coding_metrics([report], preds)
    assert (m.dp.four_chars, m.dp.exact) == (1.0, 0.0)
    missing = coding_metrics([report], [[("Z99.2+0", "auto", "DAS")]])  # no DP proposed
    assert missing.dp.four_chars == 0.0


def test_traps_exact_and_at_category_level() -> None:
    m = coding_metrics(REPORTS, PREDICTIONS)
    # Suggested: I26.9 exactly (negated); C18.7 shares C18 with the family trap C18.9.
    # A41.9 was rejected: no hit.
    total = m.suggested.traps.total
    assert (total.traps, total.exact, total.category, total.category_traps) == (3, 1, 2, 3)
    assert total.exact_rate == 1 / 3
    assert total.category_rate == 2 / 3
    negated, family = m.suggested.traps.by_reason["negated"], m.suggested.traps.by_reason["family"]
    assert (negated.traps, negated.exact, negated.category) == (2, 1, 1)
    assert (family.traps, family.exact, family.category) == (1, 0, 1)
    # Auto: I50.09, I10, J13: no trap, not even at category level.
    assert (m.auto.traps.total.exact, m.auto.traps.total.category) == (0, 0)


def test_a_trap_sharing_a_gold_category_is_not_judged_at_category_level() -> None:
    # « Exacerbation de BPCO, pas de surinfection bronchique » : gold J44.1, trap J44.0.
    report = CodedReport("crh_d", "...", (GoldCode("J44.1", "DP"),), (Trap("J44.0", "negated"),))
    m = coding_metrics([report], [[("J44.1", "auto", "DP")]])
    total = m.auto.traps.total
    assert (total.traps, total.exact, total.category, total.category_traps) == (1, 0, 0, 0)
    assert total.category_rate == 0.0


def test_recall_at_k_regardless_of_decision() -> None:
    m = coding_metrics(REPORTS, PREDICTIONS, ks=(1, 2, 5))
    # A ranks I10 2nd and I25.5 4th (rejected) of 3 gold; B ranks both gold codes 1st and 2nd.
    assert m.recall_at[1] == pytest.approx((0 / 3 + 1 / 2) / 2)
    assert m.recall_at[2] == pytest.approx((1 / 3 + 2 / 2) / 2)
    assert m.recall_at[5] == pytest.approx((2 / 3 + 2 / 2) / 2)


def test_codes_compare_in_any_spelling() -> None:
    assert code_key("I50.02") == code_key("I5002") == code_key(" i5002 ") == "I5002"
    assert code_key("Z99.2+0") == code_key("Z992+0") == "Z992+0"
    undotted = [[(c.replace(".", "").lower(), d, r) for c, d, r in p] for p in PREDICTIONS]
    assert coding_metrics(REPORTS, undotted) == coding_metrics(REPORTS, PREDICTIONS)


def test_to_dict_is_json() -> None:
    data = json.loads(json.dumps(coding_metrics(REPORTS, PREDICTIONS).to_dict()))
    assert data["suggested"]["recall"] == 3 / 5
    assert data["suggested"]["traps"]["by_reason"]["family"]["category"] == 1
    assert data["dp"]["four_chars"] == 1.0
    assert set(data["recall_at"]) == {"5", "10", "30"}


def test_predictions_must_match_the_reports() -> None:
    with pytest.raises(CodingInputError, match="1 prediction lists for 2 reports"):
        coding_metrics(REPORTS, PREDICTIONS[:1])
    with pytest.raises(CodingInputError, match="crh_a: unknown decision"):
        coding_metrics(REPORTS, [[("I10", "maybe", "DAS")], []])


# --------------------------------------------------------------------------- loader

GOLD = "doc_id\tcode\trole\ncrh_01\tI5002\tDP\ncrh_01\tI10\tDAS\ncrh_02\tJ13\tDP\n"
TRAPS = "doc_id\tcode\treason\ncrh_01\tI269\tnegated\ncrh_02\tC189\tfamily\n"
TEXTS = {
    "crh_01": "Décompensation cardiaque globale, FEVG 30 %. HTA traitée. Pas d'embolie pulmonaire.",
    "crh_02": "Pneumopathie franche lobaire aiguë à pneumocoque. Père : cancer du côlon.",
}


def write_folder(
    root: Path,
    *,
    texts: dict[str, str] = TEXTS,
    gold: str | None = GOLD,
    traps: str | None = TRAPS,
) -> Path:
    (root / "text").mkdir(parents=True)
    for doc_id, text in texts.items():
        (root / "text" / f"{doc_id}.txt").write_text(text, encoding="utf-8")
    if gold is not None:
        (root / "gold.tsv").write_text(gold, encoding="utf-8")
    if traps is not None:
        (root / "must_not.tsv").write_text(traps, encoding="utf-8")
    return root


def test_loader_reads_texts_gold_and_traps(tmp_path: Path) -> None:
    reports = load_coded_folder(write_folder(tmp_path / "set"))
    assert [r.doc_id for r in reports] == ["crh_01", "crh_02"]
    first = reports[0]
    assert first.text == TEXTS["crh_01"]
    assert first.gold == (("I50.02", "DP"), ("I10", "DAS"))
    assert first.traps == (("I26.9", "negated"),)
    assert first.dp == "I50.02"
    assert reports[1].traps == (Trap("C18.9", "family"),)


def test_loader_without_traps_file(tmp_path: Path) -> None:
    reports = load_coded_folder(write_folder(tmp_path / "set", traps=None))
    assert all(r.traps == () for r in reports)


def test_loader_keeps_atih_plus_codes_and_skips_blank_lines(tmp_path: Path) -> None:
    gold = "doc_id\tcode\trole\r\ncrh_01\tE8750\tDP\r\n\r\ncrh_01\tZ992+0\tDAS\r\n"
    reports = load_coded_folder(
        write_folder(tmp_path / "set", texts={"crh_01": "Hémodialysé."}, gold=gold, traps=None)
    )
    assert reports[0].gold == (("E87.50", "DP"), ("Z99.2+0", "DAS"))


@pytest.mark.parametrize(
    ("gold", "traps", "message"),
    [
        ("doc\tcode\trole\ncrh_01\tI10\tDP\n", None, r"header 'doc_id\\tcode\\trole'"),
        ("", None, "found an empty file"),
        (GOLD + "crh_03\tI10\tDP\n", None, r"gold.tsv:5: no report text/crh_03.txt"),
        (GOLD + "crh_02\tE222\n", None, r"gold.tsv:5: expected 3 tab-separated fields"),
        (GOLD + "crh_02\tE222\tDAS2\n", None, "gold.tsv:5: role 'DAS2' is not one of DP, DR, DAS"),
        (GOLD + "crh_02\tI50.0.2\tDAS\n", None, "gold.tsv:5: "),
        (GOLD + "crh_02\tJ440\tDP\n", None, "gold.tsv:5: crh_02 already has a DP"),
        (GOLD + "crh_02\tJ13\tDAS\n", None, "gold.tsv:5: J13 is already coded for crh_02"),
        ("doc_id\tcode\trole\ncrh_01\tI5002\tDP\n", None, "no gold code for crh_02"),
        (GOLD, "doc_id\tcode\n", r"must_not.tsv: the first line must be"),
        (GOLD, "doc_id\tcode\treason\ncrh_01\tI10\tnegated\n", "both a gold code and a trap"),
        (GOLD, "doc_id\tcode\treason\ncrh_09\tI10\tfamily\n", "must_not.tsv:2: no report"),
    ],
)
def test_loader_errors_say_where(
    tmp_path: Path, gold: str, traps: str | None, message: str
) -> None:
    folder = write_folder(tmp_path / "set", gold=gold, traps=traps)
    with pytest.raises(CodedFolderError, match=message):
        load_coded_folder(folder)


def test_loader_missing_pieces(tmp_path: Path) -> None:
    with pytest.raises(CodedFolderError, match="coded folder not found"):
        load_coded_folder(tmp_path / "nowhere")
    with pytest.raises(CodedFolderError, match=r"has no gold.tsv"):
        load_coded_folder(write_folder(tmp_path / "a", gold=None))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "gold.tsv").write_text(GOLD, encoding="utf-8")
    with pytest.raises(CodedFolderError, match=r"has no text/ folder"):
        load_coded_folder(tmp_path / "b")
    with pytest.raises(CodedFolderError, match=r"crh_02.txt is empty"):
        load_coded_folder(write_folder(tmp_path / "c", texts={**TEXTS, "crh_02": " \n"}))


# --------------------------------------------------------------------------- benchmark


def load_bench():  # type: ignore[no-untyped-def]
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_crh.py"
    spec = importlib.util.spec_from_file_location("bench_crh", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Codes the tiny model of tests/test_inference_predictor.py knows.
BENCH_TEXTS = {
    "crh_01": "Patiente de 81 ans admise pour insuffisance cardiaque congestive décompensée. "
    "Hypertension artérielle essentielle traitée. Pas de pneumopathie.",
    "crh_02": "Pneumonie à pneumocoque du lobe inférieur droit. Antigénurie pneumocoque positive.",
}
BENCH_GOLD = (
    "doc_id\tcode\trole\ncrh_01\tI5009\tDP\ncrh_01\tI10\tDAS\ncrh_02\tJ13\tDP\ncrh_02\tB953\tDAS\n"
)
BENCH_TRAPS = "doc_id\tcode\treason\ncrh_01\tJ13\tnegated\n"


@pytest.mark.slow
def test_bench_end_to_end_on_a_tiny_run(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench()
    folder = write_folder(tmp_path / "set", texts=BENCH_TEXTS, gold=BENCH_GOLD, traps=BENCH_TRAPS)
    output = tmp_path / "out" / "predictions.jsonl"
    args = ["--model", str(tiny_run), "--data", str(folder), "--output", str(output)]
    assert bench.main([*args, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = result["metrics"]
    assert (metrics["reports"], metrics["gold_codes"], metrics["traps"]) == (2, 4, 1)
    assert result["model"]["architecture"] == "tfidf_lr"
    assert result["timing"]["reports_per_s"] > 0
    # The figures are those of the written predictions.
    lines = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [line["id"] for line in lines] == ["crh_01", "crh_02"]
    preds = [[(c["code"], c["decision"], c["role"]) for c in line["codes"]] for line in lines]
    assert coding_metrics(load_coded_folder(folder), preds).to_dict() == metrics
    assert metrics["recall_at"]["10"] == 1.0  # 7 labels: every gold code is in the ranking

    assert bench.main(args) == 0
    table = capsys.readouterr().out
    assert "2 reports, 4 gold codes, 1 traps" in table
    assert "reports/s" in table and "negated" in table


def test_bench_missing_folder_or_model_exits_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = load_bench()
    assert bench.main(["--model", str(tmp_path), "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_crh: error: coded folder not found") and err.count("\n") == 1
    folder = write_folder(tmp_path / "set")
    assert bench.main(["--model", str(tmp_path / "no-run"), "--data", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bench_crh: error: model not found") and "Traceback" not in err
