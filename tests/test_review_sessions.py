"""Review sessions kept in the database: logging out revokes the session (a replayed cookie
opens nothing, on any replica), an expired one is refused, the cookie is Secure off loopback,
and repeated failed logins are throttled (429 with Retry-After, even with the right key)."""

from __future__ import annotations

import argparse
import datetime
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from itsdangerous import Signer, URLSafeTimedSerializer
from test_review_api import seed
from test_review_store import _alembic

from cimcoder.serving.app import create_app
from cimcoder.serving.auth import SESSION_COOKIE
from cimcoder.serving.review import sessions
from cimcoder.serving.review.store import LoginFailure, LoginSession, ReviewStore, make_engine
from cimcoder.serving.settings import Settings

KEY_CODER = "Lm5tB9cX3zH6gF0aCodeuse"
KEY_DIM = "Pq2wE7rT4yU9iO1mMedecinDim"
SECRET = "Zq8rT1vN5wK3yH7bX2mC"
T0 = datetime.datetime(2026, 12, 7, 8, 30, 0)


def make_settings(url: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "model": None,
        "api_keys": [f"dr-codeuse:{KEY_CODER}", f"dr-dim:{KEY_DIM}"],
        "roles": "dr-codeuse=coder, dr-dim=dim",
        "database_url": url,
        "session_secret": SECRET,
        "review_qc_sample_rate": 0.0,
        "_env_file": None,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


class Clock:
    """The sessions' clock, moved by hand: windows and expiries pass without sleeping."""

    def __init__(self, now: datetime.datetime) -> None:
        self.now = now

    def __call__(self) -> datetime.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += datetime.timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(T0)
    monkeypatch.setattr(sessions, "utcnow", fake)
    return fake


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'review.db'}"
    server = request.getfixturevalue("postgres_server")
    return server.create_database(f"review_sessions_{uuid.uuid4().hex[:8]}")  # type: ignore[no-any-return]


@pytest.fixture
def client(database_url: str) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(database_url))) as test_client:
        yield test_client


def login(client: TestClient, name: str, secret: str) -> Any:
    return client.post(
        "/review/login",
        data={"username": name, "key": secret, "next": "/review"},
        follow_redirects=False,
    )


def session_cookie(answer: Any) -> str:
    """The session cookie a login answer sets (its value, then its attributes)."""
    cookies = [c for c in answer.headers.get_list("set-cookie") if c.startswith(SESSION_COOKIE)]
    assert len(cookies) == 1, answer.headers
    return str(cookies[0])


def raw_cookie(value: str) -> dict[str, Any]:
    """The Cookie header of `value` as raw bytes (a browser may send any byte)."""
    return {"Cookie": f"{SESSION_COOKIE}={value}".encode()}


def replay(client: TestClient, value: str) -> tuple[int, int]:
    """(page status, API status) of a request carrying only the session cookie `value`."""
    client.cookies.clear()
    page = client.get("/review", headers=raw_cookie(value), follow_redirects=False)
    api = client.get("/v1/review/stays", headers=raw_cookie(value))
    if page.status_code == 303:
        assert page.headers["location"].startswith("/review/login")
    return page.status_code, api.status_code


# -- revocable sessions ---------------------------------------------------------------------


