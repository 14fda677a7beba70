"""`cimcoder predict`: inputs (.txt folder, JSONL, Parquet), unreadable reports, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cimcoder.cli import main

HEART = "Insuffisance cardiaque congestive décompensée. Hypertension artérielle essentielle."
LUNG = "Pneumonie à pneumocoque du lobe inférieur droit. Antigénurie pneumocoque positive."


def run(model: Path, source: Path, out: Path) -> int:
    return main(["predict", "--model", str(model), "--input", str(source), "--output", str(out)])


def read_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_folder_of_reports_with_unreadable_ones(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "crh"
    folder.mkdir()
    (folder / "sejour-01.txt").write_text(HEART, encoding="utf-8")
    (folder / "sejour-02.txt").write_bytes("Chute au domicile, fémur : âgée.".encode("latin-1"))
    (folder / "sejour-03.txt").write_text("  \n", encoding="utf-8")
    (folder / "sejour-04.txt").write_text(LUNG, encoding="utf-8")
    (folder / "notes.md").write_text("not a report", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert run(tiny_run, folder, out) == 0
    lines = read_lines(out)
    assert [line["id"] for line in lines] == ["sejour-01", "sejour-04"]
    for line in lines:
        assert set(line) == {"id", "codes", "model"}
        assert len(line["codes"]) == 7  # every label (fewer than 30)
        for code in line["codes"]:
            assert set(code) >= {"code", "label", "score", "decision", "role", "cim11", "evidence"}
    assert lines[1]["codes"][0]["code"] in {"J13", "B95.3"}
    err = capsys.readouterr().err
    assert "sejour-02.txt (id sejour-02): not UTF-8 text" in err
    assert "sejour-03.txt (id sejour-03): empty report" in err
    assert "scored 2 of 4 report(s)" in err


def test_jsonl_with_a_malformed_line(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "export.jsonl"
    source.write_text(
        "\n".join(
            [
                json.dumps({"id": 101, "text": HEART}, ensure_ascii=False),
                '{"id": 102, "text": "Diabète de type 2',
                json.dumps({"id": "103"}),
                json.dumps({"id": "104", "documents": [{"text": "Chute mécanique au domicile."}]}),
                "",
            ]
        ),
        encoding="utf-8",
    )
    out = tmp_path / "out.jsonl"
    assert run(tiny_run, source, out) == 0
    lines = read_lines(out)
    assert [line["id"] for line in lines] == ["101", "104"]
    assert lines[1]["codes"][0]["code"] == "W19.0"
    err = capsys.readouterr().err
    assert "export.jsonl, line 2: malformed JSON" in err
    assert "export.jsonl, line 3 (id 103): no 'text'" in err


def test_no_evidence_option(tiny_run: Path, tmp_path: Path) -> None:
    source = tmp_path / "export.jsonl"
    source.write_text(json.dumps({"id": "7", "text": HEART}, ensure_ascii=False) + "\n", encoding="utf-8")
    with_spans, without = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    assert run(tiny_run, source, with_spans) == 0
    args = ["predict", "--model", str(tiny_run), "--input", str(source), "--output", str(without)]
    assert main([*args, "--no-evidence"]) == 0
    full, bare = read_lines(with_spans)[0], read_lines(without)[0]
    assert any(code["evidence"] for code in full["codes"])
    assert all(code["evidence"] == [] for code in bare["codes"])
    assert [(c["code"], c["score"]) for c in bare["codes"]] == [(c["code"], c["score"]) for c in full["codes"]]


def test_parquet_input_and_duplicate_ids(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "export.parquet"
    table = pa.table({"id": ["s1", "s2", "s1"], "text": [HEART, LUNG, "Diabète de type 2."]})
    pq.write_table(table, source)
    out = tmp_path / "out.jsonl"
    assert run(tiny_run, source, out) == 0
    assert [line["id"] for line in read_lines(out)] == ["s1", "s2"]
    assert "duplicate id" in capsys.readouterr().err


def test_parquet_without_text_column_is_unusable(tiny_run: Path, tmp_path: Path) -> None:
    source = tmp_path / "export.parquet"
    pq.write_table(pa.table({"id": ["s1"], "contenu": [HEART]}), source)
    assert run(tiny_run, source, tmp_path / "out.jsonl") == 2
    assert not (tmp_path / "out.jsonl").exists()


def test_nothing_readable_exits_non_zero(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "empty.jsonl"
    source.write_text('{"id": "1", "text": ""}\n', encoding="utf-8")
    assert run(tiny_run, source, tmp_path / "out.jsonl") == 2
    assert "nothing to score" in capsys.readouterr().err


def test_unknown_input_format_and_missing_model(tiny_run: Path, tmp_path: Path) -> None:
    csv = tmp_path / "export.csv"
    csv.write_text("id,text\n1,HTA\n", encoding="utf-8")
    assert run(tiny_run, csv, tmp_path / "out.jsonl") == 2
    folder = tmp_path / "crh"
    folder.mkdir()
    (folder / "a.txt").write_text(HEART, encoding="utf-8")
    assert run(tmp_path / "no-run", folder, tmp_path / "out.jsonl") == 2


def test_long_report_says_how_much_was_read(tmp_path: Path) -> None:
    # A transformer reads a bounded number of chunks: the rest of the text is reported unread.
    pytest.importorskip("transformers")
    from test_inference_plm import build_tiny_plm_run

    run_dir = build_tiny_plm_run(tmp_path / "plm")
    from cimcoder.inference import Predictor

    long_text = " ".join([HEART] * 200)
    result = Predictor.load(run_dir).predict_one(long_text)
    assert result.model.input is not None
    assert result.model.input.truncated is True
    assert 0 < result.model.input.chars_read < len(long_text)
