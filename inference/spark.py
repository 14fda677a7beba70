"""Batch scoring on Spark: `cimcoder predict --engine spark` (PySpark: the `spark` extra).

The reports (Parquet or JSONL with `id` and `text`) are checked in Spark (missing id, missing or
empty text, repeated id) and the others scored by `mapInArrow` (mapInPandas' Arrow batches
without the pandas step, on which PySpark 4.3 with pandas 3 failed for the nested `codes`): each
Python worker loads the model once (`_worker_predictor`, a per-process cache that outlives
tasks because Spark reuses its Python workers) and scores chunks with the same code as the
local engine (`cimcoder.inference.cli._predict_chunk`), so codes and scores are those of
`cimcoder predict`.

Output folder:
    DIR/predictions/   Parquet, one row per scored report: the columns of a `cimcoder predict`
                       line (id, codes as a list of structs, model as a struct)
    DIR/errors/        Parquet: id (null when missing), error (why it was not scored)

On a cluster the model (a run folder or an MLflow URI) must be readable from every executor.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cimcoder.errors import CimcoderError

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

    from cimcoder.inference.predictor import Predictor

logger = logging.getLogger(__name__)

PREDICTIONS_DIR = "predictions"
ERRORS_DIR = "errors"
# The scoring pass before it is split into the two above; removed at the end. No leading "_"
# or ".": Spark would take the folder for a hidden one and warn that it ignores it.
STAGING_DIR = "scoring-pass"
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json")
CHUNK = 32  # reports per predictor call, as the local engine (cimcoder.inference.cli)

# The columns of a `cimcoder predict` line (cimcoder.inference.schemas.StayPrediction), and
# what mapInArrow returns: a prediction, or an error (then codes and model are null).
PREDICTION_COLUMNS = ("id", "codes", "model")
ERROR_COLUMNS = ("id", "error")


def scored_schema() -> StructType:
    """Spark schema of a scored row (built in Python: the workers have no JVM to parse DDL)."""
    from pyspark.sql.types import (
        ArrayType,
        BooleanType,
        DoubleType,
        LongType,
        StringType,
        StructField,
        StructType,
    )

    def struct(**fields: Any) -> StructType:
        return StructType([StructField(name, kind) for name, kind in fields.items()])

    text, texts, integer = StringType(), ArrayType(StringType()), LongType()
    evidence = struct(start=integer, end=integer, text=text)
    code = struct(
        code=text, label=text, score=DoubleType(), decision=text, role=text, cim11=texts,
        evidence=ArrayType(evidence), flags=texts,
    )
    read = struct(chars=integer, chars_read=integer, truncated=BooleanType())
    model = struct(
        name=text, version=text, source=text, architecture=text, runtime=text,
        terminology=text, edition=text, labels=integer, thresholds_version=text,
        calibrated=BooleanType(), note=text, input=read,
    )
    return struct(id=text, codes=ArrayType(code), model=model, error=text)


class SparkUnavailableError(CimcoderError):
    """PySpark or a Java runtime is missing."""


class SparkInputError(CimcoderError):
    """The input or output of a Spark scoring job cannot be used."""


class SparkJobError(CimcoderError):
    """The Spark job itself failed (executors lost, out of memory, ...)."""


def _reason(exc: BaseException) -> str:
    """The line of a Spark failure that says why (not a Java stack frame), with what to do
    when the JVM ran out of memory."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = [line for line in lines if not line.startswith(("at ", "..."))]
    memory = next((line for line in said if "OutOfMemoryError" in line), None)
    if memory is not None:
        return (
            f"{memory.removeprefix('Caused by:').strip()}: give Spark more memory "
            "(spark.driver.memory in local mode, spark.executor.memory on a cluster)"
        )
    causes = [line.removeprefix("Caused by:").strip() for line in said if line.startswith("Caused by:")]
    if causes:
        return causes[-1]
    return said[-1] if said else type(exc).__name__


@dataclass(frozen=True)
class SparkJob:
    """What every worker needs to score (pickled to the executors: plain values only)."""

    model: str
    runtime: str = "torch"
    batch_size: int = 8
    evidence: bool = True


@dataclass(frozen=True)
class SparkResult:
    scored: int
    errors: int
    predictions: Path
    errors_path: Path


