"""HTTP routes of the DIM review workflow: the JSON API (`/v1/review/...`, `/v1/monitoring`)
and the French review pages (`/review/...`), behind the service's authentication.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, Form, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, StreamingResponse
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool

from cimcoder.serving.auth import (
    LOCAL_PRINCIPAL,
    CoderUser,
    DimUser,
    OptionalUser,
    authenticate,
    clear_session_cookie,
    role_allows,
    session_id_of,
    set_session_cookie,
)
from cimcoder.serving.review import audit, export, monitoring, sessions, workflow
from cimcoder.serving.review.schemas import (
    EnqueueRequest,
    EnqueueResult,
    MonitoringReport,
    QcSettings,
    QcSettingsIn,
    ReviewIn,
    ReviewResult,
    StayQueue,
    StayView,
)
from cimcoder.serving.review.store import (
    STATUS_LABELS,
    ReviewConflict,
    ReviewStay,
    ReviewStore,
    StayStatus,
    UnknownStay,
    open_store,
)
from cimcoder.serving.routes import (
    get_batcher,
    score_inputs,
    search_terminology,
    served_terminology,
)
from cimcoder.serving.schemas import SearchResponse
from cimcoder.serving.settings import Role, Settings
from cimcoder.serving.validation import (
    MAX_OFFSET,
    STAY_ID_PATTERN,
    STAY_ID_RULE,
    PlainText,
)

logger = logging.getLogger(__name__)

HERE = FilePath(__file__).resolve().parent
STATIC_DIR = HERE / "static"
STATIC_FILES = {"review.css": "text/css", "review.js": "text/javascript"}
_store_lock = threading.Lock()

router = APIRouter(tags=["review"])


# -- wiring -----------------------------------------------------------------------------


def _settings(app: FastAPI) -> Settings:
    return app.state.settings


def store_for_app(app: FastAPI) -> ReviewStore:
    """The app's review store, opened (and migrated to head) on first use."""
    store: ReviewStore | None = getattr(app.state, "review_store", None)
    if store is None:
        with _store_lock:
            store = getattr(app.state, "review_store", None)
            if store is None:
                store = open_store(_settings(app).resolved_database_url())
                app.state.review_store = store
    return store


def init_app(app: FastAPI, settings: Settings) -> None:
    """Called by `create_app`: open the store (Alembic upgrade head) at start-up."""
    app.state.review_store = None

    def find_session(session_id: str) -> str | None:
        return sessions.principal_of(store_for_app(app), session_id)

    # Review sessions live in the review database: `auth` looks the cookie's session up here.
    app.state.find_session = find_session
    previous = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[Any]:
        await asyncio.to_thread(store_for_app, app_)
        # Coders' codes are checked against the terminology: load it now, not in a save.
        await asyncio.to_thread(_warm_terminology)
        async with previous(app_) as state:
            yield state

    app.router.lifespan_context = lifespan


def _warm_terminology() -> None:
    from cimcoder.terminologies import load_terminology

    load_terminology("cim10")


def get_store(request: Request) -> ReviewStore:
    return store_for_app(request.app)


StoreDep = Annotated[ReviewStore, Depends(get_store)]
StayIdPath = Annotated[str, Path(pattern=STAY_ID_PATTERN, description=STAY_ID_RULE)]


@functools.cache
def _templates() -> Jinja2Templates:
    # One environment for the process: a new one per request re-parses every template.
    return Jinja2Templates(directory=str(HERE / "templates"))


def _qc_default(request: Request) -> float:
    return float(_settings(request.app).review_qc_sample_rate)


def _not_found(exc: UnknownStay) -> HTTPException:
    return HTTPException(404, str(exc))


def _client_address(request: Request) -> str | None:
    return request.client.host if request.client is not None else None


def _record(store: ReviewStore, actor: str, event: str, **after: Any) -> None:
    """An audit event of its own transaction (views, exports, logins: nothing else to commit)."""
    with store.session(write=True) as session:
        audit.record(session, actor=actor, event=event, after=after or None)


def _viewed_stay(store: ReviewStore, stay_id: str, user: str) -> dict[str, Any]:
    """The stay's view, read from a snapshot (it never waits for a save); who read the report
    is then an audit event of its own write transaction, committed before the view is sent."""
    with store.session() as session:
        view = workflow.stay_view(session, stay_id)
    with store.session(write=True) as session:
        audit.record(
            session, actor=user, event="stay.viewed", stay=session.get(ReviewStay, stay_id)
        )
    return view


