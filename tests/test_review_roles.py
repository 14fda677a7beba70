"""Roles (CIMCODER_ROLES): a hospital system's key codes, a coder's key reviews, the DIM's
key also sets, exports, audits and monitors. A valid key without the role gets 403."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from test_review_api import enqueue_body, save_body, seed

from cimcoder.serving.app import create_app
from cimcoder.serving.settings import Settings

KEY_DPI = "Jd8sK2pQ7wN4xR1vServeurDpi"
KEY_CODER = "Lm5tB9cX3zH6gF0aCodeuse"
KEY_DIM = "Pq2wE7rT4yU9iO1mMedecinDim"


def make_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model": None,
        "api_keys": [f"serveur-dpi:{KEY_DPI}", f"dr-codeuse:{KEY_CODER}", f"dr-dim:{KEY_DIM}"],
        "roles": "dr-codeuse=coder, dr-dim=dim",
        "database_url": f"sqlite:///{tmp_path / 'review.db'}",
        "session_secret": "Zq8rT1vN5wK3yH7bX2mC",
        "review_qc_sample_rate": 0.0,
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


@pytest.fixture
def client(tmp_path: Path, predictor: Any) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path), predictor=predictor)) as test_client:
        yield test_client


def key(value: str) -> dict[str, str]:
    return {"X-API-Key": value}


def test_roles_are_read_from_the_environment_and_typos_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIMCODER_ROLES", "dr-codeuse=coder,dr-dim=dim")
    monkeypatch.setenv("CIMCODER_API_KEYS", f"dr-codeuse:{KEY_CODER},dr-dim:{KEY_DIM},{KEY_DPI}")
    settings = Settings(model=None, _env_file=None)  # type: ignore[call-arg]
    assert settings.roles == {"dr-codeuse": "coder", "dr-dim": "dim"}
    assert settings.role_of("dr-dim") == "dim"
    assert settings.role_of("client-3") == "client"  # not listed: client
    with pytest.raises(ValidationError, match="dr-dupond"):
        make_settings(tmp_path, roles="dr-dupond=dim")  # no key has that name
    with pytest.raises(ValidationError, match="admin"):
        make_settings(tmp_path, roles="dr-dim=admin")  # no such role
    with pytest.raises(ValidationError, match="name=role"):
        make_settings(tmp_path, roles="dr-dim")


def test_each_role_reaches_its_endpoints_only(client: TestClient) -> None:
    seed(client, "sej-roles")
    created = client.post(
        "/v1/review/stays", json=enqueue_body("sej-roles-api"), headers=key(KEY_CODER)
    )
    assert created.status_code == 201, created.text
    reads = {
        "queue": ("GET", "/v1/review/stays", None),
        "stay": ("GET", "/v1/review/stays/sej-roles", None),
        "search": ("GET", "/v1/review/codes/search?q=insuffisance", None),
        "settings": ("GET", "/v1/review/settings", None),
    }
    dim_only = {
        "set qc": ("PUT", "/v1/review/settings", {"qc_rate": 0.1}),
        "export": ("GET", "/v1/review/export", None),
        "audit": ("GET", "/v1/review/audit", None),
        "monitoring": ("GET", "/v1/monitoring", None),
    }
    for name, (method, path, body) in (reads | dim_only).items():
        refused = client.request(method, path, json=body, headers=key(KEY_DPI))
        assert refused.status_code == 403, name
        assert "'serveur-dpi' has the role 'client'" in refused.json()["detail"], name
        assert KEY_DPI not in refused.text
    for name, (method, path, body) in reads.items():
        assert client.request(method, path, json=body, headers=key(KEY_CODER)).status_code == 200, (
            name
        )
    for name, (method, path, body) in dim_only.items():
        refused = client.request(method, path, json=body, headers=key(KEY_CODER))
        assert refused.status_code == 403, name
        assert "needs the role 'dim'" in refused.json()["detail"], name
        assert client.request(method, path, json=body, headers=key(KEY_DIM)).status_code == 200, (
            name
        )
    # A client may not enqueue nor save; a coder saves.
    assert (
        client.post(
            "/v1/review/stays", json=enqueue_body("sej-dpi"), headers=key(KEY_DPI)
        ).status_code
        == 403
    )
    url = "/v1/review/stays/sej-roles/decisions"
    assert client.post(url, json=save_body(1), headers=key(KEY_DPI)).status_code == 403
    saved = client.post(url, json=save_body(1), headers=key(KEY_CODER))
    assert saved.status_code == 200, saved.text
    # The machine API stays open to every role; a wrong key is still 401, not 403.
    assert client.get("/v1/codes/I50.0", headers=key(KEY_DPI)).status_code == 200
    assert client.get("/v1/review/stays", headers=key("Zz9yX8wV7uT6sR5q")).status_code == 401


def _login(client: TestClient, name: str, secret: str) -> None:
    answer = client.post(
        "/review/login", data={"username": name, "key": secret}, follow_redirects=False
    )
    assert answer.status_code == 303


def test_pages_answer_accès_refusé_in_french(client: TestClient) -> None:
    seed(client, "sej-pages")
    _login(client, "serveur-dpi", KEY_DPI)
    for path in ("/review", "/review/stays/sej-pages", "/review/monitoring"):
        page = client.get(path)
        assert page.status_code == 403, path
        assert "Accès refusé" in page.text and "<strong>client</strong>" in page.text, path
        assert "Insuffisance" not in page.text and "I50" not in page.text, path  # nothing shown
    client.cookies.clear()
    _login(client, "dr-codeuse", KEY_CODER)
    queue = client.get("/review")
    assert queue.status_code == 200 and "sej-pages" in queue.text
    assert 'href="/review/monitoring"' not in queue.text  # no link to what it cannot open
    assert client.get("/review/stays/sej-pages").status_code == 200
    denied = client.get("/review/monitoring")
    assert denied.status_code == 403 and "Accès refusé" in denied.text
    assert "réservée au DIM" in denied.text
    client.cookies.clear()
    _login(client, "dr-dim", KEY_DIM)
    monitoring = client.get("/review/monitoring")
    assert monitoring.status_code == 200 and 'href="/review/monitoring"' in monitoring.text


def test_auth_disabled_is_one_local_user_with_every_role(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, api_keys=[], roles={}, auth_disabled=True)
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/monitoring").status_code == 200
        assert client.get("/review/monitoring").status_code == 200
