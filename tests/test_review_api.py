"""Review API and pages through the real FastAPI app (in-process client)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from test_review_store import CRH_INSUFFISANCE_CARDIAQUE, make_case, make_chimio_case

from cimcoder.serving.app import create_app
from cimcoder.serving.review import workflow
from cimcoder.serving.review.routes import store_for_app
from cimcoder.serving.settings import Settings

KEY_DUPONT = "kR7vQ2mX9pL4tW8zDupont"
KEY_MARTIN = "hB3nF6jY1cS5gU0eMartin"


def enqueue_body(stay_id: str, **kw: object) -> dict[str, object]:
    """The body of POST /v1/review/stays: the stay alone (the service scores it)."""
    stay, _prediction = make_case(stay_id, **kw)  # type: ignore[arg-type]
    return {"stay": stay}


def seed(client: TestClient, stay_id: str, case: Any = make_case, **kw: object) -> dict[str, object]:
    """Queue a stay with a hand-made prediction, as `cimcoder review import` does."""
    stay, prediction = case(stay_id, **kw)
    with store_for_app(client.app).session(write=True) as session:  # type: ignore[arg-type]
        result = workflow.enqueue(session, stay, prediction, default_qc_rate=0.0, actor="cli")
    return dict(result.__dict__)


def review_settings(tmp_path: Path) -> Settings:
    return Settings(
        model=None,
        api_keys=[f"dr-dupont:{KEY_DUPONT}", f"dr-martin:{KEY_MARTIN}"],
        roles={"dr-dupont": "dim", "dr-martin": "coder"},
        database_url=f"sqlite:///{tmp_path / 'review.db'}",
        session_secret="Zq8rT1vN5wK3yH7bX2mC",
        review_qc_sample_rate=0.0,
    )


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    """The service without a model: stays come in through the store, as imported."""
    with TestClient(create_app(review_settings(tmp_path))) as test_client:
        yield test_client


@pytest.fixture
def scoring_client(tmp_path: Path, predictor: Any) -> Iterator[TestClient]:
    """The service with the tiny model loaded: POST /v1/review/stays scores."""
    app = create_app(review_settings(tmp_path), predictor=predictor)
    with TestClient(app) as test_client:
        yield test_client


def auth(key: str = KEY_DUPONT) -> dict[str, str]:
    return {"X-API-Key": key}


def save_body(version: int, **kw: object) -> dict[str, object]:
    body: dict[str, object] = {
        "decision_id": str(uuid.uuid4()),
        "base_version": version,
        "codes": [
            {"code": "I50.0", "action": "accept"},
            {"code": "I10", "action": "accept"},
            {"code": "E11.9", "action": "reject", "reason": "ni traité ni surveillé"},
            {"code": "E87.68", "action": "add"},
        ],
        "dp": "I50.0",
    }
    body.update(kw)
    return body


def test_enqueue_list_view_save_and_conflict(client: TestClient) -> None:
    assert seed(client, "sej-api-1") == {
        "id": "sej-api-1", "status": "to_code", "auto_coded": False, "qc_sampled": False,
        "created": True,
    }
    auto = seed(client, "sej-api-2", decisions={"I10": "auto", "E11.9": "auto"})
    assert auto["status"] == "auto_coded"

    queue = client.get("/v1/review/stays?status=to_code", headers=auth()).json()
    assert queue["total"] == 1 and queue["stays"][0]["id"] == "sej-api-1"
    auto_list = client.get("/v1/review/stays?status=auto_coded", headers=auth()).json()
    assert [s["id"] for s in auto_list["stays"]] == ["sej-api-2"]

    view = client.get("/v1/review/stays/sej-api-1", headers=auth()).json()
    assert view["text"] == CRH_INSUFFISANCE_CARDIAQUE
    assert view["version"] == 1

    body = save_body(1)
    saved = client.post("/v1/review/stays/sej-api-1/decisions", json=body, headers=auth())
    assert saved.status_code == 200, saved.text
    assert saved.json()["version"] == 2 and saved.json()["replayed"] is False
    assert saved.json()["dp"] == "I50.0"
    replay = client.post("/v1/review/stays/sej-api-1/decisions", json=body, headers=auth())
    assert replay.status_code == 200 and replay.json()["replayed"] is True

    stale = client.post(
        "/v1/review/stays/sej-api-1/decisions", json=save_body(1), headers=auth(KEY_MARTIN)
    )
    assert stale.status_code == 409
    assert stale.json()["current"]["validated_by"] == "dr-dupont"
    assert stale.json()["current"]["version"] == 2


def test_bad_requests_are_clear_4xx(client: TestClient) -> None:
    seed(client, "sej-api-3")
    no_dp = client.post(
        "/v1/review/stays/sej-api-3/decisions", json=save_body(1, dp=None), headers=auth()
    )
    assert no_dp.status_code == 422 and "DP" in no_dp.json()["detail"]
    unknown = client.post("/v1/review/stays/sej-absent/decisions", json=save_body(1), headers=auth())
    assert unknown.status_code == 404
    change_without_target = save_body(1, codes=[{"code": "I50.0", "action": "change"}])
    bad = client.post(
        "/v1/review/stays/sej-api-3/decisions", json=change_without_target, headers=auth()
    )
    assert bad.status_code == 422 and "new_code" in bad.json()["detail"]
    assert client.get("/v1/review/stays").status_code == 401
    wrong = client.get("/v1/review/stays", headers={"X-API-Key": "x" * 8 + "WrongKey1234"})
    assert wrong.status_code == 401


def test_pages_need_login_and_show_the_queue(client: TestClient) -> None:
    seed(client, "sej-page-1", unit="Néphrologie")
    anonymous = client.get("/review", follow_redirects=False)
    assert anonymous.status_code == 303
    assert anonymous.headers["location"].startswith("/review/login")
    refused = client.post("/review/login", data={"username": "dr-dupont", "key": KEY_MARTIN})
    assert refused.status_code == 401 and "incorrects" in refused.text
    login = client.post(
        "/review/login",
        data={"username": "dr-dupont", "key": KEY_DUPONT, "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert login.status_code == 303 and login.headers["location"] == "/review"
    queue = client.get("/review")
    assert queue.status_code == 200
    assert "sej-page-1" in queue.text and "Néphrologie" in queue.text
    page = client.get("/review/stays/sej-page-1")
    assert page.status_code == 200
    assert "Raccourcis clavier" in page.text and 'id="stay-data"' in page.text
    assert client.get("/review/static/review.js").status_code == 200
    assert client.get("/review/static/../store.py").status_code == 404
    assert client.get("/review/monitoring").status_code == 200
    # The page's terminology search works with the session cookie alone.
    found = client.get("/v1/review/codes/search", params={"q": "hypokaliémie", "limit": 5})
    assert found.status_code == 200
    assert "E87.68" in [hit["code"] for hit in found.json()["results"]]
    by_code = client.get("/v1/review/codes/search", params={"q": "e8768"}).json()
    assert by_code["results"][0] == {"code": "E87.68", "label": "Hypokaliémies, autres et sans précision", "score": 1.0}


def test_report_text_cannot_break_out_of_the_page(client: TestClient) -> None:
    hostile = CRH_INSUFFISANCE_CARDIAQUE + "\n</script><script>alert(1)</script>"
    seed(client, "sej-xss", text_=hostile)
    page = client.get("/review/stays/sej-xss", headers=auth())
    assert "</script><script>alert(1)" not in page.text


def test_export_audit_settings_and_monitoring(client: TestClient) -> None:
    seed(client, "sej-api-4")
    client.post("/v1/review/stays/sej-api-4/decisions", json=save_body(1), headers=auth())
    export = client.get("/v1/review/export", headers=auth())
    assert export.status_code == 200
    stays = [json.loads(line) for line in export.text.splitlines()]
    assert [(d["code"], d["role"]) for d in stays[0]["diagnoses"]] == [
        ("I50.0", "DP"), ("I10", "DAS"), ("E87.68", "DAS"),
    ]
    trail = client.get("/v1/review/audit?format=jsonl", headers=auth()).text.splitlines()
    # The exports are in the trail, the one being read included.
    assert [json.loads(x)["event"] for x in trail] == [
        "stay.enqueued", "review.saved", "export.validated", "audit.exported",
    ]
    assert json.loads(trail[1])["actor"] == "dr-dupont"
    assert json.loads(trail[3])["after"] == {"format": "jsonl", "stay_id": None}
    csv_text = client.get("/v1/review/audit?format=csv", headers=auth()).text
    assert csv_text.startswith("id,at,actor,event")

    assert client.get("/v1/review/settings", headers=auth()).json() == {"qc_rate": 0.0}
    put = client.put("/v1/review/settings", json={"qc_rate": 0.2}, headers=auth())
    assert put.json() == {"qc_rate": 0.2}
    assert client.put("/v1/review/settings", json={"qc_rate": 2}, headers=auth()).status_code == 422

    report = client.get("/v1/monitoring", headers=auth()).json()
    assert report["totals"]["stays"] == 1
    assert report["most_corrected"][0]["code"] in {"E11.9", "E87.68"}
    assert report["weekly"][0]["stays"] == 1


def test_review_search_is_the_terminology_search(client: TestClient) -> None:
    # The page's search answers what GET /v1/codes/search answers (the terminology's own
    # search: a code typed as such comes first), cookie or key.
    for q in ("hypokaliémie", "e8768", "insuffisance cardiaque"):
        review = client.get("/v1/review/codes/search", params={"q": q, "limit": 8}, headers=auth())
        api = client.get("/v1/codes/search", params={"q": q, "limit": 8}, headers=auth())
        assert review.status_code == api.status_code == 200
        assert review.json() == api.json()
        assert review.json()["terminology"] == "cim10" and review.json()["results"]
    # A chapter typed as such ("IX", circulatory diseases) is not a code a coder can pick.
    chapter = client.get("/v1/review/codes/search", params={"q": "IX"}, headers=auth()).json()
    assert "IX" not in [hit["code"] for hit in chapter["results"]]
    assert client.get("/v1/review/codes/search", params={"q": "  "}, headers=auth()).status_code == 422


def test_get_answers_are_the_workflow_views_under_response_models(client: TestClient) -> None:
    from cimcoder.serving.review import monitoring, store_for_app, workflow
    from cimcoder.serving.review.schemas import MonitoringReport

    seed(client, "sej-api-5")
    seed(client, "sej-api-6", decisions={"I10": "auto", "E11.9": "auto"})
    saved = client.post("/v1/review/stays/sej-api-5/decisions", json=save_body(1), headers=auth())
    assert saved.status_code == 200, saved.text
    store = store_for_app(client.app)  # type: ignore[arg-type]
    with store.session() as session:
        view = workflow.stay_view(session, "sej-api-5")
        queue = workflow.list_stays(session, workflow.QueueFilter())
    # The models describe every field: the answers are the workflow's views, unchanged.
    got_view = client.get("/v1/review/stays/sej-api-5", headers=auth()).json()
    assert got_view == json.loads(json.dumps(view))
    assert got_view["last_review"]["coder"] == "dr-dupont" and got_view["coding"]["source"] == "review"
    assert got_view["suggestions"][0]["evidence"][0]["text"] in CRH_INSUFFISANCE_CARDIAQUE
    got_queue = client.get("/v1/review/stays", headers=auth()).json()
    assert got_queue == json.loads(json.dumps(queue)) and got_queue["total"] == 2
    assert client.get("/v1/review/stays/absent", headers=auth()).status_code == 404

    report = client.get("/v1/monitoring", headers=auth()).json()
    expected = json.loads(json.dumps(monitoring.compute(store)))
    assert {k: v for k, v in report.items() if k != "generated_at"} == {
        k: v for k, v in expected.items() if k != "generated_at"
    }
    assert report["drift"]["code_frequency"]["note"] == "no labels.json train_counts"
    # With training counts there is no note, and none is invented.
    with_labels = monitoring.compute(store, labels={"I50.0": 40, "I10": 25, "E11.9": 10})
    dumped = MonitoringReport.model_validate(with_labels).model_dump(mode="json", exclude_unset=True)
    assert dumped == json.loads(json.dumps(with_labels))
    assert "note" not in dumped["drift"]["code_frequency"] and dumped["drift"]["code_frequency"]["codes"]

    schema = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/review/stays", "/v1/review/stays/{stay_id}", "/v1/review/settings",
                 "/v1/review/codes/search", "/v1/monitoring"):
        answer = schema[path]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer["$ref"].startswith("#/components/schemas/"), path


def chimio_save(version: int, **kw: object) -> dict[str, object]:
    body: dict[str, object] = {
        "decision_id": str(uuid.uuid4()),
        "base_version": version,
        "codes": [
            {"code": "Z51.1", "action": "accept"},
            {"code": "C50.4", "action": "accept"},
            {"code": "C79.5", "action": "accept"},
        ],
        "dp": "Z51.1",
        "dr": "C50.4",
    }
    body.update(kw)
    return body


def test_dr_is_proposed_set_refused_cleared_and_exported(client: TestClient) -> None:
    auto = seed(client, "sej-chimio-api-1", make_chimio_case, decisions={"C79.5": "auto"})
    assert auto["status"] == "auto_coded"
    listed = client.get("/v1/review/stays?status=auto_coded", headers=auth()).json()["stays"]
    assert [(s["id"], s["dp"], s["dr"]) for s in listed] == [("sej-chimio-api-1", "Z51.1", "C50.4")]

    assert seed(client, "sej-chimio-api-2", make_chimio_case)["created"] is True
    view = client.get("/v1/review/stays/sej-chimio-api-2", headers=auth()).json()
    assert (view["dp"], view["dr"]) == (None, None)
    assert (view["coding"]["dp"], view["coding"]["dr"]) == ("Z51.1", "C50.4")
    assert {"code": "C50.4", "role": "DR"} in view["coding"]["codes"]

    url = "/v1/review/stays/sej-chimio-api-2/decisions"
    # A DR next to a DP that is not a Z care code: a 422 the coder can read, nothing written.
    refused = client.post(url, json=chimio_save(1, dp="C50.4", dr="C79.5"), headers=auth())
    assert refused.status_code == 422
    assert refused.json() == {
        "detail": "pas de DR quand le DP C50.4 n'est pas un code Z de motif de soins (p. ex. "
        "Z51.1 chimiothérapie, Z51.5 soins palliatifs, Z49.1 dialyse) : codez C79.5 en DAS"
    }
    too_long = client.post(url, json=chimio_save(1, dr="C" * 17), headers=auth())
    assert too_long.status_code == 422 and "dr" in too_long.json()["detail"]

    saved = client.post(url, json=chimio_save(1), headers=auth())
    assert saved.status_code == 200, saved.text
    answer = saved.json()
    assert (answer["version"], answer["dp"], answer["dr"]) == (2, "Z51.1", "C50.4")
    assert {c["final_code"]: c["role"] for c in answer["codes"]} == {
        "Z51.1": "DP", "C50.4": "DR", "C79.5": "DAS",
    }
    view = client.get("/v1/review/stays/sej-chimio-api-2", headers=auth()).json()
    assert (view["dr"], view["coding"]["dr"], view["last_review"]["dr"]) == ("C50.4",) * 3

    export = client.get("/v1/review/export", headers=auth())
    assert export.status_code == 200
    (stay,) = [json.loads(line) for line in export.text.splitlines()]
    assert [(d["code"], d["role"]) for d in stay["diagnoses"]] == [
        ("Z51.1", "DP"), ("C50.4", "DR"), ("C79.5", "DAS"),
    ]

    # An empty DR clears it; the audit trail keeps both saves.
    cleared = client.post(url, json=chimio_save(2, dr=""), headers=auth(KEY_MARTIN))
    assert cleared.status_code == 200, cleared.text
    assert cleared.json()["dr"] is None
    assert {c["final_code"]: c["role"] for c in cleared.json()["codes"]}["C50.4"] == "DAS"
    trail = client.get(
        "/v1/review/audit", params={"format": "jsonl", "stay_id": "sej-chimio-api-2"},
        headers=auth(),
    ).text.splitlines()
    saves = [json.loads(x) for x in trail if json.loads(x)["event"] == "review.saved"]
    assert [(e["actor"], e["before"]["dr"], e["after"]["dr"]) for e in saves] == [
        ("dr-dupont", "C50.4", "C50.4"), ("dr-martin", "C50.4", None),
    ]

    client.post("/review/login", data={"username": "dr-dupont", "key": KEY_DUPONT})
    queue = client.get("/review?vue=auto")
    assert queue.status_code == 200 and "<th>DR</th>" in queue.text
    assert "<td>C50.4</td>" in queue.text
    page = client.get("/review/stays/sej-chimio-api-2")
    assert page.status_code == 200 and 'id="dr-value"' in page.text


def _trail(client: TestClient) -> list[dict[str, object]]:
    lines = client.get("/v1/review/audit", headers=auth()).text.splitlines()
    return [json.loads(x) for x in lines][:-1]  # less this read's own audit.exported


def test_logins_views_and_settings_are_audit_events(client: TestClient) -> None:
    seed(client, "sej-api-trace")
    failed = client.post(
        "/review/login",
        data={"username": "dr-dupont", "key": "mauvaise-cle-devinee", "next": "/review"},
        follow_redirects=False,
    )
    assert failed.status_code == 401
    ok = client.post(
        "/review/login",
        data={"username": "dr-martin", "key": KEY_MARTIN, "next": "/review"},
        follow_redirects=False,
    )
    assert ok.status_code == 303
    assert client.get("/review/stays/sej-api-trace").status_code == 200  # cookie of dr-martin
    client.cookies.clear()
    assert client.get("/v1/review/stays/sej-api-trace", headers=auth()).status_code == 200
    client.put("/v1/review/settings", json={"qc_rate": 0.3}, headers=auth())

    events = _trail(client)
    assert [(e["event"], e["actor"]) for e in events] == [
        ("stay.enqueued", "cli"),
        ("login.failed", "dr-dupont"),
        ("login.succeeded", "dr-martin"),
        ("stay.viewed", "dr-martin"),
        ("stay.viewed", "dr-dupont"),
        ("settings.qc_rate", "dr-dupont"),
    ]
    assert events[1]["after"] == {"client": "testclient"}
    assert events[2]["after"] == {"client": "testclient"}
    assert events[3]["stay_id"] == "sej-api-trace" and events[3]["input_hash"]
    assert events[5]["after"] == {"qc_rate": 0.3, "stays_rerouted": 0}
    # Never the key, right or wrong.
    raw = client.get("/v1/review/audit?format=csv", headers=auth()).text
    assert "mauvaise-cle-devinee" not in raw and KEY_MARTIN not in raw


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_db_client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    """The service on SQLite, then on a real PostgreSQL server."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'review.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database(
            f"review_input_{uuid.uuid4().hex[:8]}"
        )
    settings = Settings(
        model=None,
        api_keys=[f"dr-dupont:{KEY_DUPONT}"],
        roles={"dr-dupont": "dim"},
        database_url=url,
        session_secret="Zq8rT1vN5wK3yH7bX2mC",
        review_qc_sample_rate=0.0,
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def _post_json(client: TestClient, path: str, body: object) -> object:
    # Escaped JSON: a lone surrogate cannot travel as UTF-8.
    headers = auth() | {"Content-Type": "application/json"}
    return client.post(path, content=json.dumps(body), headers=headers)


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("text", CRH_INSUFFISANCE_CARDIAQUE + "\x00", "NUL byte"),
        ("text", CRH_INSUFFISANCE_CARDIAQUE + "\ud800", "lone UTF-16 surrogate"),
        ("text", "\x01\x02\x03\x1b\u200b", "only control characters"),
        ("unit", "Cardio\x00logie", "NUL byte"),
        ("id", "sej 1", "should match pattern"),
        ("id", "sej/../1", "should match pattern"),
        ("id", "s" * 129, "should match pattern"),
    ],
)
def test_unstorable_stays_are_a_clear_422_on_every_database(
    any_db_client: TestClient, field: str, value: str, expected: str
) -> None:
    body = enqueue_body("sej-entree-1")
    body["stay"][field] = value  # type: ignore[index]
    response = _post_json(any_db_client, "/v1/review/stays", body)
    assert response.status_code == 422, response.text  # type: ignore[attr-defined]
    assert expected in response.json()["detail"]  # type: ignore[attr-defined]
    queue = any_db_client.get("/v1/review/stays", headers=auth()).json()
    assert queue["total"] == 0


