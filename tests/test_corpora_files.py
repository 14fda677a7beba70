"""Loaders of plain files: JSONL, CSV, Parquet, .txt folder + codes.tsv, Hugging Face folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cimcoder.training.corpora import CorpusError, Stay, load_dataset
from cimcoder.training.corpora.files import load_csv, load_jsonl, write_jsonl

PNEUMO = "Pneumopathie franche lobaire aiguë à pneumocoque du lobe inférieur droit."
IC = "Décompensation cardiaque globale. Antécédent d'HTA traitée par amlodipine."
NO_HTA = "Douleur abdominale. Pas d'HTA connue. Appendicite aiguë opérée."


def _jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in records) + "\n",
                    encoding="utf-8")
    return path


def test_jsonl_flat_records_with_roles_and_context(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "stays.jsonl", [
        {"id": "S1", "text": PNEUMO, "dp": "J13", "patient_id": "P1", "date": "2024-03-02", "age": 71, "sex": "M"},
        {"id": "S2", "text": IC, "dp": "I500", "das": ["i10"], "unit": "cardiologie", "length_of_stay": 6},
        {"id": "S3", "text": NO_HTA, "codes": "K35,8"},  # French decimal comma
    ])
    corpus = load_dataset(path)
    assert [s.id for s in corpus] == ["S1", "S2", "S3"]
    s1, s2, s3 = corpus.stays
    assert s1.codes == ["J13"] and s1.diagnoses[0].role == "DP"
    assert s1.patient_id == "P1" and s1.documents[0].date.isoformat() == "2024-03-02"
    assert s1.context is not None and s1.context.age == 71 and s1.context.sex == "M"
    # Normalised spellings; the source spelling is kept.
    assert s2.codes == ["I50.0", "I10"]
    assert [d.role for d in s2.diagnoses] == ["DP", "DAS"]
    assert s2.diagnoses[0].source_code == "I500"
    assert s3.codes == ["K35.8"] and s3.diagnoses[0].role == "unknown"
    assert "I10" not in s3.codes  # "Pas d'HTA connue" is text, never a code
    assert corpus.report.ok
    assert s2.edition and s2.edition.startswith("cim10")


def test_jsonl_reports_broken_lines_with_their_line_numbers(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "broken.jsonl", [
        {"id": "S1", "text": PNEUMO, "dp": "J13"},
        '{"id": "S2", "text": "Insuffisance cardiaque", "dp": ',          # line 2: truncated JSON
        {"text": IC, "dp": "I50.0"},                                       # line 3: no id
        {"id": "S4", "text": "   ", "dp": "I10"},                          # line 4: empty text
        {"id": "S1", "text": IC, "dp": "I50.0"},                           # line 5: duplicated id
        {"id": "S6", "text": IC, "dp": "I50.0", "diagnostic": "I10"},      # line 6: typo in a field
        {"id": "S7", "text": IC, "age": "soixante"},                       # line 7: bad value
        {"id": "S8", "text": IC, "dp": "I50.0", "das": ["XYZ", "I50.7"]},  # line 8: invalid + unknown codes
    ])
    corpus = load_jsonl(path)
    assert [s.id for s in corpus] == ["S1", "S8"]
    lines = {r.line: r.reason for r in corpus.report.skipped}
    assert set(lines) == {2, 3, 4, 5, 6, 7}
    assert "invalid JSON" in lines[2]
    assert "missing stay id" in lines[3]
    assert "empty report text" in lines[4]
    assert "duplicated stay id (first at line 1)" in lines[5]
    assert "diagnostic" in lines[6]
    assert "age" in lines[7]
    issues = {(i.source_code, i.kind, i.line) for i in corpus.report.code_issues}
    assert issues == {("XYZ", "invalid", 8), ("I50.7", "unknown", 8)}
    assert corpus.stays[1].codes == ["I50.0"]  # dropped, but reported
    assert not corpus.report.ok


def test_unknown_code_policy_keep_and_error(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "s.jsonl", [{"id": "S1", "text": IC, "dp": "I50.0", "das": "I50.7"}])
    kept = load_dataset(path, unknown_codes="keep")
    assert kept.stays[0].codes == ["I50.0", "I50.7"]
    assert kept.report.code_issues[0].kept
    with pytest.raises(CorpusError, match=r"unknown cim10 code 'I50.7'"):
        load_dataset(path, unknown_codes="error")


def test_jsonl_where_every_record_is_bad_is_an_error(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "bad.jsonl", ['{"id": 1', "[1, 2]"])
    with pytest.raises(CorpusError, match="no valid stay in 2 records"):
        load_dataset(path)


def test_full_shape_round_trip(tmp_path: Path) -> None:
    stay = Stay.model_validate({
        "id": "S1", "patient_id": "P9",
        "documents": [{"text": PNEUMO, "date": "2024-01-05"}, {"text": "Sortie à J7.", "doc_type": "lettre"}],
        "diagnoses": [{"code": "J13", "role": "DP", "span": [0, 12]}, {"code": "F17.2", "role": "DAS"}],
        "context": {"unit": "pneumologie", "age": 64, "sex": "F", "length_of_stay": 7},
    })
    path = tmp_path / "full.jsonl"
    assert write_jsonl([stay], path) == 1
    back = load_dataset(path).stays[0]
    assert back.text == PNEUMO + "\n\nSortie à J7."
    assert back.codes == ["J13", "F17.2"]
    assert back.diagnoses[0].span == (0, 12)
    assert back.context == stay.context and back.patient_id == "P9"


def test_csv_semicolon_codes_and_broken_rows(tmp_path: Path) -> None:
    path = tmp_path / "stays.csv"
    path.write_text(
        "id,text,dp,das,patient_id\n"
        f'S1,"{PNEUMO}",J13,F17.2;I10,P1\n'
        f'S2,"{IC}\nSur deux lignes.",I50.0,,P2\n'
        "S3,texte trop de champs,I10,,P3,extra\n"
        f'S4,"{NO_HTA}",K35.8,,\n',
        encoding="utf-8",
    )
    corpus = load_csv(path)
    assert [s.id for s in corpus] == ["S1", "S2", "S4"]
    assert corpus.stays[0].codes == ["J13", "F17.2", "I10"]
    assert "Sur deux lignes." in corpus.stays[1].text
    assert corpus.stays[2].patient_id is None
    (skipped,) = corpus.report.skipped
    assert skipped.line == 5 and "more fields" in skipped.reason


def test_csv_with_unknown_column_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "typo.csv"
    path.write_text("id;texte;dp\nS1;Pneumopathie;J18.9\n", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"unknown column.*'texte'"):
        load_dataset(path)


def test_csv_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.csv"
    path.write_bytes("id,text,dp\nS1,Pneumopathie aiguë,J18.9\n".encode("latin-1"))
    with pytest.raises(CorpusError, match="not UTF-8"):
        load_dataset(path)


def test_parquet_with_list_columns(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "id": ["S1", "S2", "S3"],
        "text": [PNEUMO, IC, None],
        "dp": ["J13", "I50.0", "I10"],
        "das": [["F17.2"], [], ["E11.9"]],
    })
    path = tmp_path / "stays.parquet"
    pq.write_table(table, path)
    corpus = load_dataset(path)
    assert [s.codes for s in corpus] == [["J13", "F17.2"], ["I50.0"]]
    (skipped,) = corpus.report.skipped
    assert skipped.line == 3 and "text" in skipped.reason


def test_parquet_not_parquet_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "fake.parquet"
    path.write_text("id,text\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="not a readable Parquet file"):
        load_dataset(path)


def test_text_folder_with_codes_tsv(tmp_path: Path) -> None:
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "crh1.txt").write_text(PNEUMO, encoding="utf-8")
    (tmp_path / "text" / "crh2.txt").write_text(IC, encoding="utf-8")
    (tmp_path / "text" / "vide.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "codes.tsv").write_text(
        "stay_id\tcode\trole\n"
        "crh1\tJ13\tDP\n"
        "crh2\tI50.0\tDP\n"
        "crh2\tI10\tDAS\n"
        "crh3\tI10\tDAS\n"        # no text file
        "crh2\tI48\tPRINCIPAL\n"  # bad role
        "crh2\tI50.7\tDAS\n",     # unknown code
        encoding="utf-8",
    )
    corpus = load_dataset(tmp_path)
    assert {s.id: s.codes for s in corpus} == {"crh1": ["J13"], "crh2": ["I50.0", "I10"]}
    reasons = sorted(str(r) for r in corpus.report.skipped)
    assert any("vide.txt" in r and "empty document" in r for r in reasons)
    assert any("line 5" in r and "no text file crh3.txt" in r for r in reasons)
    assert any("line 6" in r and "unknown role 'PRINCIPAL'" in r for r in reasons)
    assert [(i.source_code, i.line) for i in corpus.report.unknown_codes] == [("I50.7", 7)]


def test_text_folder_bad_header_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(PNEUMO, encoding="utf-8")
    (tmp_path / "codes.tsv").write_text("document\tcim\na\tJ13\n", encoding="utf-8")
    with pytest.raises(CorpusError, match="lacks a stay id column"):
        load_dataset(tmp_path)


def test_hugging_face_save_to_disk_folder(tmp_path: Path) -> None:
    import datasets

    data = datasets.Dataset.from_dict({
        "id": ["S1", "S2"], "text": [PNEUMO, IC], "dp": ["J13", "I50.0"], "das": [["F17.2"], ["I10", "N18.3"]],
    })
    data.save_to_disk(str(tmp_path / "hf"))
    corpus = load_dataset(tmp_path / "hf")
    assert [s.codes for s in corpus] == [["J13", "F17.2"], ["I50.0", "I10", "N18.3"]]
    datasets.DatasetDict({"train": data, "dev": data}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(CorpusError, match="pass one of them"):
        load_dataset(tmp_path / "dd")
    assert len(load_dataset(tmp_path / "dd" / "train")) == 2


def test_hugging_face_folder_with_unknown_column(tmp_path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict({"id": ["S1"], "note": [PNEUMO]}).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(CorpusError, match=r"unknown column.*'note'"):
        load_dataset(tmp_path / "hf")


def test_unknown_paths_and_types(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="no such file or folder"):
        load_dataset(tmp_path / "absent.jsonl")
    (tmp_path / "notes.docx").write_text("x", encoding="utf-8")
    with pytest.raises(CorpusError, match=r"unknown file type .docx"):
        load_dataset(tmp_path / "notes.docx")
    with pytest.raises(CorpusError, match="not a shipped data set"):
        load_dataset("codiesp-fr/test")  # held out: never shipped


def test_mixed_record_shapes_are_reported(tmp_path: Path) -> None:
    path = _jsonl(tmp_path / "mixed.jsonl", [
        {"id": "S1", "documents": [{"text": PNEUMO}], "diagnoses": [{"code": "J13", "role": "DP"}]},
        {"id": "S2", "documents": [{"text": IC}], "text": IC, "dp": "I50.0"},
        {"id": "S3", "documents": [{"text": IC}], "diagnoses": [{"code": "I50.0", "role": "principal"}]},
    ])
    corpus = load_dataset(path)
    assert [s.id for s in corpus] == ["S1"]
    reasons = {r.line: r.reason for r in corpus.report.skipped}
    assert "mixed with 'documents'" in reasons[2]
    assert "unknown role" in reasons[3]