def require_spark() -> None:
    """Refuse early, in one line, where PySpark or Java is missing."""
    try:
        import pyspark  # noqa: F401
    except ImportError:
        raise SparkUnavailableError(
            "--engine spark needs PySpark: pip install 'cimcoder[spark]'"
        ) from None
    java_home = os.environ.get("JAVA_HOME")
    if java_home and (Path(java_home) / "bin" / "java").is_file():
        return
    if shutil.which("java") is None:
        raise SparkUnavailableError(
            "--engine spark needs a Java runtime (17 or later): install one "
            "(Debian: scripts/install-system-deps.sh) or set JAVA_HOME"
        )


def spark_session(master: str | None = None) -> SparkSession:
    """The active session, else a new one (`local[*]` unless spark-submit set a master)."""
    from pyspark import SparkConf
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return active
    conf = SparkConf()
    builder = SparkSession.builder.appName("cimcoder-predict").config(
        "spark.ui.showConsoleProgress", "false"
    )
    if master is not None or not conf.contains("spark.master"):
        builder = builder.master(master or "local[*]")
        # Local workers run this interpreter (its cimcoder and model libraries), not the
        # `python3` of PATH; PySpark reads the variable when the context starts.
        if not (os.environ.get("PYSPARK_PYTHON") or conf.contains("spark.pyspark.python")):
            os.environ["PYSPARK_PYTHON"] = sys.executable
    return builder.getOrCreate()


# -- reading and checking the reports ----------------------------------------------------------


def read_reports(spark: SparkSession, path: Path) -> DataFrame:
    """`id` (text) and `text` of a Parquet file or folder, or a JSONL file; `_row` keeps order."""
    from pyspark.sql import functions as F

    if not path.exists():
        raise SparkInputError(f"input not found: {path}")
    if path.suffix.lower() in JSONL_SUFFIXES:
        # A malformed line keeps its raw text in _corrupt_record (PERMISSIVE mode): an error row.
        frame = spark.read.schema("id STRING, text STRING, _corrupt_record STRING").json(str(path))
    else:
        try:
            frame = spark.read.parquet(str(path))
        except Exception as exc:  # AnalysisException and the like: not Parquet
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SparkInputError(
                f"cannot read {path} as Parquet ({first[:200]}); give a Parquet file or folder, "
                "or a .jsonl file"
            ) from None
        missing = {"id", "text"} - set(frame.columns)
        if missing:
            raise SparkInputError(
                f"{path} needs columns 'id' and 'text'; it has {sorted(frame.columns)}"
            )
        frame = frame.select(
            F.col("id").cast("string").alias("id"),
            F.col("text").cast("string").alias("text"),
            F.lit(None).cast("string").alias("_corrupt_record"),
        )
    return frame.withColumn("_row", F.monotonically_increasing_id())


def check_reports(reports: DataFrame) -> DataFrame:
    """Add `problem`: why a report cannot be scored (null when it can), as the local reader."""
    from pyspark.sql import Window, functions as F

    id_ = F.trim(F.col("id"))
    unreadable = (
        F.when(F.col("_corrupt_record").isNotNull(), F.lit("malformed JSON line"))
        .when(F.col("id").isNull() | (id_ == ""), F.lit("no 'id'"))
        .when(F.col("text").isNull(), F.lit("no 'text'"))
        .when(F.trim(F.col("text")) == "", F.lit("empty report"))
    )
    # As the local reader: among the readable reports of an id, the first in the input wins.
    readable = F.col("problem").isNull()
    first = F.row_number().over(Window.partitionBy("id", readable).orderBy("_row")) == 1
    return reports.withColumn("problem", unreadable).withColumn(
        "problem", F.when(readable & ~first, F.lit("duplicate id")).otherwise(F.col("problem"))
    )


# -- scoring in the Python workers -------------------------------------------------------------

_PREDICTORS: dict[tuple[str, str], Predictor] = {}


def _worker_predictor(model: str, runtime: str) -> Predictor:
    """The worker process's predictor: loaded at its first task, reused by the next ones."""
    key = (model, runtime)
    predictor = _PREDICTORS.get(key)
    if predictor is None:
        from cimcoder.inference.predictor import Predictor

        predictor = Predictor.load(model, runtime=runtime)
        _PREDICTORS[key] = predictor
    return predictor