def test_unstorable_decision_reasons_are_422(any_db_client: TestClient) -> None:
    seed(any_db_client, "sej-entree-2")
    save = save_body(1)
    save["codes"][2]["reason"] = "ni traité \ud800"  # type: ignore[index]
    answer = _post_json(any_db_client, "/v1/review/stays/sej-entree-2/decisions", save)
    assert answer.status_code == 422 and "surrogate" in answer.json()["detail"]  # type: ignore[attr-defined]
    # A NUL in a filter is refused, not sent to the database.
    assert any_db_client.get("/v1/review/stays?unit=a%00b", headers=auth()).status_code == 422


def test_stay_ids_and_paging_are_bounded(any_db_client: TestClient) -> None:
    seed(any_db_client, "sej.2026:01_a-1")
    ok = any_db_client.get("/v1/review/stays/sej.2026:01_a-1", headers=auth())
    assert ok.status_code == 200 and ok.json()["id"] == "sej.2026:01_a-1"
    for bad in ("sej%201", "s%27%3B--", "%C3%A9t%C3%A9", "s" * 129):
        for path in (f"/v1/review/stays/{bad}", f"/review/stays/{bad}"):
            assert any_db_client.get(path, headers=auth()).status_code == 422, path
        decisions = _post_json(any_db_client, f"/v1/review/stays/{bad}/decisions", save_body(1))
        assert decisions.status_code == 422  # type: ignore[attr-defined]
    huge = any_db_client.get(f"/v1/review/stays?offset={10**20}", headers=auth())
    assert huge.status_code == 422 and "offset" in huge.json()["detail"]
    assert any_db_client.get("/v1/review/stays?offset=-1", headers=auth()).status_code == 422
    assert any_db_client.get("/v1/review/stays?limit=100000", headers=auth()).status_code == 422
    last = any_db_client.get("/v1/review/stays?offset=1000000", headers=auth())
    assert last.status_code == 200 and last.json() == {"total": 1, "stays": []}
    bad_audit = any_db_client.get("/v1/review/audit?stay_id=a%20b", headers=auth())
    assert bad_audit.status_code == 422