def test_logout_revokes_the_session_and_the_replayed_cookie_is_refused(client: TestClient) -> None:
    seed(client, "sej-session-1")
    answer = login(client, "dr-codeuse", KEY_CODER)
    assert answer.status_code == 303 and answer.headers["location"] == "/review"
    value = client.cookies[SESSION_COOKIE]
    assert replay(client, value) == (200, 200)

    client.cookies.set(SESSION_COOKIE, value)
    out = client.post("/review/logout", follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/review/login"
    assert 'cimcoder_session=""' in session_cookie(out) and "Max-Age=0" in session_cookie(out)
    # The browser that kept a copy of the cookie (or a thief) gets the login page, then a 401.
    assert replay(client, value) == (303, 401)
    client.cookies.set(SESSION_COOKIE, value)
    assert "log in again" in client.get("/v1/review/stays").json()["detail"]
    client.cookies.clear()

    store = ReviewStore(client.app.state.settings.resolved_database_url(), migrate=False)  # type: ignore[attr-defined]
    with store.session() as db:
        (row,) = db.scalars(sa.select(LoginSession)).all()
    store.close()
    # The database holds the principal and the revocation, not the id the cookie carries.
    assert row.principal == "dr-codeuse" and row.revoked_at is not None
    assert value.split(".")[0] not in row.id_hash
    lines = client.get("/v1/review/audit", headers={"X-API-Key": KEY_DIM}).text.splitlines()
    events = [json.loads(line) for line in lines]
    assert [(e["event"], e["actor"]) for e in events if e["event"].startswith("log")] == [
        ("login.succeeded", "dr-codeuse"), ("logout", "dr-codeuse"),
    ]
    # Logging out twice, or with no session, is harmless.
    client.cookies.set(SESSION_COOKIE, value)
    assert client.post("/review/logout", follow_redirects=False).status_code == 303
    client.cookies.clear()
    assert client.post("/review/logout", follow_redirects=False).status_code == 303


def test_an_expired_session_is_refused(client: TestClient, clock: Clock) -> None:
    assert login(client, "dr-codeuse", KEY_CODER).status_code == 303
    value = client.cookies[SESSION_COOKIE]
    clock.advance(8 * 3600 - 1)  # the default lifetime, less a second
    assert replay(client, value) == (200, 200)
    clock.advance(1)
    assert replay(client, value) == (303, 401)
    # A new login opens a new session (and the expired one is dropped).
    assert login(client, "dr-codeuse", KEY_CODER).status_code == 303
    assert replay(client, client.cookies[SESSION_COOKIE]) == (200, 200)


def test_a_session_opened_on_one_replica_is_closed_on_both(database_url: str) -> None:
    app_a = create_app(make_settings(database_url))
    app_b = create_app(make_settings(database_url))
    with TestClient(app_a) as a, TestClient(app_b) as b:
        assert login(a, "dr-dim", KEY_DIM).status_code == 303
        value = a.cookies[SESSION_COOKIE]
        assert replay(b, value) == (200, 200)
        b.cookies.set(SESSION_COOKIE, value)
        assert b.post("/review/logout", follow_redirects=False).status_code == 303
        assert replay(a, value) == (303, 401)


def test_a_session_ends_when_its_key_is_removed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'review.db'}"
    with TestClient(create_app(make_settings(url))) as before:
        assert login(before, "dr-codeuse", KEY_CODER).status_code == 303
        value = before.cookies[SESSION_COOKIE]
    with TestClient(create_app(make_settings(url, api_keys=[f"dr-dim:{KEY_DIM}"], roles="dr-dim=dim"))) as after:
        assert replay(after, value) == (303, 401)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        ".",
        "x" * 5000,
        "nonce.signature.extra",
        "é-ü-\u00ff",
        Signer("Yt4uI8oP2aS6dF0gOther", salt="cimcoder.review.session-id").sign("a" * 43).decode(),
        Signer(SECRET, salt="cimcoder.review.session-id").sign("short").decode(),
        Signer(SECRET, salt="cimcoder.review.session-id").sign("b" * 43).decode(),  # no session
        # A cookie of the time when it held the principal's name.
        URLSafeTimedSerializer(SECRET, salt="cimcoder.review.session").dumps({"u": "dr-dim"}),
    ],
)
def test_a_malformed_or_unknown_cookie_is_a_401_never_a_500(tmp_path: Path, value: str) -> None:
    settings = make_settings(f"sqlite:///{tmp_path / 'review.db'}")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert replay(client, value) == (303, 401)
        out = client.post("/review/logout", headers=raw_cookie(value), follow_redirects=False)
        assert out.status_code == 303