# -- JSON API ---------------------------------------------------------------------------


@router.post(
    "/v1/review/stays",
    response_model=EnqueueResult,
    status_code=201,
    summary="Score a stay with the loaded model and put it in the review queue",
    responses={503: {"description": "No model is loaded: nothing can be scored."}},
)
async def post_stay(
    body: EnqueueRequest, request: Request, user: CoderUser, store: StoreDep
) -> Any:
    from cimcoder.inference.predictor import StayInput

    stay = body.stay
    # The very text that is stored and shown: evidence offsets then point into it.
    scored = StayInput(stay.id, workflow.joined_text(stay.document_list()))
    [prediction] = await score_inputs(request, get_batcher(request), [scored], user)

    def write() -> workflow.Enqueued:
        with store.session(write=True) as session:
            return workflow.enqueue(
                session,
                stay,
                prediction,
                default_qc_rate=_qc_default(request),
                actor=user,
                origin="scored",
            )

    try:
        result = await run_in_threadpool(write)
    except ReviewConflict as exc:
        raise HTTPException(409, str(exc)) from None
    return EnqueueResult(**result.__dict__)


@router.get("/v1/review/stays", response_model=StayQueue, summary="The review queue, filtered")
def get_stays(
    user: CoderUser,
    store: StoreDep,
    status: Annotated[
        PlainText | None, Query(max_length=200, description="Comma-separated statuses.")
    ] = None,
    unit: Annotated[PlainText | None, Query(max_length=128)] = None,
    date_from: datetime.date | None = None,
    date_to: datetime.date | None = None,
    qc: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> StayQueue:
    flt = workflow.QueueFilter(status, unit, date_from, date_to, qc, limit, offset)
    with store.session() as session:
        return StayQueue.model_validate(workflow.list_stays(session, flt))


@router.get(
    "/v1/review/stays/{stay_id}",
    response_model=StayView,
    summary="One stay: text, suggestions, coding",
)
def get_stay(stay_id: StayIdPath, user: CoderUser, store: StoreDep) -> StayView:
    try:
        return StayView.model_validate(_viewed_stay(store, stay_id, user))
    except UnknownStay as exc:
        raise _not_found(exc) from None


@router.post(
    "/v1/review/stays/{stay_id}/decisions",
    response_model=ReviewResult,
    summary="Save a coder's decisions (idempotent by decision_id; 409 on a stale version)",
    responses={409: {"description": "The stay changed since it was opened: reload and merge."}},
)
def post_decisions(stay_id: StayIdPath, body: ReviewIn, user: CoderUser, store: StoreDep) -> Any:
    try:
        return workflow.save_review(store, stay_id, body, user)
    except UnknownStay as exc:
        raise _not_found(exc) from None
    except ReviewConflict as exc:
        raise HTTPException(409, {"detail": str(exc), "current": exc.current}) from None


@router.get(
    "/v1/review/codes/search",
    response_model=SearchResponse,
    summary="Terminology search for the review page",
)
def search_codes(
    request: Request,
    user: CoderUser,
    q: Annotated[str, Query(min_length=1, max_length=200, description="Words or a code.")],
    limit: Annotated[int, Query(ge=1, le=50)] = 10,
) -> SearchResponse:
    # Same answer as GET /v1/codes/search, but open to the coders' session cookie (the
    # machine API accepts keys only).
    return search_terminology(served_terminology(request), q, limit)


@router.get(
    "/v1/review/settings", response_model=QcSettings, summary="DIM settings of the review workflow"
)
def get_review_settings(request: Request, user: CoderUser, store: StoreDep) -> QcSettings:
    with store.session() as session:
        return QcSettings(qc_rate=workflow.qc_rate(session, _qc_default(request)))


@router.put(
    "/v1/review/settings", response_model=QcSettings, summary="Set the quality-control sample rate"
)
def put_review_settings(
    body: QcSettingsIn, request: Request, user: DimUser, store: StoreDep
) -> QcSettings:
    with store.session(write=True) as session:
        rate = workflow.set_qc_rate(session, body.qc_rate, user, _qc_default(request))
    return QcSettings(qc_rate=rate)


@router.get("/v1/review/export", summary="Validated stays as corpora-schema JSONL")
def get_export(user: DimUser, store: StoreDep) -> StreamingResponse:
    _record(store, user, "export.validated")
    lines = (stay.model_dump_json() + "\n" for stay in export.iter_validated_stays(store))
    return StreamingResponse(
        lines,
        media_type="application/x-ndjson",
        headers={"Content-Disposition": 'attachment; filename="review-validated.jsonl"'},
    )


@router.get("/v1/review/audit", summary="The audit trail (JSONL or CSV)")
def get_audit(
    user: DimUser,
    store: StoreDep,
    format: Literal["jsonl", "csv"] = "jsonl",
    stay_id: Annotated[str | None, Query(pattern=STAY_ID_PATTERN)] = None,
) -> StreamingResponse:
    _record(store, user, "audit.exported", format=format, stay_id=stay_id)
    events = audit.iter_events(store, stay_id=stay_id)
    media = "text/csv" if format == "csv" else "application/x-ndjson"
    return StreamingResponse(
        audit.format_events(events, format),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="review-audit.{format}"'},
    )


@router.get(
    "/v1/monitoring",
    response_model=MonitoringReport,
    # `code_frequency.note` is only there when there is nothing to compare with.
    response_model_exclude_unset=True,
    summary="Auto-coding rate, QC precision, corrections, drift",
)
def get_monitoring(request: Request, user: DimUser, store: StoreDep) -> MonitoringReport:
    report = monitoring.compute(store, labels=monitoring.labels_for_app(request.app))
    return MonitoringReport.model_validate(report)


# -- pages ------------------------------------------------------------------------------


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/review/login?next={quote(target)}", status_code=303)


def _denied_page(request: Request, user: str, needed: Role) -> HTMLResponse:
    """The French 403 page of a signed-in user without the role `needed`."""
    settings = _settings(request.app)
    logger.info("refused %r (role %s) the page %s", user, settings.role_of(user), request.url.path)
    page = _page(request, "denied.html", user, role=settings.role_of(user), needed=needed)
    page.status_code = 403
    return page


def _safe_next(target: str | None) -> str:
    # Only local review paths: never an open redirect to another site.
    if target and target.startswith("/review") and not target.startswith("//"):
        return target
    return "/review"


def _page(request: Request, name: str, user: str | None, **context: Any) -> HTMLResponse:
    return _templates().TemplateResponse(
        request,
        name,
        {
            "user": user,
            "is_dim": user is not None and role_allows(_settings(request.app), user, "dim"),
            "status_labels": {s.value: STATUS_LABELS[s] for s in StayStatus},
        }
        | context,
    )


@router.get("/review/login", response_class=HTMLResponse, include_in_schema=False)
def login_page(request: Request, next: str | None = None) -> HTMLResponse:
    return _page(request, "login.html", None, next=_safe_next(next), error=None)


def _login_refused(
    request: Request, next: str | None, status_code: int, error: str
) -> HTMLResponse:
    page = _page(request, "login.html", None, next=_safe_next(next), error=error)
    page.status_code = status_code
    return page


def _french_delay(seconds: int) -> str:
    return f"{seconds} s" if seconds < 60 else f"{-(-seconds // 60)} min"


@router.post("/review/login", response_class=HTMLResponse, include_in_schema=False)
def login(
    request: Request,
    username: Annotated[str, Form(max_length=128)],
    key: Annotated[str, Form(max_length=512)],
    next: Annotated[str | None, Form()] = None,
) -> Any:
    settings = _settings(request.app)
    store = get_store(request)
    client = _client_address(request)
    if settings.auth_disabled:
        _record(store, LOCAL_PRINCIPAL, "login.succeeded", client=client)
        return RedirectResponse(_safe_next(next), status_code=303)
    # Who tried, from where, never the key. Printable characters only: the name typed may be
    # anything (a NUL byte included).
    tried = "".join(ch for ch in username.strip() if ch.isprintable())[:128] or "?"
    throttle = sessions.Throttle(settings.login_max_failures, settings.login_window_s)
    with store.session() as db:
        wait_s = sessions.login_wait_s(db, tried, client, throttle)
    if wait_s:
        # Refused before the key is even checked: guessing on gains nothing.
        logger.warning("review login of %r from %s throttled for %d s", tried, client, wait_s)
        page = _login_refused(
            request,
            next,
            429,
            "Trop de tentatives de connexion échouées. "
            f"Réessayez dans {_french_delay(wait_s)}.",
        )
        page.headers["Retry-After"] = str(wait_s)
        return page
    principal = authenticate(settings, username, key)
    if principal is None:
        logger.info("failed review login")
        with store.session(write=True) as db:
            sessions.record_failure(db, tried, client, throttle)
            audit.record(db, actor=tried, event="login.failed", after={"client": client})
        return _login_refused(request, next, 401, "Identifiant ou clé incorrects.")
    with store.session(write=True) as db:
        sessions.clear_failures(db, principal)
        session_id = sessions.open_session(db, principal, settings.session_max_age_s)
        audit.record(db, actor=principal, event="login.succeeded", after={"client": client})
    response = RedirectResponse(_safe_next(next), status_code=303)
    set_session_cookie(response, settings, session_id)
    return response


@router.post("/review/logout", include_in_schema=False)
def logout(request: Request) -> RedirectResponse:
    settings = _settings(request.app)
    session_id = session_id_of(request)
    if session_id is not None:
        # Revoked in the database: the cookie, replayed, opens nothing on any replica.
        with get_store(request).session(write=True) as db:
            principal = sessions.revoke_session(db, session_id)
            if principal is not None:
                audit.record(
                    db, actor=principal, event="logout", after={"client": _client_address(request)}
                )
    response = RedirectResponse("/review/login", status_code=303)
    clear_session_cookie(response, settings)
    return response


@router.get("/review", response_class=HTMLResponse, include_in_schema=False)
def queue_page(
    request: Request,
    user: OptionalUser,
    store: StoreDep,
    status: Annotated[PlainText | None, Query(max_length=200)] = None,
    unit: Annotated[PlainText | None, Query(max_length=128)] = None,
    date_from: Annotated[str | None, Query(max_length=32)] = None,
    date_to: Annotated[str | None, Query(max_length=32)] = None,
    vue: Literal["a_revoir", "controle", "auto", "valides", "tous"] = "a_revoir",
) -> Any:
    if user is None:
        return _login_redirect(request)
    if not role_allows(_settings(request.app), user, "coder"):
        return _denied_page(request, user, "coder")
    views = {
        "a_revoir": ("to_code,in_review", None),
        "controle": (None, True),
        "auto": ("auto_coded", None),
        "valides": ("validated", None),
        "tous": (None, None),
    }
    view_status, view_qc = views[vue]
    try:
        start = datetime.date.fromisoformat(date_from) if date_from else None
        end = datetime.date.fromisoformat(date_to) if date_to else None
    except ValueError:
        start = end = None
    flt = workflow.QueueFilter(
        status=status or view_status,
        unit=unit or None,
        date_from=start,
        date_to=end,
        qc=view_qc,
        limit=500,
    )
    with store.session() as session:
        queue = workflow.list_stays(session, flt)
        counts = workflow.status_counts(session)
        all_units = workflow.units(session)
        rate = workflow.qc_rate(session, _qc_default(request))
    return _page(
        request,
        "queue.html",
        user,
        queue=queue,
        counts=counts,
        units=all_units,
        vue=vue,
        filters={
            "status": status or "",
            "unit": unit or "",
            "date_from": date_from or "",
            "date_to": date_to or "",
        },
        qc_rate=rate,
    )


@router.get("/review/stays/{stay_id}", response_class=HTMLResponse, include_in_schema=False)
def stay_page(request: Request, stay_id: StayIdPath, user: OptionalUser, store: StoreDep) -> Any:
    if user is None:
        return _login_redirect(request)
    if not role_allows(_settings(request.app), user, "coder"):
        return _denied_page(request, user, "coder")
    try:
        view = _viewed_stay(store, stay_id, user)
    except UnknownStay as exc:
        raise _not_found(exc) from None
    # Embedded as JSON for the page script: <, > and & escaped, so that no report text
    # (`</script>`, `<!--<script>`, which would swallow the end tag) can change the markup.
    payload = (
        json.dumps(view, ensure_ascii=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )
    return _page(request, "stay.html", user, stay=view, payload=payload)


@router.get("/review/monitoring", response_class=HTMLResponse, include_in_schema=False)
def monitoring_page(request: Request, user: OptionalUser, store: StoreDep) -> Any:
    if user is None:
        return _login_redirect(request)
    if not role_allows(_settings(request.app), user, "dim"):
        return _denied_page(request, user, "dim")
    report = monitoring.compute(store, labels=monitoring.labels_for_app(request.app))
    with store.session() as session:
        rate = workflow.qc_rate(session, _qc_default(request))
    return _page(request, "monitoring.html", user, report=report, qc_rate=rate)


@router.get("/review/static/{name}", include_in_schema=False)
def static_file(name: str) -> FileResponse:
    media = STATIC_FILES.get(name)
    if media is None:
        raise HTTPException(404, "not found")
    return FileResponse(STATIC_DIR / name, media_type=media)