def test_every_answer_carries_the_security_headers(client: TestClient) -> None:
    seed(client, "sej-entetes")
    answers = {
        "page": client.get("/review/stays/sej-entetes", headers=auth()),
        "login page": client.get("/review/login"),
        "stay json": client.get("/v1/review/stays/sej-entetes", headers=auth()),
        "audit csv": client.get("/v1/review/audit?format=csv", headers=auth()),
        "401": client.get("/v1/review/stays"),
        "404": client.get("/v1/review/stays/inconnu", headers=auth()),
        "422": client.get("/v1/review/stays/a%20b", headers=auth()),
        "413": client.post("/v1/review/stays", content=b"x" * 3_000_000, headers=auth()),
        "health": client.get("/health"),
        "static": client.get("/review/static/review.js"),
    }
    for name, answer in answers.items():
        policy = answer.headers.get("content-security-policy", "")
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy, name
        assert "http" not in policy and "unsafe-inline" not in policy, name
        assert answer.headers["x-content-type-options"] == "nosniff", name
        assert answer.headers["referrer-policy"] == "no-referrer", name
        expected_cache = None if name == "static" else "no-store"
        assert answer.headers.get("cache-control") == expected_cache, name
    assert answers["page"].status_code == 200 and answers["413"].status_code == 413
    # The embedded JSON has no raw <, > or & at all.
    page = answers["page"].text
    embedded = page.split('id="stay-data">', 1)[1].split("</script>", 1)[0]
    assert not {"<", ">", "&"} & set(embedded)
    assert json.loads(embedded)["id"] == "sej-entetes"