# -- Secure cookie --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "cookie_secure", "secure"),
    [
        ("0.0.0.0", None, True),
        ("10.12.0.4", None, True),
        ("coder.chu.example", None, True),
        ("::", None, True),
        ("127.0.0.1", None, False),
        ("::1", None, False),
        ("localhost", None, False),
        ("0.0.0.0", False, False),  # CIMCODER_COOKIE_SECURE=0: plain HTTP behind a trusted net
        ("127.0.0.1", True, True),  # CIMCODER_COOKIE_SECURE=1: a TLS proxy on the same host
    ],
)
def test_the_cookie_is_secure_off_loopback_unless_overridden(
    tmp_path: Path, host: str, cookie_secure: bool | None, secure: bool
) -> None:
    settings = make_settings(
        f"sqlite:///{tmp_path / 'review.db'}", host=host, cookie_secure=cookie_secure
    )
    with TestClient(create_app(settings)) as client:
        cookie = session_cookie(login(client, "dr-codeuse", KEY_CODER))
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")[1:]}
        assert {"httponly", "samesite", "path", "max-age"} <= attributes
        assert "samesite=strict" in cookie.lower()
        assert ("secure" in attributes) is secure
        client.cookies.set(SESSION_COOKIE, cookie.split(";")[0].split("=", 1)[1])
        out = session_cookie(client.post("/review/logout", follow_redirects=False))
        assert ("; secure" in out.lower()) is secure


def test_cookie_security_and_host_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CIMCODER_HOST", "0.0.0.0")
    assert Settings(model=None, auth_disabled=True, _env_file=None).session_cookie_secure()  # type: ignore[call-arg]
    monkeypatch.setenv("CIMCODER_COOKIE_SECURE", "0")
    assert not Settings(model=None, auth_disabled=True, _env_file=None).session_cookie_secure()  # type: ignore[call-arg]
    monkeypatch.setenv("CIMCODER_HOST", "127.0.0.1")
    monkeypatch.setenv("CIMCODER_COOKIE_SECURE", "1")
    assert Settings(model=None, auth_disabled=True, _env_file=None).session_cookie_secure()  # type: ignore[call-arg]


