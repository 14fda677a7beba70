"""`cimcoder predict --engine spark`: same codes and scores as the local engine, bad reports
listed in DIR/errors, clear one-line errors where PySpark or Java is missing.

One local[2] SparkSession for the module; the model is the tiny TF-IDF run of the other
predictor tests (conftest `tiny_run`).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cimcoder.cli import main

pyspark = pytest.importorskip("pyspark")
pytestmark = pytest.mark.spark
if shutil.which("java") is None:
    pytest.skip("no Java runtime (scripts/install-system-deps.sh)", allow_module_level=True)

HEART = "Insuffisance cardiaque congestive décompensée. Hypertension artérielle essentielle."
LUNG = "Pneumonie à pneumocoque du lobe inférieur droit. Antigénurie pneumocoque positive."
FALL = "Chute mécanique au domicile. Diabète de type 2 sous metformine."


@pytest.fixture(scope="module")
def spark() -> Iterator[object]:
    from cimcoder.inference.spark import spark_session

    session = spark_session("local[2]")
    session.conf.set("spark.sql.shuffle.partitions", "2")
    yield session
    session.stop()


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def read_parquet(folder: Path) -> list[dict]:
    return sorted(pq.read_table(folder).to_pylist(), key=lambda row: str(row["id"]))


def test_same_codes_and_scores_as_the_local_engine_and_errors_listed(
    spark: object, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "export.jsonl"
    lines = [
        json.dumps({"id": 101, "text": HEART}, ensure_ascii=False),
        json.dumps({"id": "102", "text": "   "}),  # empty report
        json.dumps({"text": LUNG}, ensure_ascii=False),  # no id
        json.dumps({"id": "104", "text": LUNG}, ensure_ascii=False),
        json.dumps({"id": "101", "text": FALL}, ensure_ascii=False),  # repeated id
        json.dumps({"id": "106", "text": FALL}, ensure_ascii=False),
    ]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    local_out, spark_out = tmp_path / "local.jsonl", tmp_path / "spark"
    model = ["--model", str(tiny_run)]
    assert main(["predict", *model, "--input", str(source), "--output", str(local_out)]) == 0
    args = ["predict", "--engine", "spark", *model, "--input", str(source), "--output", str(spark_out)]
    assert main(args) == 0

    expected = {line["id"]: line for line in read_jsonl(local_out)}
    got = read_parquet(spark_out / "predictions")
    assert [row["id"] for row in got] == ["101", "104", "106"] == sorted(expected)
    for row in got:
        # The Parquet row is the JSONL line (a struct per code, `model` as a struct).
        assert row == expected[row["id"]]
    assert got[1]["codes"][0]["code"] in {"J13", "B95.3"}

    errors = read_parquet(spark_out / "errors")
    by_id = {row["id"]: row["error"] for row in errors}
    assert by_id == {None: "no 'id'", "102": "empty report", "101": "duplicate id"}
    assert "scored 3 of 6 report(s)" in capsys.readouterr().err
    # The scoring pass's staging folder is gone: the two outputs alone are left.
    assert sorted(p.name for p in spark_out.iterdir()) == ["errors", "predictions"]


def test_parquet_input_and_no_evidence(spark: object, tiny_run: Path, tmp_path: Path) -> None:
    source = tmp_path / "export.parquet"
    pq.write_table(pa.table({"id": [7, 8], "text": [HEART, FALL]}), source)
    out = tmp_path / "out"
    args = ["predict", "--engine", "spark", "--model", str(tiny_run), "--no-evidence"]
    assert main([*args, "--input", str(source), "--output", str(out)]) == 0
    rows = read_parquet(out / "predictions")
    assert [row["id"] for row in rows] == ["7", "8"]
    assert all(code["evidence"] == [] for row in rows for code in row["codes"])
    assert rows[0]["codes"][0]["code"] in {"I50.09", "I10"}
    assert pq.read_table(out / "errors").num_rows == 0


def test_unusable_input_or_output_is_one_line(
    spark: object, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "export.parquet"
    pq.write_table(pa.table({"id": ["s1"], "contenu": [HEART]}), source)
    base = ["predict", "--engine", "spark", "--model", str(tiny_run), "--input", str(source)]
    assert main([*base, "--output", str(tmp_path / "out")]) == 2
    assert "needs columns 'id' and 'text'" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "old.parquet").write_bytes(b"")
    assert main([*base, "--output", str(taken)]) == 2
    assert "is not an empty folder" in capsys.readouterr().err


def test_missing_pyspark_or_java_is_a_clear_error(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    source = tmp_path / "export.jsonl"
    source.write_text(json.dumps({"id": "1", "text": HEART}, ensure_ascii=False) + "\n")
    args = ["predict", "--engine", "spark", "--model", str(tiny_run), "--input", str(source),
            "--output", str(tmp_path / "out")]
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "pyspark", None)  # import pyspark -> ImportError
        assert main(args) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "cimcoder: error: --engine spark needs PySpark: pip install 'cimcoder[spark]'"
    ]
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "needs a Java runtime" in err and "Traceback" not in err


def test_scoring_tasks_fill_every_core_in_each_wave() -> None:
    from cimcoder.inference.spark import scoring_tasks

    # 100,000 stays of JSONL read as 3 partitions on 2 cores: 3 tasks leave one core alone
    # for the last third of the job; 4 even ones keep both busy.
    assert scoring_tasks(3, 2) == 4
    assert scoring_tasks(1, 2) == 2
    assert scoring_tasks(3, 1) == 3
    assert scoring_tasks(201, 40) == 240
    for partitions in range(1, 30):
        for cores in range(1, 9):
            tasks = scoring_tasks(partitions, cores)
            assert tasks % cores == 0 and partitions <= tasks < partitions + cores


def test_a_failed_job_says_why_in_one_line() -> None:
    from cimcoder.inference.spark import _reason

    oom = Exception(
        "An error occurred while calling o123.parquet.\n"
        ": org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 failed\n"
        "java.lang.OutOfMemoryError: Java heap space\n"
        "\tat java.base/java.lang.reflect.Array.newArray(Native Method)\n"
        "\t... 20 more\n"
    )
    assert _reason(oom) == (
        "java.lang.OutOfMemoryError: Java heap space: give Spark more memory "
        "(spark.driver.memory in local mode, spark.executor.memory on a cluster)"
    )
    caused = Exception(
        "org.apache.spark.SparkException: Job aborted.\n"
        "\tat org.apache.spark.Foo.bar(Foo.scala:1)\n"
        "Caused by: java.io.IOException: No space left on device\n"
        "\t... 20 more\n"
    )
    assert _reason(caused) == "java.io.IOException: No space left on device"
