"""Review store: migrations, enqueue and QC sampling, saves (idempotent, optimistic), audit
trail, export to the corpora schema — on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import csv
import datetime
import itertools
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, inspect, select, text

from cimcoder.inference.schemas import StayPrediction
from cimcoder.serving.review import audit, export, monitoring, workflow
from cimcoder.serving.review.schemas import CodeDecisionIn, ReviewIn
from cimcoder.serving.review.store import (
    AuditEvent,
    Base,
    Review,
    ReviewCode,
    ReviewConflict,
    ReviewStay,
    ReviewStore,
)
from cimcoder.training.corpora.schema import Stay

# -- clinical cases (shared with the other review tests) ---------------------------------

CRH_INSUFFISANCE_CARDIAQUE = (
    "Motif : dyspnée d'effort croissante.\n"
    "Antécédents : hypertension artérielle traitée par amlodipine. Diabète de type 2 sous "
    "metformine.\n"
    "Évolution : insuffisance cardiaque congestive décompensée, traitée par furosémide IV. "
    "Pas d'embolie pulmonaire à l'angioscanner. Hypokaliémie à 3,1 mmol/l corrigée par KCl.\n"
    "Conclusion : insuffisance cardiaque congestive sur cardiopathie hypertensive."
)

# (code, label, score, decision, role, mention in the text)
SUGGESTIONS = [
    ("I50.0", "Insuffisance cardiaque congestive", 0.97, "auto", "DP",
     "insuffisance cardiaque congestive décompensée"),
    ("I10", "Hypertension essentielle (primitive)", 0.71, "review", "DAS",
     "hypertension artérielle"),
    ("E11.9", "Diabète sucré de type 2, sans complication", 0.64, "review", "DAS",
     "Diabète de type 2"),
    ("I26.9", "Embolie pulmonaire", 0.12, "reject", "DAS", "embolie pulmonaire"),
]

# A chemotherapy session: the DP is the care given (Z51.1), the DR the cancer treated.
CRH_CHIMIOTHERAPIE = (
    "Hospitalisation de jour pour séance de chimiothérapie, 4e cure d'EC.\n"
    "Patiente suivie pour un cancer du sein gauche du quadrant supéro-externe, avec "
    "métastases osseuses connues traitées par acide zolédronique.\n"
    "Bonne tolérance clinique, pas de nausées. Polynucléaires neutrophiles à 2,1 G/l.\n"
    "Conclusion : cure administrée sans incident, prochaine séance dans 21 jours."
)

CHIMIO_SUGGESTIONS = [
    ("Z51.1", "Séance de chimiothérapie pour tumeur", 0.98, "auto", "DP",
     "séance de chimiothérapie"),
    ("C50.4", "Tumeur maligne du quadrant supéro-externe du sein", 0.93, "auto", "DR",
     "cancer du sein gauche du quadrant supéro-externe"),
    ("C79.5", "Tumeur maligne secondaire des os et de la moelle osseuse", 0.66, "review", "DAS",
     "métastases osseuses"),
    ("R11", "Nausées et vomissements", 0.08, "reject", "DAS", "nausées"),
]


def make_case(
    stay_id: str,
    *,
    unit: str = "Cardiologie",
    date: str = "2026-11-16",
    decisions: dict[str, str] | None = None,
    model_version: str = "run-test-1",
    text_: str = CRH_INSUFFISANCE_CARDIAQUE,
    suggestions: list[tuple[str, str, float, str, str, str]] | None = None,
) -> tuple[dict[str, Any], StayPrediction]:
    """A stay (heart failure unless told) and its prediction, with evidence located in its
    text."""
    codes = []
    for code, label, score, decision, role, mention in suggestions or SUGGESTIONS:
        start = text_.index(mention)
        codes.append(
            {
                "code": code,
                "label": label,
                "score": score,
                "decision": (decisions or {}).get(code, decision),
                "role": role,
                "cim11": [],
                "evidence": [{"start": start, "end": start + len(mention), "text": mention}],
            }
        )
    prediction = StayPrediction.model_validate(
        {
            "id": stay_id,
            "codes": codes,
            "model": {
                "name": "tfidf-test",
                "version": model_version,
                "source": "runs/test/tfidf",
                "architecture": "tfidf_lr",
                "terminology": "cim10",
                "edition": "cim10-fr-edsnlp-0.23.0",
                "labels": 4,
                "thresholds_version": "policy-test-1",
                "calibrated": True,
            },
        }
    )
    stay = {"id": stay_id, "unit": unit, "date": date, "text": text_}
    return stay, prediction


def full_review(base_version: int, **overrides: Any) -> ReviewIn:
    """Accept the heart failure and HTA, reject the diabetes, add the hypokalaemia, DP I50.0."""
    body = {
        "decision_id": uuid.uuid4().hex,
        "base_version": base_version,
        "codes": [
            CodeDecisionIn(code="I50.0", action="accept"),
            CodeDecisionIn(code="I10", action="accept"),
            CodeDecisionIn(code="E11.9", action="reject", reason="non pris en charge"),
            CodeDecisionIn(code="e8768", action="add"),
        ],
        "dp": "I50.0",
    }
    body.update(overrides)
    return ReviewIn(**body)


def make_chimio_case(stay_id: str, **kw: Any) -> tuple[dict[str, Any], StayPrediction]:
    """A breast cancer chemotherapy session: DP Z51.1 and DR C50.4 proposed by the model."""
    return make_case(
        stay_id, unit="Oncologie", text_=CRH_CHIMIOTHERAPIE, suggestions=CHIMIO_SUGGESTIONS, **kw
    )


def chimio_review(base_version: int, **overrides: Any) -> ReviewIn:
    """Keep the session, the cancer and the bone metastases: DP Z51.1, DR C50.4."""
    body = {
        "decision_id": uuid.uuid4().hex,
        "base_version": base_version,
        "codes": [
            CodeDecisionIn(code="Z51.1", action="accept"),
            CodeDecisionIn(code="C50.4", action="accept"),
            CodeDecisionIn(code="C79.5", action="accept"),
        ],
        "dp": "Z51.1",
        "dr": "C50.4",
    }
    body.update(overrides)
    return ReviewIn(**body)


def enqueue_chimio(store: ReviewStore, ids: list[str], **kw: Any) -> None:
    with store.session(write=True) as session:
        for stay_id in ids:
            stay, pred = make_chimio_case(stay_id, **kw)
            workflow.enqueue(session, stay, pred, default_qc_rate=0.0)


def enqueue_cases(store: ReviewStore, ids: list[str], qc_rate: float = 0.0, **kw: Any) -> None:
    with store.session(write=True) as session:
        for stay_id in ids:
            stay, pred = make_case(stay_id, **kw)
            workflow.enqueue(session, stay, pred, default_qc_rate=qc_rate)


_db_counter = itertools.count()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReviewStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'review.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        url = server.create_database(f"review_store_{next(_db_counter)}_{uuid.uuid4().hex[:6]}")
    opened = ReviewStore(url)
    yield opened
    opened.close()


# -- tests -------------------------------------------------------------------------------


def test_migrations_create_exactly_the_models(store: ReviewStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    ReviewStore(store.url)  # upgrading again is a no-op


def test_stay_needing_review_enters_the_queue(store: ReviewStore) -> None:
    enqueue_cases(store, ["sej-ic-1"])
    with store.session() as session:
        view = workflow.stay_view(session, "sej-ic-1")
    assert view["status"] == "to_code"
    assert view["auto_coded"] is False
    assert view["unit"] == "Cardiologie"
    assert [s["code"] for s in view["suggestions"]] == ["I50.0", "I10", "E11.9", "I26.9"]
    span = view["suggestions"][0]["evidence"][0]
    assert view["text"][span["start"] : span["end"]] == "insuffisance cardiaque congestive décompensée"
    assert view["model"]["thresholds_version"] == "policy-test-1"


def test_a_corpora_stay_enters_the_queue_with_its_documents_and_unit(store: ReviewStore) -> None:
    import datetime

    from cimcoder.training.corpora.schema import Document, Stay, StayContext

    _, pred = make_case("sej-corpora")
    stay = Stay(
        id="sej-corpora", patient_id="p-1", context=StayContext(unit="Cardiologie"),
        documents=[Document(text=CRH_INSUFFISANCE_CARDIAQUE, date=datetime.date(2026, 11, 16))],
    )
    with store.session(write=True) as session:
        workflow.enqueue(session, stay, pred, default_qc_rate=0.0)
    with store.session() as session:
        view = workflow.stay_view(session, "sej-corpora")
    assert view["unit"] == "Cardiologie" and view["text"] == CRH_INSUFFISANCE_CARDIAQUE
    assert str(view["date"]) == "2026-11-16"


def test_auto_coded_stays_are_apart_and_sampled_for_qc_by_hash(store: ReviewStore) -> None:
    ids = [f"sej-auto-{i}" for i in range(40)]
    all_auto = {"I10": "auto", "E11.9": "auto"}
    enqueue_cases(store, ids, qc_rate=0.25, decisions=all_auto)
    expected = {i for i in ids if workflow.qc_draw(i) < 0.25}
    assert 0 < len(expected) < 40
    with store.session() as session:
        rows = session.scalars(select(ReviewStay)).all()
        assert {r.id for r in rows if r.qc_sampled} == expected
        assert {r.id for r in rows if r.status == "auto_coded"} == set(ids) - expected
        assert all(r.status == "to_code" for r in rows if r.qc_sampled)
        assert all(r.dp_code == "I50.0" for r in rows)
    # Raising the rate routes more untouched auto-coded stays to review, deterministically.
    with store.session(write=True) as session:
        workflow.set_qc_rate(session, 0.5, "dr-martin", 0.25)
    with store.session() as session:
        sampled = set(session.scalars(select(ReviewStay.id).where(ReviewStay.qc_sampled)))
    assert sampled == {i for i in ids if workflow.qc_draw(i) < 0.5}


def test_only_the_best_rejected_candidates_are_stored(store: ReviewStore) -> None:
    stay, prediction = make_case("sej-ic-long")
    extra = prediction.codes[-1]
    prediction.codes += [
        extra.model_copy(update={"code": f"R{50 + i // 10}.{i % 10}", "score": 0.1 - i / 1000})
        for i in range(40)
    ]
    with store.session(write=True) as session:
        workflow.enqueue(session, stay, prediction)
        view = workflow.stay_view(session, "sej-ic-long")
    decisions = [s["decision"] for s in view["suggestions"]]
    assert decisions.count("reject") == workflow.MAX_REJECTED_STORED
    assert [s["code"] for s in view["suggestions"][:4]] == ["I50.0", "I10", "E11.9", "I26.9"]


def test_enqueue_is_idempotent_and_refuses_another_text(store: ReviewStore) -> None:
    enqueue_cases(store, ["sej-ic-2"])
    enqueue_cases(store, ["sej-ic-2"])  # same text, same model: nothing new
    stay, pred = make_case("sej-ic-2")
    stay["text"] = stay["text"] + "\nAjout tardif."
    with pytest.raises(ReviewConflict), store.session(write=True) as session:
        workflow.enqueue(session, stay, pred)
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(ReviewStay)) == 1


def test_save_accept_reject_add_and_dp(store: ReviewStore) -> None:
    enqueue_cases(store, ["sej-ic-3"])
    result = workflow.save_review(store, "sej-ic-3", full_review(1), "dr-dupont")
    assert result["version"] == 2
    assert result["status"] == "validated"
    assert result["dp"] == "I50.0"
    finals = {c["final_code"]: c["role"] for c in result["codes"] if c["final_code"]}
    assert finals == {"I50.0": "DP", "I10": "DAS", "E87.68": "DAS"}
    # I50.0 was split by the ATIH (I50.00-I50.09): the grouping would reject it, so say so.
    assert result["warnings"] == [
        "I50.0 n'est pas codable en MCO (code père interdit) : préférer I50.00, I50.01, "
        "I50.02, I50.09"
    ]
    with store.session() as session:
        stay = session.get(ReviewStay, "sej-ic-3")
        assert (stay.status, stay.version, stay.validated_by) == ("validated", 2, "dr-dupont")
        events = session.scalars(select(AuditEvent).where(AuditEvent.stay_id == "sej-ic-3")).all()
    assert [e.event for e in events] == ["stay.enqueued", "review.saved"]
    saved = events[1]
    assert saved.actor == "dr-dupont"
    assert saved.model_version == "run-test-1"
    assert saved.thresholds_version == "policy-test-1"
    assert saved.terminology_edition == "cim10-fr-edsnlp-0.23.0"
    assert saved.before["codes"] == [
        {"code": "I50.0", "role": "DP"}, {"code": "I10", "role": "DAS"},
        {"code": "E11.9", "role": "DAS"},
    ]
    assert saved.after["dp"] == "I50.0"
    rejected = [d for d in saved.after["decisions"] if d["action"] == "reject"]
    assert rejected == [{"code": "E11.9", "action": "reject", "final_code": None,
                         "reason": "non pris en charge", "suggested_decision": "review"}]


def test_change_of_a_code_moves_the_dp(store: ReviewStore) -> None:
    enqueue_cases(store, ["sej-ic-4"])
    body = full_review(
        1,
        codes=[
            CodeDecisionIn(code="I50.0", action="change", new_code="I11.09"),
            CodeDecisionIn(code="I10", action="reject", reason="inclus dans I11.09"),
            CodeDecisionIn(code="E11.9", action="accept"),
        ],
        dp="I11.09",
    )
    result = workflow.save_review(store, "sej-ic-4", body, "dr-dupont")
    assert [(c["code"], c["final_code"], c["role"]) for c in result["codes"]] == [
        ("I50.0", "I11.09", "DP"), ("I10", None, None), ("E11.9", "E11.9", "DAS"),
    ]


def test_retried_save_is_applied_once(store: ReviewStore) -> None:
    enqueue_cases(store, ["sej-ic-5"])
    body = full_review(1)
    first = workflow.save_review(store, "sej-ic-5", body, "dr-dupont")
    again = workflow.save_review(store, "sej-ic-5", body, "dr-dupont")
    assert (first["replayed"], again["replayed"]) == (False, True)
    assert again["version"] == first["version"] == 2
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Review)) == 1
        assert session.scalar(select(func.count()).select_from(ReviewCode)) == 4
        saves = session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.event == "review.saved")
        )
    assert saves == 1


def test_second_coder_on_a_stale_version_gets_a_conflict(store: ReviewStore) -> None:
    enqueue_cases(store, ["sej-ic-6"])
    workflow.save_review(store, "sej-ic-6", full_review(1), "dr-dupont")
    with pytest.raises(ReviewConflict) as caught:
        workflow.save_review(store, "sej-ic-6", full_review(1, dp="I10"), "dr-martin")
    assert caught.value.current["version"] == 2
    assert caught.value.current["validated_by"] == "dr-dupont"
    with store.session() as session:
        assert session.get(ReviewStay, "sej-ic-6").dp_code == "I50.0"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dp": None}, "DP"),
        ({"codes": [CodeDecisionIn(code="I50.0", action="accept")]}, "I10, E11.9"),
        ({"codes": [CodeDecisionIn(code="I50.0", action="accept"),
                    CodeDecisionIn(code="I10", action="accept"),
                    CodeDecisionIn(code="E11.9", action="accept"),
                    CodeDecisionIn(code="Z99.99", action="add")]}, "Z99.99"),
        ({"dp": "E11.9", "codes": [CodeDecisionIn(code="I50.0", action="accept"),
                                   CodeDecisionIn(code="I10", action="accept"),
                                   CodeDecisionIn(code="E11.9", action="reject")]}, "DP E11.9"),
        ({"codes": [CodeDecisionIn(code="J18.9", action="accept")]}, "not a suggestion"),
        ({"dp": "W19.0", "codes": [CodeDecisionIn(code="I50.0", action="accept"),
                                 CodeDecisionIn(code="I10", action="accept"),
                                 CodeDecisionIn(code="E11.9", action="accept"),
                                 CodeDecisionIn(code="W19.0", action="add")]},
         "W19.0 ne peut pas être DP"),
    ],
    ids=["no-dp", "undecided", "unknown-code", "dp-rejected", "accept-unsuggested",
         "external-cause-dp"],
)
def test_invalid_saves_are_refused_and_write_nothing(
    store: ReviewStore, overrides: dict[str, Any], message: str
) -> None:
    enqueue_cases(store, ["sej-ic-7"])
    with pytest.raises(workflow.InvalidReview, match=message):
        workflow.save_review(store, "sej-ic-7", full_review(1, **overrides), "dr-dupont")
    with store.session() as session:
        assert session.get(ReviewStay, "sej-ic-7").version == 1
        assert session.scalar(select(func.count()).select_from(Review)) == 0


def test_audit_trail_refuses_update_and_delete(store: ReviewStore) -> None:
    enqueue_cases(store, ["sej-ic-8"])
    for statement in ("UPDATE audit_events SET actor = 'x'", "DELETE FROM audit_events"):
        with pytest.raises(Exception, match="append-only"), store.engine.begin() as conn:
            conn.execute(text(statement))
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == 1


def test_export_gives_corpora_stays_and_audit_exports(store: ReviewStore, tmp_path: Path) -> None:
    enqueue_cases(store, ["sej-ic-9", "sej-ic-10"])
    workflow.save_review(store, "sej-ic-9", full_review(1), "dr-dupont")
    out = tmp_path / "valides.jsonl"
    assert export.export_validated(store, out) == (1, 0)  # sej-ic-10 is not validated
    stays = [Stay.model_validate_json(line) for line in out.read_text().splitlines()]
    assert stays[0].id == "sej-ic-9"
    # Base corpus + feedback: the coder's coding replaces the base copy of the same stay.
    base = [
        Stay(id="sej-ic-9", documents=[{"text": "ancienne version"}],
             diagnoses=[{"code": "I10", "role": "DP"}]),
        Stay(id="sej-base-1", documents=[{"text": "Pneumopathie franche lobaire aiguë."}],
             diagnoses=[{"code": "J13", "role": "DP"}]),
    ]
    merged = tmp_path / "train+retours.jsonl"
    assert export.export_validated(store, merged, include=base) == (1, 1)
    ids = [Stay.model_validate_json(line).id for line in merged.read_text().splitlines()]
    assert ids == ["sej-base-1", "sej-ic-9"]
    assert [(d.code, d.role) for d in stays[0].diagnoses] == [
        ("I50.0", "DP"), ("I10", "DAS"), ("E87.68", "DAS"),
    ]
    assert stays[0].text == CRH_INSUFFISANCE_CARDIAQUE
    assert stays[0].context is not None and stays[0].context.unit == "Cardiologie"
    assert stays[0].edition == "cim10-fr-edsnlp-0.23.0"

    assert audit.export_audit(store, tmp_path / "audit.jsonl") == 3
    lines = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [e["event"] for e in lines] == ["stay.enqueued", "stay.enqueued", "review.saved"]
    assert audit.export_audit(store, tmp_path / "audit.csv") == 3
    header = (tmp_path / "audit.csv").read_text().splitlines()[0]
    assert header.split(",")[:4] == ["id", "at", "actor", "event"]


def test_monitoring_measures_qc_precision_and_corrections(store: ReviewStore) -> None:
    auto = {"I10": "auto", "E11.9": "auto"}
    ids = [f"sej-cq-{i}" for i in range(6)]
    enqueue_cases(store, ids, qc_rate=1.0, decisions=auto)
    # Every stay is sampled: the coders confirm 2 of the 3 auto codes (E11.9 is wrong).
    for stay_id in ids:
        body = full_review(
            1,
            codes=[CodeDecisionIn(code="I50.0", action="accept"),
                   CodeDecisionIn(code="I10", action="accept"),
                   CodeDecisionIn(code="E11.9", action="reject")],
        )
        workflow.save_review(store, stay_id, body, "dr-dupont")
    report = monitoring.compute(store, labels={"I50.0": 50, "I10": 30, "E11.9": 20})
    assert report["qc"]["auto_codes_checked"] == 18
    assert report["qc"]["auto_codes_confirmed"] == 12
    assert report["qc"]["precision"] == round(12 / 18, 4)
    assert report["most_corrected"][0]["code"] == "E11.9"
    assert report["most_corrected"][0]["rejected"] == 6
    week = report["weekly"][0]
    assert (week["stays"], week["auto_coded"], week["auto_rate"]) == (6, 6, 1.0)
    assert week["score_psi"] == 0.0  # the reference week against itself
    assert report["drift"]["code_frequency"]["psi"] is not None


def test_psi_reads_a_shift() -> None:
    ref = monitoring.histogram([0.05, 0.15, 0.5, 0.9] * 25)
    assert monitoring.psi(ref, ref) == 0.0
    shifted = monitoring.histogram([0.95] * 100)
    assert monitoring.psi(ref, shifted) > monitoring.PSI_MAJOR


def test_week_labels_follow_iso_weeks() -> None:
    assert monitoring.week_of(datetime.date(2026, 11, 16)) == "2026-W47"


def test_dp_check_reads_the_terminology_restrictions() -> None:
    from cimcoder.terminologies import load_terminology

    cim10 = load_terminology("cim10")
    # Chute (cause externe, ATIH type 2) and a germ code (type 1): never a DP.
    for code in ("W19.0", "B95.3"):
        restrictions = cim10[code].restrictions
        assert restrictions is not None and not restrictions.allows("DP")
        with pytest.raises(workflow.InvalidReview, match=rf"^{code} ne peut pas être DP \(") as caught:
            workflow.check_dp(code, "cim10")
        assert restrictions.describe() in str(caught.value)
    workflow.check_dp("I10", "cim10")  # HTA essentielle: a fine DP
    # I50.0 is a forbidden parent code (type 3): not refused as DP, the save warns about it
    # whatever its role.
    assert not cim10["I50.0"].restrictions.codable  # type: ignore[union-attr]
    workflow.check_dp("I50.0", "cim10")
    assert workflow.pmsi_warnings(["I50.0"], "cim10")[0].startswith("I50.0 n'est pas codable en MCO")
    # CIM-11 carries no PMSI restriction.
    workflow.check_dp("BD10", "cim11")


# -- DR (diagnostic relié) ----------------------------------------------------------------


def _alembic(store: ReviewStore, action: str, revision: str) -> None:
    from alembic import command
    from alembic.config import Config

    from cimcoder.serving.review.store import MIGRATIONS_DIR

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with store.engine.begin() as conn:
        config.attributes["connection"] = conn
        getattr(command, action)(config, revision)


def test_migration_0002_adds_the_dr_and_gives_unreviewed_auto_stays_theirs(
    store: ReviewStore,
) -> None:
    all_auto = {"C79.5": "auto"}
    enqueue_chimio(store, ["sej-chimio-auto", "sej-chimio-revu"], decisions=all_auto)
    enqueue_chimio(store, ["sej-chimio-a-coder"])  # C79.5 to review: not auto-coded
    workflow.save_review(store, "sej-chimio-revu", chimio_review(1), "dr-dupont")

    _alembic(store, "downgrade", "0001")  # a store as it was before the DR
    with store.engine.connect() as conn:
        stay_columns = {c["name"] for c in inspect(conn).get_columns("stays")}
        review_columns = {c["name"] for c in inspect(conn).get_columns("reviews")}
    assert "dr_code" not in stay_columns | review_columns
    assert "dp_code" in stay_columns

    _alembic(store, "upgrade", "head")
    with store.session() as session:
        dr_of = {s.id: (s.dp_code, s.dr_code) for s in session.scalars(select(ReviewStay))}
        review = session.scalars(select(Review)).one()
    # Untouched auto-coded stay: the model's DR, as a new import records it. A reviewed stay
    # keeps what was saved then (no DR column yet); a stay to code has no coding yet.
    assert dr_of == {
        "sej-chimio-auto": ("Z51.1", "C50.4"),
        "sej-chimio-revu": ("Z51.1", None),
        "sej-chimio-a-coder": (None, None),
    }
    assert review.dr_code is None


def test_import_records_the_proposed_dr(store: ReviewStore) -> None:
    enqueue_chimio(store, ["sej-chimio-1"], decisions={"C79.5": "auto"})
    enqueue_chimio(store, ["sej-chimio-2"])
    with store.session() as session:
        auto = session.get(ReviewStay, "sej-chimio-1")
        assert (auto.status, auto.dp_code, auto.dr_code) == ("auto_coded", "Z51.1", "C50.4")
        view = workflow.stay_view(session, "sej-chimio-1")
        to_code = workflow.stay_view(session, "sej-chimio-2")
        enqueued = session.scalars(
            select(AuditEvent).where(AuditEvent.stay_id == "sej-chimio-1")
        ).one()
    assert (view["dp"], view["dr"]) == ("Z51.1", "C50.4")
    assert view["coding"] == {
        "dp": "Z51.1",
        "dr": "C50.4",
        "codes": [{"code": "Z51.1", "role": "DP"}, {"code": "C50.4", "role": "DR"},
                  {"code": "C79.5", "role": "DAS"}],
        "source": "model",
    }
    assert [(s["code"], s["role"]) for s in view["suggestions"][:2]] == [
        ("Z51.1", "DP"), ("C50.4", "DR"),
    ]
    assert (enqueued.after["dp"], enqueued.after["dr"]) == ("Z51.1", "C50.4")
    # Not auto-coded: nothing is coded on the stay yet, but the proposal keeps its roles.
    assert (to_code["dp"], to_code["dr"]) == (None, None)
    assert (to_code["coding"]["dp"], to_code["coding"]["dr"]) == ("Z51.1", "C50.4")
    assert {"code": "C50.4", "role": "DR"} in to_code["coding"]["codes"]


def test_coder_sets_changes_and_clears_the_dr_with_an_audit_trail(store: ReviewStore) -> None:
    enqueue_chimio(store, ["sej-chimio-3"])
    first = workflow.save_review(store, "sej-chimio-3", chimio_review(1), "dr-dupont")
    assert (first["dp"], first["dr"], first["warnings"]) == ("Z51.1", "C50.4", [])
    assert {c["final_code"]: c["role"] for c in first["codes"]} == {
        "Z51.1": "DP", "C50.4": "DR", "C79.5": "DAS",
    }
    # The tumour spans two quadrants: the coder changes the code, the DR follows it.
    to_c508 = [CodeDecisionIn(code="C50.4", action="change", new_code="c508",
                              reason="lésion à cheval sur deux quadrants"),
               CodeDecisionIn(code="C79.5", action="accept")]
    changed = chimio_review(2, codes=to_c508, dr="c508", status="in_review")
    second = workflow.save_review(store, "sej-chimio-3", changed, "dr-martin")
    assert second["dr"] == "C50.8"
    assert {c["final_code"]: c["role"] for c in second["codes"]} == {
        "C50.8": "DR", "Z51.1": "DP", "C79.5": "DAS",
    }
    cleared = workflow.save_review(
        store,
        "sej-chimio-3",
        chimio_review(3, codes=to_c508, dr=None),
        "dr-dupont",
    )
    assert cleared["dr"] is None
    assert {c["final_code"]: c["role"] for c in cleared["codes"]}["C50.8"] == "DAS"

    with store.session() as session:
        stay = session.get(ReviewStay, "sej-chimio-3")
        assert (stay.version, stay.dp_code, stay.dr_code) == (4, "Z51.1", None)
        saves = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.stay_id == "sej-chimio-3", AuditEvent.event == "review.saved")
            .order_by(AuditEvent.id)
        ).all()
        view = workflow.stay_view(session, "sej-chimio-3")
    assert [(e.actor, e.before["dr"], e.after["dr"]) for e in saves] == [
        ("dr-dupont", "C50.4", "C50.4"),  # before: the model's proposal
        ("dr-martin", "C50.4", "C50.8"),
        ("dr-dupont", "C50.8", None),
    ]
    assert {"code": "C50.8", "role": "DR"} in saves[1].after["codes"]
    assert view["last_review"]["dr"] is None and view["coding"]["dr"] is None


@pytest.mark.parametrize(
    ("case", "overrides", "message"),
    [
        ("ic", {"dr": "I10"},
         "pas de DR quand le DP I50.0 n'est pas un code Z de motif de soins"),
        ("chimio", {"dr": "Z51.1"}, "Z51.1 est déjà le DP"),
        ("chimio", {"dp": None, "dr": "C50.4", "status": "in_review"}, "un DR .C50.4. suppose un DP"),
        ("chimio", {"dr": "C79.5", "codes": [CodeDecisionIn(code="C79.5", action="reject")]},
         "le DR C79.5 doit être un des codes retenus"),
        ("chimio", {"dr": "Y43.3", "codes": [CodeDecisionIn(code="C79.5", action="accept"),
                                              CodeDecisionIn(code="Y43.3", action="add")]},
         r"Y43.3 ne peut pas être DR \(cause externe : interdit en DP et DR"),
        ("chimio", {"dr": "C50.99"}, "C50.99"),
    ],
    ids=["dp-not-a-z-code", "dr-is-the-dp", "no-dp", "dr-rejected", "external-cause-dr",
         "unknown-code"],
)
def test_invalid_dr_is_refused_and_writes_nothing(
    store: ReviewStore, case: str, overrides: dict[str, Any], message: str
) -> None:
    if case == "ic":
        enqueue_cases(store, ["sej-dr-1"])
        body = full_review(1, **overrides)
    else:
        enqueue_chimio(store, ["sej-dr-1"])
        body = chimio_review(1, **overrides)
    with pytest.raises(workflow.InvalidReview, match=message):
        workflow.save_review(store, "sej-dr-1", body, "dr-dupont")
    with store.session() as session:
        assert session.get(ReviewStay, "sej-dr-1").version == 1
        assert session.scalar(select(func.count()).select_from(Review)) == 0


def test_dr_check_needs_a_z_care_dp_and_reads_the_restrictions() -> None:
    from cimcoder.terminologies import load_terminology

    # Dialysis for end-stage kidney disease, palliative care of a lung cancer: fine DRs.
    workflow.check_dr("N18.5", "Z49.1", "cim10")
    workflow.check_dr("C34.9", "Z51.5", "cim10")
    # Syncope (R55, chapter XVIII) is a DP from chapters I-XIX: no DR.
    with pytest.raises(workflow.InvalidReview, match="le DP R55 n'est pas un code Z"):
        workflow.check_dr("I10", "R55", "cim10")
    restrictions = load_terminology("cim10")["B95.3"].restrictions
    assert restrictions is not None and not restrictions.allows("DR")
    with pytest.raises(workflow.InvalidReview, match=r"^B95.3 ne peut pas être DR \(") as caught:
        workflow.check_dr("B95.3", "Z51.1", "cim10")
    assert restrictions.describe() in str(caught.value)
    # CIM-11: the session code of chapter 24 (QB97) takes a DR, a disease (BD10) does not.
    workflow.check_dr("2C6Z", "QB97", "cim11")
    with pytest.raises(workflow.InvalidReview, match="pas de DR"):
        workflow.check_dr("2C6Z", "BD10", "cim11")


def test_export_gives_the_dr_its_role_in_every_format(store: ReviewStore, tmp_path: Path) -> None:
    enqueue_chimio(store, ["sej-chimio-4"])
    workflow.save_review(store, "sej-chimio-4", chimio_review(1), "dr-dupont")
    out = tmp_path / "valides.jsonl"
    assert export.export_validated(store, out) == (1, 0)
    (stay,) = [Stay.model_validate_json(line) for line in out.read_text().splitlines()]
    # What retraining reads: Diagnosis.role, DP first, then the DR, then the DAS.
    assert [(d.code, d.role) for d in stay.diagnoses] == [
        ("Z51.1", "DP"), ("C50.4", "DR"), ("C79.5", "DAS"),
    ]
    assert [(d.code, d.role) for d in next(export.iter_validated_stays(store)).diagnoses] == [
        ("Z51.1", "DP"), ("C50.4", "DR"), ("C79.5", "DAS"),
    ]
    assert audit.export_audit(store, tmp_path / "audit.jsonl") == 2
    saved = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[1])
    assert (saved["after"]["dp"], saved["after"]["dr"]) == ("Z51.1", "C50.4")
    assert audit.export_audit(store, tmp_path / "audit.csv") == 2
    with (tmp_path / "audit.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert json.loads(rows[1]["after"])["dr"] == "C50.4"


# -- audit hash chain ---------------------------------------------------------------------


def _lift_audit_guard(store: ReviewStore) -> None:
    """What an intruder with database rights does first: drop the append-only triggers."""
    with store.engine.begin() as conn:
        if store.engine.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER audit_events_no_update"))
            conn.execute(text("DROP TRIGGER audit_events_no_delete"))
        else:
            conn.execute(text("DROP TRIGGER audit_events_append_only ON audit_events"))


def _tamper(store: ReviewStore, statement: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(text(statement))


def test_audit_events_are_chained_and_verified(store: ReviewStore) -> None:
    enqueue_cases(store, ["sej-chaine-1", "sej-chaine-2"])
    workflow.save_review(store, "sej-chaine-1", full_review(1), "dr-dupont")
    with store.session() as session:
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    assert events[0].prev_hash == audit.GENESIS_HASH
    assert [e.prev_hash for e in events[1:]] == [e.hash for e in events[:-1]]
    check = audit.verify_chain(store)
    assert (check.intact, check.events, check.head) == (True, 3, events[-1].hash)


def test_an_edited_audit_event_breaks_the_chain_there(store: ReviewStore) -> None:
    enqueue_cases(store, ["sej-chaine-3", "sej-chaine-4"])
    workflow.save_review(store, "sej-chaine-3", full_review(1), "dr-dupont")
    with store.session() as session:
        saved_id = session.scalar(
            select(AuditEvent.id).where(AuditEvent.event == "review.saved")
        )
    _lift_audit_guard(store)
    # Someone rewrites who validated the stay.
    _tamper(store, f"UPDATE audit_events SET actor = 'dr-martin' WHERE id = {saved_id}")
    check = audit.verify_chain(store)
    assert (check.broken_id, check.events) == (saved_id, 2)
    assert "content does not match" in (check.reason or "")


def test_a_deleted_audit_event_breaks_the_chain_at_the_next(store: ReviewStore) -> None:
    enqueue_cases(store, ["sej-chaine-5", "sej-chaine-6", "sej-chaine-7"])
    with store.session() as session:
        ids = session.scalars(select(AuditEvent.id).order_by(AuditEvent.id)).all()
    _lift_audit_guard(store)
    _tamper(store, f"DELETE FROM audit_events WHERE id = {ids[1]}")
    check = audit.verify_chain(store)
    assert check.broken_id == ids[2]
    assert "previous hash" in (check.reason or "")


def test_migration_0003_chains_the_events_already_there(store: ReviewStore) -> None:
    _alembic(store, "downgrade", "0002")  # a store as it was before the chain
    import sqlalchemy as sa

    old_events = sa.table(
        "audit_events",
        sa.column("at", sa.DateTime),
        sa.column("actor", sa.String),
        sa.column("event", sa.String),
        sa.column("stay_id", sa.String),
        sa.column("after", sa.JSON),
    )
    with store.engine.begin() as conn:  # an event recorded by the code of revision 0002
        conn.execute(old_events.insert().values(
            at=datetime.datetime(2026, 11, 30, 9, 15, 0, 123456), actor="dr-dupont",
            event="settings.qc_rate", stay_id=None, after={"qc_rate": 0.1, "stays_rerouted": 0},
        ))
    with store.engine.connect() as conn:
        assert "hash" not in {c["name"] for c in inspect(conn).get_columns("audit_events")}
    _alembic(store, "upgrade", "head")
    with store.session() as session:
        chained = session.scalars(select(AuditEvent).order_by(AuditEvent.id)).all()
    assert len(chained) == 1 and chained[0].prev_hash == audit.GENESIS_HASH
    enqueue_cases(store, ["sej-nouveau-1"])  # new events chain onto the migrated ones
    assert audit.verify_chain(store).events == 2
    assert audit.verify_chain(store).intact
    # The append-only guard is back after the migration.
    with pytest.raises(Exception, match="append-only"), store.engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET actor = 'x'"))


def test_audit_csv_neutralises_formula_cells(store: ReviewStore, tmp_path: Path) -> None:
    # A principal named like a formula, a stay id starting with "-": a spreadsheet opening
    # the export must show them as text, not run them.
    enqueue_cases(store, ["-2-3"])
    with store.session(write=True) as session:
        workflow.set_qc_rate(session, 0.1, '=HYPERLINK("http://x.invalid","ok")', 0.0)
        workflow.set_qc_rate(session, 0.2, "@SUM(A1)", 0.0)
        workflow.set_qc_rate(session, 0.3, "+cmd", 0.0)
    out = tmp_path / "audit.csv"
    audit.export_audit(store, out)
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["stay_id"] == "'-2-3"
    assert [r["actor"] for r in rows[1:]] == [
        "'=HYPERLINK(\"http://x.invalid\",\"ok\")", "'@SUM(A1)", "'+cmd",
    ]
    assert json.loads(rows[1]["after"]) == {"qc_rate": 0.1, "stays_rerouted": 0}
    # JSONL keeps the values as they are.
    audit.export_audit(store, tmp_path / "audit.jsonl")
    first = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[0])
    assert first["stay_id"] == "-2-3"


@pytest.mark.postgres
def test_replicas_opening_one_new_database_at_once_migrate_it_once(postgres_server: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    url = postgres_server.create_database(f"review_race_{uuid.uuid4().hex[:6]}")
    with ThreadPoolExecutor(max_workers=3) as pool:
        stores = list(pool.map(lambda _: ReviewStore(url), range(3)))
    try:
        enqueue_cases(stores[0], ["sej-race"])
        with stores[2].session() as session:
            assert workflow.stay_view(session, "sej-race")["status"] == "to_code"
    finally:
        for opened in stores:
            opened.close()