def test_serve_takes_its_bind_address_for_the_cookie(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import uvicorn

    from cimcoder.serving.cli import run_serve

    served: dict[str, Any] = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    monkeypatch.setenv("CIMCODER_MODEL", "")
    monkeypatch.setenv("CIMCODER_API_KEYS", f"dr-dim:{KEY_DIM}")
    monkeypatch.setenv("CIMCODER_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("CIMCODER_COOKIE_SECURE", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    for host, secure in (("0.0.0.0", True), ("127.0.0.1", False)):
        assert run_serve(argparse.Namespace(host=host, port=8765, model=None, workers=None)) == 0
        assert served["host"] == host
        assert served["app"].state.settings.session_cookie_secure() is secure
    monkeypatch.setenv("CIMCODER_HOST", "::1")  # no --host: the variable, else 127.0.0.1
    run_serve(argparse.Namespace(host=None, port=8765, model=None, workers=None))
    assert served["host"] == "::1"


# -- login throttling -----------------------------------------------------------------------


def test_repeated_failures_are_throttled_even_for_the_right_key(
    client: TestClient, clock: Clock
) -> None:
    for _ in range(5):
        wrong = login(client, "dr-codeuse", "Mauvaise-cle-devinee-01")
        assert wrong.status_code == 401 and "incorrects" in wrong.text
    sixth = login(client, "dr-codeuse", "Mauvaise-cle-devinee-01")
    assert sixth.status_code == 429
    assert sixth.headers["retry-after"] == "900"  # the window (15 min), all failures at T0
    assert "Trop de tentatives de connexion" in sixth.text and "15 min" in sixth.text
    right = login(client, "dr-codeuse", KEY_CODER)
    assert right.status_code == 429 and SESSION_COOKIE not in client.cookies
    clock.advance(899)
    assert login(client, "dr-codeuse", KEY_CODER).headers["retry-after"] == "1"
    clock.advance(1)  # the window has passed
    accepted = login(client, "dr-codeuse", KEY_CODER)
    assert accepted.status_code == 303 and client.cookies[SESSION_COOKIE]
    # Throttled attempts are not failures: they do not stretch the window. Nor is the key
    # written anywhere.
    trail = client.get("/v1/review/audit?format=csv", headers={"X-API-Key": KEY_DIM}).text
    assert trail.count("login.failed") == 5 and trail.count("login.succeeded") == 1
    assert "Mauvaise-cle-devinee-01" not in trail and KEY_CODER not in trail


def test_a_success_resets_the_principals_count(client: TestClient, clock: Clock) -> None:
    for _ in range(4):
        assert login(client, "dr-codeuse", "Mauvaise-cle-devinee-02").status_code == 401
    assert login(client, "dr-codeuse", KEY_CODER).status_code == 303
    for _ in range(4):  # four more: still under five since the success
        assert login(client, "dr-codeuse", "Mauvaise-cle-devinee-02").status_code == 401
    assert login(client, "dr-codeuse", KEY_CODER).status_code == 303


def test_failures_count_per_name_and_per_address_across_replicas(
    database_url: str, clock: Clock
) -> None:
    settings = make_settings(database_url, login_max_failures=3, login_window_s=60)
    app_a, app_b = create_app(settings), create_app(settings)
    with TestClient(app_a) as a, TestClient(app_b) as b:
        from_1 = TestClient(app_a, client=("10.0.0.1", 50000))
        from_2 = TestClient(app_b, client=("10.0.0.2", 50000))
        from_3 = TestClient(app_a, client=("10.0.0.3", 50000))
        # One name guessed from three addresses, through both replicas: the name is throttled.
        for guesser in (from_1, from_2, from_3):
            assert login(guesser, "dr-dim", "Mauvaise-cle-devinee-03").status_code == 401
        assert login(b, "dr-dim", KEY_DIM).status_code == 429
        assert login(a, "dr-codeuse", KEY_CODER).status_code == 303  # another name is not
        # One address guessing three names: the address is throttled, whatever the name.
        clock.advance(60)
        for name in ("dr-x", "dr-y", "dr-z"):
            assert login(from_1, name, "Mauvaise-cle-devinee-03").status_code == 401
        refused = login(from_1, "dr-codeuse", KEY_CODER)
        assert refused.status_code == 429 and refused.headers["retry-after"] == "60"
        assert login(from_2, "dr-codeuse", KEY_CODER).status_code == 303  # another address
        clock.advance(60)
        assert login(from_1, "dr-codeuse", KEY_CODER).status_code == 303


def test_the_api_key_header_is_not_throttled(client: TestClient, clock: Clock) -> None:
    for _ in range(6):
        assert login(client, "dr-dim", "Mauvaise-cle-devinee-04").status_code in (401, 429)
    assert login(client, "dr-dim", KEY_DIM).status_code == 429
    assert client.get("/v1/review/stays", headers={"X-API-Key": KEY_DIM}).status_code == 200


def test_old_failures_are_dropped_as_new_ones_come(database_url: str, clock: Clock) -> None:
    store = ReviewStore(database_url)
    throttle = sessions.Throttle(max_failures=5, window_s=60)
    with store.session(write=True) as db:
        sessions.record_failure(db, "dr-x", "10.0.0.9", throttle)
    clock.advance(61)
    with store.session(write=True) as db:
        sessions.record_failure(db, "dr-y", "10.0.0.9", throttle)
    with store.session() as db:
        assert db.scalars(sa.select(LoginFailure.principal)).all() == ["dr-y"]
    store.close()


# -- migration ------------------------------------------------------------------------------


def test_migration_0004_adds_sessions_to_a_store_of_revision_0003(database_url: str) -> None:
    old = SimpleNamespace(engine=make_engine(database_url))
    _alembic(old, "upgrade", "0003")  # type: ignore[arg-type]  # as the previous release left it
    with old.engine.connect() as conn:
        assert not {"login_sessions", "login_failures"} & set(sa.inspect(conn).get_table_names())
    old.engine.dispose()

    with TestClient(create_app(make_settings(database_url))) as client:  # migrates at start
        assert login(client, "dr-codeuse", KEY_CODER).status_code == 303
        value = client.cookies[SESSION_COOKIE]
        stays = client.get("/v1/review/stays")
        assert stays.status_code == 200
        assert stays.json()["total"] == 0
        client.post("/review/logout", follow_redirects=False)
        assert replay(client, value) == (303, 401)

    store = ReviewStore(database_url, migrate=False)
    _alembic(store, "downgrade", "0003")
    with store.engine.connect() as conn:
        assert not {"login_sessions", "login_failures"} & set(sa.inspect(conn).get_table_names())
    store.close()
