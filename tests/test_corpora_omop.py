"""OMOP CDM loader on a real SQLite file and on the real PostgreSQL server of the test run."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from cimcoder.training.corpora import CorpusError, load_dataset
from cimcoder.training.corpora.omop import load_omop

CRH_IC = ("Décompensation cardiaque globale chez un patient hypertendu. "
          "Pas de syndrome coronarien aigu.")
CRO = "Compte rendu opératoire : cholécystectomie cœlioscopique pour cholécystite aiguë lithiasique."
CRH_CHOLE = "Cholécystite aiguë lithiasique. Père diabétique."


def _omop_schema(metadata: sa.MetaData) -> dict[str, sa.Table]:
    """The OMOP CDM v5.4 columns the loader reads, plus a few it ignores."""
    return {
        "person": sa.Table(
            "person", metadata,
            sa.Column("person_id", sa.BigInteger, primary_key=True),
            sa.Column("gender_concept_id", sa.Integer),
            sa.Column("year_of_birth", sa.Integer),
            sa.Column("race_concept_id", sa.Integer),
        ),
        "visit_occurrence": sa.Table(
            "visit_occurrence", metadata,
            sa.Column("visit_occurrence_id", sa.BigInteger, primary_key=True),
            sa.Column("person_id", sa.BigInteger),
            sa.Column("visit_concept_id", sa.Integer),
            sa.Column("visit_start_date", sa.Date),
            sa.Column("visit_end_date", sa.Date),
        ),
        "note": sa.Table(
            "note", metadata,
            sa.Column("note_id", sa.BigInteger, primary_key=True),
            sa.Column("person_id", sa.BigInteger),
            sa.Column("note_date", sa.Date),
            sa.Column("note_type_concept_id", sa.Integer),
            sa.Column("note_title", sa.String(250)),
            sa.Column("note_text", sa.Text),
            sa.Column("visit_occurrence_id", sa.BigInteger, nullable=True),
        ),
        "condition_occurrence": sa.Table(
            "condition_occurrence", metadata,
            sa.Column("condition_occurrence_id", sa.BigInteger, primary_key=True),
            sa.Column("person_id", sa.BigInteger),
            sa.Column("condition_concept_id", sa.Integer),
            sa.Column("condition_start_date", sa.Date),
            sa.Column("condition_status_concept_id", sa.Integer, nullable=True),
            sa.Column("condition_status_source_value", sa.String(50), nullable=True),
            sa.Column("condition_source_value", sa.String(50), nullable=True),
            sa.Column("visit_occurrence_id", sa.BigInteger, nullable=True),
        ),
    }


_NO_STATUS = {"condition_status_concept_id": None, "condition_status_source_value": None}


def _fill(url: str) -> None:
    engine = sa.create_engine(url)
    metadata = sa.MetaData()
    tables = _omop_schema(metadata)
    d = datetime.date
    with engine.begin() as conn:
        metadata.drop_all(conn)
        metadata.create_all(conn)
        conn.execute(tables["person"].insert(), [
            {"person_id": 1, "gender_concept_id": 8507, "year_of_birth": 1948, "race_concept_id": 0},
            {"person_id": 2, "gender_concept_id": 8532, "year_of_birth": 1980, "race_concept_id": 0},
        ])
        conn.execute(tables["visit_occurrence"].insert(), [
            {"visit_occurrence_id": 100, "person_id": 1, "visit_concept_id": 9201,
             "visit_start_date": d(2024, 2, 1), "visit_end_date": d(2024, 2, 8)},
            {"visit_occurrence_id": 200, "person_id": 2, "visit_concept_id": 9201,
             "visit_start_date": d(2024, 3, 10), "visit_end_date": d(2024, 3, 13)},
        ])
        conn.execute(tables["note"].insert(), [
            {"note_id": 1, "person_id": 1, "note_date": d(2024, 2, 8), "note_type_concept_id": 44814645,
             "note_title": "crh", "note_text": CRH_IC, "visit_occurrence_id": 100},
            {"note_id": 2, "person_id": 2, "note_date": d(2024, 3, 13), "note_type_concept_id": 44814645,
             "note_title": "crh", "note_text": CRH_CHOLE, "visit_occurrence_id": 200},
            {"note_id": 3, "person_id": 2, "note_date": d(2024, 3, 11), "note_type_concept_id": 44814645,
             "note_title": "cro", "note_text": CRO, "visit_occurrence_id": 200},
            {"note_id": 4, "person_id": 2, "note_date": d(2024, 3, 11), "note_type_concept_id": 44814645,
             "note_title": "crh", "note_text": "Note orpheline.", "visit_occurrence_id": None},
            {"note_id": 5, "person_id": 1, "note_date": d(2024, 2, 2), "note_type_concept_id": 44814645,
             "note_title": "crh", "note_text": "", "visit_occurrence_id": 100},
        ])
        conn.execute(tables["condition_occurrence"].insert(), [{**_NO_STATUS, **row} for row in [
            {"condition_occurrence_id": 10, "person_id": 1, "condition_concept_id": 0,
             "condition_status_concept_id": 32902, "condition_source_value": "I500", "visit_occurrence_id": 100},
            {"condition_occurrence_id": 11, "person_id": 1, "condition_concept_id": 0,
             "condition_status_concept_id": 32908, "condition_source_value": "I10", "visit_occurrence_id": 100},
            {"condition_occurrence_id": 20, "person_id": 2, "condition_concept_id": 0,
             "condition_status_source_value": "DP", "condition_source_value": "K80.0", "visit_occurrence_id": 200},
            {"condition_occurrence_id": 21, "person_id": 2, "condition_concept_id": 0,
             "condition_source_value": "I50.7", "visit_occurrence_id": 200},     # unknown code
            {"condition_occurrence_id": 22, "person_id": 2, "condition_concept_id": 0,
             "condition_source_value": None, "visit_occurrence_id": 200},        # blank
            {"condition_occurrence_id": 30, "person_id": 1, "condition_concept_id": 0,
             "condition_source_value": "J13", "visit_occurrence_id": 300},       # visit without note
        ]])
    engine.dispose()


def _check(corpus) -> None:  # type: ignore[no-untyped-def]
    by_id = {s.id: s for s in corpus}
    assert set(by_id) == {"100", "200"}
    ic, chole = by_id["100"], by_id["200"]
    assert [(d.code, d.role) for d in ic.diagnoses] == [("I50.0", "DP"), ("I10", "DAS")]
    assert ic.diagnoses[0].source_code == "I500"
    assert ic.patient_id == "1"
    assert ic.context is not None and (ic.context.sex, ic.context.age, ic.context.length_of_stay) == ("M", 76, 7)
    # Notes ordered by date: the operative report (11 March) comes before the discharge summary.
    assert [d.doc_type for d in chole.documents] == ["cro", "crh"]
    assert chole.text == CRO + "\n\n" + CRH_CHOLE
    assert chole.codes == ["K80.0"] and chole.diagnoses[0].role == "DP"
    skipped = {r.resource_id: r.reason for r in corpus.report.skipped}
    assert skipped == {
        "note 4": "note without visit_occurrence_id",
        "note 5": "empty note_text",
        "condition_occurrence 22": "blank condition_source_value",
        "condition_occurrence 30": "visit 300 has no note",
    }
    assert [(i.source_code, i.stay_id, i.kind) for i in corpus.report.unknown_codes] == [("I50.7", "200", "unknown")]


def test_omop_on_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "omop.db"
    _fill(f"sqlite:///{db}")
    _check(load_dataset(db))                 # a path: detected by its suffix
    _check(load_dataset(f"sqlite:///{db}"))  # or a URL


def test_omop_missing_tables_and_files(tmp_path: Path) -> None:
    db = tmp_path / "empty.sqlite"
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE note (note_id INTEGER, person_id INTEGER)"))
    engine.dispose()
    with pytest.raises(CorpusError, match="no table 'condition_occurrence'"):
        load_omop(str(db))
    with pytest.raises(CorpusError, match="no such SQLite database"):
        load_dataset(f"sqlite:///{tmp_path / 'absent.db'}")
    (tmp_path / "garbage.db").write_text("ceci n'est pas une base", encoding="utf-8")
    with pytest.raises(CorpusError, match="cannot read OMOP tables"):
        load_dataset(tmp_path / "garbage.db")


def test_omop_missing_column(tmp_path: Path) -> None:
    db = tmp_path / "partial.db"
    engine = sa.create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE note (note_id INTEGER, person_id INTEGER, note_text TEXT, visit_occurrence_id INTEGER)"))
        conn.execute(sa.text("CREATE TABLE condition_occurrence (condition_occurrence_id INTEGER, person_id INTEGER, visit_occurrence_id INTEGER)"))
    engine.dispose()
    with pytest.raises(CorpusError, match=r"lacks column.*condition_source_value"):
        load_omop(str(db))


@pytest.mark.postgres
def test_omop_on_postgresql(postgres_url: str) -> None:
    _fill(postgres_url)
    corpus = load_dataset(postgres_url)
    _check(corpus)
    assert "postgresql" in corpus.report.source


@pytest.mark.postgres
def test_omop_postgresql_unreachable_database(postgres_url: str) -> None:
    url = postgres_url.rsplit("/", 1)[0] + "/base_absente"
    with pytest.raises(CorpusError, match="base_absente"):
        load_dataset(url)
