"""HTTP API: auth, limits, clear errors, contract fields, and the same answer as the CLI."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from cimcoder.serving.auth import CurrentUser

KEY = "dim-hopital-nord:Vt9q2LxR7mKp4sWz8bNc"
CLIENT_KEY = "Vt9q2LxR7mKp4sWz8bNc"
OTHER_KEY = "Hq3rT8yPz6Lm2Xc9VbN1"
HEART = (
    "Patient de 79 ans hospitalisé pour insuffisance cardiaque congestive décompensée. "
    "Hypertension artérielle essentielle traitée."
)


def make_settings(tmp: Path, **overrides: object):  # type: ignore[no-untyped-def]
    from cimcoder.serving.settings import Settings

    values: dict[str, object] = {
        "model": None,
        "api_keys": [KEY, f"serveur-dpi:{OTHER_KEY}"],
        "state_dir": tmp,
        "max_request_bytes": 20_000,
        "max_batch_items": 4,
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def client(predictor, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    from cimcoder.serving.app import create_app

    app = create_app(make_settings(tmp_path_factory.mktemp("data")), predictor=predictor)
    whoami = APIRouter()

    @whoami.get("/test/whoami")
    def who(user: CurrentUser) -> dict[str, str]:
        return {"user": user}

    app.include_router(whoami)
    with TestClient(app) as test_client:
        yield test_client


AUTH = {"X-API-Key": CLIENT_KEY}


# --- authentication -----------------------------------------------------------------------


def test_coding_needs_a_key(client: TestClient) -> None:
    response = client.post("/v1/code", json={"text": HEART})
    assert response.status_code == 401
    assert "X-API-Key" in response.json()["detail"]
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_wrong_key_is_refused(client: TestClient) -> None:
    response = client.post("/v1/code", json={"text": HEART}, headers={"X-API-Key": "x" * 20})
    assert response.status_code == 401
    assert response.json() == {"detail": "invalid API key"}


def test_bearer_token_and_api_key_both_work(client: TestClient) -> None:
    by_key = client.get("/test/whoami", headers=AUTH)
    by_bearer = client.get("/test/whoami", headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert by_key.json() == {"user": "dim-hopital-nord"}
    assert by_bearer.json() == {"user": "serveur-dpi"}


def test_session_cookie_authenticates_the_review_user(client: TestClient) -> None:
    from starlette.responses import Response

    from cimcoder.serving.auth import SESSION_COOKIE, authenticate, set_session_cookie
    from cimcoder.serving.review import sessions, store_for_app

    settings = client.app.state.settings  # type: ignore[attr-defined]
    assert authenticate(settings, "dim-hopital-nord", CLIENT_KEY) == "dim-hopital-nord"
    assert authenticate(settings, "serveur-dpi", CLIENT_KEY) is None
    with store_for_app(client.app).session(write=True) as db:  # type: ignore[arg-type]
        session_id = sessions.open_session(db, "dim-hopital-nord", settings.session_max_age_s)
    response = Response()
    set_session_cookie(response, settings, session_id)
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower()
    token = cookie.split(";", 1)[0].split("=", 1)[1]
    ok = client.get("/test/whoami", cookies={SESSION_COOKIE: token})
    assert ok.status_code == 200 and ok.json() == {"user": "dim-hopital-nord"}
    forged = client.get("/test/whoami", cookies={SESSION_COOKIE: token[:-2] + "xx"})
    assert forged.status_code == 401
    assert "log in" in forged.json()["detail"]


def test_auth_disabled_only_when_asked(predictor, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from cimcoder.serving.app import create_app

    app = create_app(make_settings(tmp_path, auth_disabled=True, api_keys=[]), predictor=predictor)
    with TestClient(app) as local:
        response = local.post("/v1/code", json={"text": HEART})
    assert response.status_code == 200
    assert response.json()["codes"][0]["code"] in {"I50.09", "I10"}


def test_random_session_secret_is_drawn_once_under_concurrent_logins(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    for _ in range(20):
        settings = make_settings(tmp_path, session_secret=None)
        with ThreadPoolExecutor(8) as pool:
            drawn = set(pool.map(type(settings).resolved_session_secret, [settings] * 8))
        assert len(drawn) == 1 and len(drawn.pop()) >= 32


def test_settings_refuse_placeholder_secrets(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="placeholder"):
        make_settings(tmp_path, session_secret="changeme-changeme-changeme")
    with pytest.raises(ValidationError, match="placeholder"):
        make_settings(tmp_path, api_keys=["dim:changeme"])


def test_old_data_dir_variable_still_sets_the_state_folder_with_a_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from cimcoder.serving.settings import Settings

    monkeypatch.delenv("CIMCODER_STATE_DIR", raising=False)
    monkeypatch.setenv("CIMCODER_DATA_DIR", str(tmp_path / "old"))
    with pytest.warns(DeprecationWarning, match="deprecated: set CIMCODER_STATE_DIR"):
        settings = Settings(model=None, auth_disabled=True, _env_file=None)
    assert settings.state_dir == tmp_path / "old"
    assert settings.resolved_database_url() == f"sqlite:///{(tmp_path / 'old' / 'review.db').resolve()}"
    assert "set CIMCODER_STATE_DIR" in caplog.text  # operators read logs, not Python warnings
    # With both names set, the new one wins and the warning says the old one is ignored.
    monkeypatch.setenv("CIMCODER_STATE_DIR", str(tmp_path / "new"))
    with pytest.warns(DeprecationWarning, match="ignored here"):
        assert Settings(model=None, auth_disabled=True, _env_file=None).state_dir == tmp_path / "new"


# --- coding -------------------------------------------------------------------------------


def test_code_one_report(client: TestClient) -> None:
    response = client.post("/v1/code", json={"id": "sejour-1", "text": HEART}, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"id", "codes", "model"}
    assert body["id"] == "sejour-1"
    by_code = {c["code"]: c for c in body["codes"]}
    heart = by_code["I50.09"]
    assert heart["decision"] in {"auto", "review"}
    assert heart["label"].startswith("Insuffisance cardiaque congestive")
    assert {e["text"].lower() for e in heart["evidence"]} & {"insuffisance", "cardiaque", "congestive"}
    for evidence in heart["evidence"]:
        assert HEART[evidence["start"] : evidence["end"]] == evidence["text"]
    assert [c["role"] for c in body["codes"]].count("DP") == 1
    assert by_code["B95.3"]["flags"] == ["interdit en DP", "interdit en DR"]
    assert body["model"]["terminology"] == "cim10"
    assert body["model"]["thresholds_version"]
    scores = [c["score"] for c in body["codes"]]
    assert scores == sorted(scores, reverse=True)


def test_code_a_stay_of_two_documents(client: TestClient) -> None:
    stay = {
        "id": "sejour-2",
        "documents": [
            {"text": "Chute mécanique au domicile.", "doc_type": "urgences", "date": "2024-03-02"},
            {"text": "Insuffisance rénale aiguë fonctionnelle.", "doc_type": "crh"},
        ],
    }
    response = client.post("/v1/code", json=stay, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert {c["code"] for c in body["codes"][:2]} == {"W19.0", "N17.9"}
    joined = "Chute mécanique au domicile.\n\nInsuffisance rénale aiguë fonctionnelle."
    assert body["model"]["input"]["chars"] == len(joined)
    fall = next(c for c in body["codes"] if c["code"] == "W19.0")
    assert fall["role"] == "DAS"  # an external cause is never the DP
    for evidence in fall["evidence"]:
        assert joined[evidence["start"] : evidence["end"]] == evidence["text"]


def test_batch_keeps_order_and_limits_size(client: TestClient) -> None:
    items = [
        {"id": "a", "text": "Diabète de type 2 sous metformine."},
        {"id": "b", "text": HEART},
    ]
    response = client.post("/v1/code/batch", json={"items": items}, headers=AUTH)
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["id"] for r in results] == ["a", "b"]
    assert results[0]["codes"][0]["code"] == "E11.98"
    too_many = {"items": [{"text": HEART}] * 5}
    response = client.post("/v1/code/batch", json=too_many, headers=AUTH)
    assert response.status_code == 413
    assert "too many items" in response.json()["detail"]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"text": "   "}, "the report text is empty"),
        ({"id": "x"}, "exactly one of 'text'"),
        ({"text": "HTA.", "documents": [{"text": "HTA."}]}, "exactly one of 'text'"),
        ({"text": "HTA.", "langue": "fr"}, "Extra inputs"),
        ({"documents": []}, "at least 1"),
        ({"text": 42}, "valid string"),
        ({"text": "HTA traitée.\x00"}, "NUL byte"),
        ({"text": "HTA \ud800 traitée."}, "lone UTF-16 surrogate"),
        ({"documents": [{"text": "HTA.", "doc_type": "crh\x00"}]}, "NUL byte"),
        ({"text": "\x01\x02\x1b\u200b\x7f"}, "only control characters"),
        ({"id": "sejour 42", "text": "HTA."}, "should match pattern"),
        ({"id": "s" * 129, "text": "HTA."}, "should match pattern"),
    ],
)
def test_bad_input_is_a_clear_422(client: TestClient, body: dict, expected: str) -> None:
    # Sent as escaped JSON: a lone surrogate cannot be sent as UTF-8.
    response = client.post(
        "/v1/code", content=json.dumps(body), headers=AUTH | {"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    data = response.json()
    assert expected in data["detail"]
    assert data["errors"] and all("input" not in e for e in data["errors"])


def test_internal_error_is_a_500_that_never_logs_the_report(
    predictor, tmp_path: Path, caplog: pytest.LogCaptureFixture  # type: ignore[no-untyped-def]
) -> None:
    from cimcoder.serving.app import create_app

    class Exploding:  # the real predictor, but its scoring fails quoting the report
        def __init__(self, inner) -> None:  # type: ignore[no-untyped-def]
            self._inner = inner

        def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
            return getattr(self._inner, name)

        def predict(self, items, batch_size=8, **_):  # type: ignore[no-untyped-def]
            raise ValueError(f"tokenizer failed on {items[0].text!r}")

    app = create_app(make_settings(tmp_path), predictor=Exploding(predictor))
    # TestClient re-raises what would reach the server (and its traceback log): nothing must.
    with caplog.at_level(logging.DEBUG), TestClient(app) as local:
        response = local.post("/v1/code", json={"text": HEART}, headers=AUTH)
        metrics = local.get("/metrics", headers=AUTH).text
    assert response.status_code == 500
    assert response.json() == {"detail": "internal server error"}
    assert "internal error on POST /v1/code: ValueError" in caplog.text
    assert "insuffisance cardiaque" not in caplog.text
    assert 'route="/v1/code",status="500"} 1.0' in metrics


def test_malformed_json_is_422_not_500(client: TestClient) -> None:
    response = client.post(
        "/v1/code", content=b'{"text": "HTA', headers={**AUTH, "content-type": "application/json"}
    )
    assert response.status_code == 422
    assert "JSON" in response.json()["detail"]


def test_body_over_the_limit_is_413(client: TestClient) -> None:
    huge = {"text": "Insuffisance cardiaque congestive. " * 1000}
    response = client.post("/v1/code", json=huge, headers=AUTH)
    assert response.status_code == 413
    assert "20000 bytes" in response.json()["detail"]


def test_slow_scoring_is_504(predictor, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from cimcoder.serving.app import create_app

    app = create_app(make_settings(tmp_path, request_timeout_s=1e-6), predictor=predictor)
    with TestClient(app) as slow:
        response = slow.post("/v1/code", json={"text": HEART}, headers=AUTH)
    assert response.status_code == 504
    assert "took longer than" in response.json()["detail"]


# --- code system ----------------------------------------------------------------------------


def test_look_a_code_up(client: TestClient) -> None:
    response = client.get("/v1/codes/b953", headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["code"] == "B95.3"
    assert body["restrictions"]["allowed_dp"] is False
    assert body["in_model"] is True
    assert body["train_count"] > 0


def test_unknown_code_is_404_with_suggestions(client: TestClient) -> None:
    response = client.get("/v1/codes/I50.7", headers=AUTH)
    assert response.status_code == 404
    body = response.json()
    assert "unknown code I50.7" in body["detail"]
    assert "I50.0" in body["suggestions"]


def test_search_codes(client: TestClient) -> None:
    response = client.get("/v1/codes/search", params={"q": "pneumonie pneumocoque"}, headers=AUTH)
    assert response.status_code == 200
    body = response.json()
    assert body["terminology"] == "cim10"
    assert "J13" in [r["code"] for r in body["results"]]
    assert client.get("/v1/codes/search", params={"q": ""}, headers=AUTH).status_code == 422
    assert client.get("/v1/codes/search", params={"q": "hta", "limit": 0}, headers=AUTH).status_code == 422


# --- operations -----------------------------------------------------------------------------


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert ready.json()["model"]["architecture"] == "tfidf_lr"
    client.post("/v1/code", json={"text": HEART}, headers=AUTH)
    metrics = client.get("/metrics").text
    assert 'cimcoder_requests_total{method="POST",route="/v1/code",status="200"}' in metrics
    assert 'cimcoder_codes_total{decision="auto"}' in metrics
    assert "cimcoder_request_latency_seconds_bucket" in metrics


def test_no_model_means_not_ready(tmp_path: Path) -> None:
    from cimcoder.serving.app import create_app

    app = create_app(make_settings(tmp_path))
    with TestClient(app) as empty:
        assert empty.get("/ready").status_code == 503
        response = empty.post("/v1/code", json={"text": HEART}, headers=AUTH)
    assert response.status_code == 503


def test_openapi_documents_every_endpoint(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/code", "/v1/code/batch", "/v1/codes/{code}", "/v1/codes/search", "/health", "/ready", "/metrics"):
        assert path in paths


# --- the CLI and the API agree ----------------------------------------------------------------


def test_cli_and_api_give_identical_codes_and_scores(
    client: TestClient, tiny_run: Path, tmp_path: Path
) -> None:
    from cimcoder.cli import main

    texts = {
        "crh-001": HEART,
        "crh-002": "Pneumopathie franche lobaire aiguë à pneumocoque. Antigénurie pneumocoque positive.",
        "crh-003": "Patiente de 64 ans. Diabète de type 2 non insulinotraité équilibré.",
    }
    folder = tmp_path / "crh"
    folder.mkdir()
    for stem, text in texts.items():
        (folder / f"{stem}.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["predict", "--model", str(tiny_run), "--input", str(folder), "--output", str(out)]) == 0
    lines = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [line["id"] for line in lines] == list(texts)
    for line in lines:
        api = client.post("/v1/code", json={"id": line["id"], "text": texts[line["id"]]}, headers=AUTH)
        assert api.status_code == 200
        assert api.json()["codes"] == line["codes"]


def test_openapi_pages_are_off_unless_enabled_and_hosts_can_be_restricted(
    predictor, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    from cimcoder.serving.app import create_app

    with TestClient(create_app(make_settings(tmp_path), predictor=predictor)) as default:
        assert default.get("/docs").status_code == 404 and default.get("/redoc").status_code == 404
        assert default.get("/openapi.json").status_code == 200
    with TestClient(create_app(make_settings(tmp_path, docs=True), predictor=predictor)) as docs:
        assert docs.get("/docs").status_code == 200
    app = create_app(make_settings(tmp_path, allowed_hosts="coder.chu.example"), predictor=predictor)
    with TestClient(app, base_url="http://coder.chu.example") as trusted:
        assert trusted.get("/openapi.json").status_code == 200
    with TestClient(app, base_url="http://evil.example") as forged:
        assert forged.get("/openapi.json").status_code == 400