def _score_batches(job: SparkJob, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    import pyarrow as pa

    from cimcoder.inference.cli import _predict_chunk
    from cimcoder.inference.predictor import StayInput
    from cimcoder.inference.reader import Unreadable

    schema = _arrow_schema()
    predictor: Predictor | None = None
    for batch in batches:
        rows: list[dict[str, Any]] = []
        inputs: list[StayInput] = []
        for record in batch.to_pylist():
            if record["problem"] is not None:
                rows.append({"id": record["id"], "error": record["problem"]})
            else:
                inputs.append(StayInput(record["id"], record["text"]))
        if inputs and predictor is None:
            predictor = _worker_predictor(job.model, job.runtime)
        for start in range(0, len(inputs), CHUNK):
            chunk = inputs[start : start + CHUNK]
            failures: list[Unreadable] = []
            assert predictor is not None
            results = _predict_chunk(
                predictor, chunk, job.batch_size, failures, evidence=job.evidence
            )
            failed = iter(failures)
            for item, prediction in zip(chunk, results, strict=True):
                if prediction is None:
                    rows.append({"id": item.id, "error": next(failed).reason})
                else:
                    rows.append(prediction.model_dump(mode="json"))
        yield pa.RecordBatch.from_pylist(rows, schema=schema)


def _arrow_schema() -> pa.Schema:
    from pyspark.sql.pandas.types import to_arrow_schema

    return to_arrow_schema(scored_schema())


def score(reports: DataFrame, job: SparkJob) -> DataFrame:
    """Checked reports (`check_reports`) -> `scored_schema()` rows: a prediction or an error each.

    `mapInArrow` (the Arrow batches `mapInPandas` converts to pandas, without the conversion:
    the nested codes go straight from the predictor's dicts to Arrow structs).
    """
    import functools

    return reports.select("id", "text", "problem").mapInArrow(
        functools.partial(_score_batches, job), schema=scored_schema()
    )


# -- the job -----------------------------------------------------------------------------------


def _check_output(output: Path) -> None:
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise SparkInputError(
            f"--output {output} exists and is not an empty folder: give a new folder "
            f"(it will hold {PREDICTIONS_DIR}/ and {ERRORS_DIR}/ as Parquet)"
        )
    if not output.parent.exists():
        raise SparkInputError(f"the folder of --output does not exist: {output.parent}")


def scoring_tasks(input_partitions: int, cores: int) -> int:
    """How many scoring tasks: at least one per input partition, a whole number per core.

    The duplicate check shuffles into `spark.sql.shuffle.partitions` partitions (200, fewer
    once adaptive execution merges them): one task each would pay 200 Python worker round
    trips, and a count that is no multiple of the cores leaves cores idle in the last wave
    (3 tasks of 33,000 stays on 2 cores leave one core alone for a third of the job). The
    reports are redistributed evenly (`repartition`, a shuffle of the texts only) into this
    many tasks.
    """
    cores = max(cores, 1)
    return cores * -(-max(input_partitions, cores) // cores)


def predict_to_parquet(
    spark: SparkSession, source: Path, output: Path, job: SparkJob
) -> SparkResult:
    """Score `source` into `output`/predictions and `output`/errors (Parquet)."""
    from pyspark.sql import functions as F

    _check_output(output)
    from cimcoder.inference.predictor import Predictor

    # Loaded once on the driver too: a bad model is refused here, in one clear line,
    # not as a worker traceback.
    Predictor.load(job.model, runtime=job.runtime)
    reports = read_reports(spark, source)
    tasks = scoring_tasks(reports.rdd.getNumPartitions(), spark.sparkContext.defaultParallelism)
    scored = score(check_reports(reports).repartition(tasks), job)
    predictions_path, errors_path = output / PREDICTIONS_DIR, output / ERRORS_DIR
    staging = output / STAGING_DIR
    try:
        # Both outputs come from one scoring pass, streamed to disk as it goes, then split.
        # Cached in memory instead, the partitions (25,000 scored stays each for 100,000 on
        # local[2]) were read back whole and ran the driver's 1 GiB heap out.
        scored.write.parquet(str(staging))
        staged = spark.read.parquet(str(staging))
        staged.filter(F.col("error").isNull()).select(*PREDICTION_COLUMNS).write.parquet(
            str(predictions_path)
        )
        failed = staged.filter(F.col("error").isNotNull()).select(*ERROR_COLUMNS)
        failed.coalesce(1).write.parquet(str(errors_path))
    except Exception as exc:  # Py4J / PySpark errors: the details are in Spark's own log
        raise SparkJobError(f"the Spark job failed: {_reason(exc)}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    # Row counts from the Parquet footers: no second pass over the data.
    n_ok = spark.read.parquet(str(predictions_path)).count()
    n_failed = spark.read.parquet(str(errors_path)).count()
    return SparkResult(n_ok, n_failed, predictions_path, errors_path)