def test_the_service_scores_what_it_queues_and_refuses_a_sent_prediction(
    scoring_client: TestClient, predictor: Any
) -> None:
    client = scoring_client
    stay, forged = make_case("sej-score-1", decisions={"I10": "auto", "E11.9": "auto"})
    sent = client.post(
        "/v1/review/stays",
        json={"stay": stay, "prediction": forged.model_dump(mode="json")},
        headers=auth(),
    )
    assert sent.status_code == 422
    assert "'prediction' is not accepted" in sent.json()["detail"]
    assert client.get("/v1/review/stays", headers=auth()).json()["total"] == 0

    created = client.post("/v1/review/stays", json={"stay": stay}, headers=auth())
    assert created.status_code == 201, created.text
    assert created.json()["id"] == "sej-score-1" and created.json()["created"] is True
    # What is stored is the loaded model's own answer for the stored text, code for code.
    expected = predictor.predict([stay["text"]])[0]
    view = client.get("/v1/review/stays/sej-score-1", headers=auth()).json()
    assert view["text"] == stay["text"]
    stored = {s["code"]: s["score"] for s in view["suggestions"]}
    kept = {c.code: c.score for c in expected.codes if c.decision != "reject"}
    assert kept and set(kept) <= set(stored)
    assert all(abs(stored[code] - score) < 1e-9 for code, score in kept.items())
    assert created.json()["auto_coded"] is any(c.decision == "auto" for c in expected.codes)
    # Sent twice: scored again, same text and model, left as is.
    again = client.post("/v1/review/stays", json={"stay": stay}, headers=auth())
    assert again.status_code == 201 and again.json()["created"] is False
    other = enqueue_body("sej-score-1", text_=CRH_INSUFFISANCE_CARDIAQUE + "\nAddendum.")
    assert client.post("/v1/review/stays", json=other, headers=auth()).status_code == 409

    # The audit trail says which way each stay came in.
    seed(client, "sej-import-1")
    trail = [
        json.loads(line)
        for line in client.get("/v1/review/audit", headers=auth()).text.splitlines()
    ]
    origins = {
        e["stay_id"]: (e["actor"], e["after"]["origin"])
        for e in trail
        if e["event"] == "stay.enqueued"
    }
    assert origins == {"sej-score-1": ("dr-dupont", "scored"), "sej-import-1": ("cli", "imported")}


def test_without_a_model_nothing_is_queued_through_the_api(any_db_client: TestClient) -> None:
    stay, _ = make_case("sej-sans-modele")
    answer = any_db_client.post("/v1/review/stays", json={"stay": stay}, headers=auth())
    assert answer.status_code == 503 and "model" in answer.json()["detail"]
    assert any_db_client.get("/v1/review/stays", headers=auth()).json()["total"] == 0
