"""The cimcoder FastAPI application.

`create_app(settings, predictor)` builds the app; nothing happens at import time. The model
is loaded in the lifespan handler (start-up), unless a predictor is passed (tests, bench).

The DIM review area plugs in without this module knowing it: when the module
`cimcoder.serving.review` exists, its `router` is included, and its optional
`init_app(app: FastAPI, settings: Settings) -> None` is called once at creation (to
attach its store to `app.state`, add lifespan work through `app.router`, templates...).
Its routes get the principal with `cimcoder.serving.auth.CurrentUser` / `OptionalUser`.
"""

from __future__ import annotations

import asyncio
import collections
import importlib
import importlib.util
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cimcoder import __version__
from cimcoder.errors import CimcoderError
from cimcoder.serving.batching import MicroBatcher
from cimcoder.serving.metrics import MetricsMiddleware, ServiceMetrics
from cimcoder.serving.settings import Settings

logger = logging.getLogger(__name__)

REVIEW_MODULE = "cimcoder.serving.review"


class BodySizeLimitMiddleware:
    """Answers 413 to a body over `max_bytes` (declared or streamed) before the app reads it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, send: Send) -> None:
        response = JSONResponse(
            {"detail": f"request body too large: the limit is {self.max_bytes} bytes"},
            status_code=413,
        )
        await response({"type": "http"}, _no_receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in {"GET", "HEAD", "OPTIONS"}:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                too_big = False
            if too_big:
                await self._reject(send)
                return
        # Read the body here (bounded) so a chunked upload cannot exceed the limit either.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._reject(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class InternalErrorMiddleware:
    """Answers 500 to an unhandled error, logging its type and route template only.

    Starlette's own last-resort handler re-raises the exception after answering, and the
    server then logs it with its message, which may quote a report: nothing gets past here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            logger.error("internal error on %s %s: %s", scope["method"], route, type(exc).__name__)
            if started:  # half an answer is out: the server closes the connection
                return
            response = JSONResponse({"detail": "internal server error"}, status_code=500)
            await response(scope, receive, tracking_send)


# Everything from this origin only: no CDN, no inline script or style, no framing.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
# FastAPI's interactive docs load Swagger UI / ReDoc from a CDN with an inline script: they
# alone get a policy naming it (they hold no report text).
DOCS_CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
    "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
    "worker-src 'self' blob:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})
CACHEABLE_PREFIXES = ("/review/static/",)
_SET_HERE = frozenset(
    {
        b"content-security-policy",
        b"x-content-type-options",
        b"x-frame-options",
        b"referrer-policy",
        b"cache-control",
    }
)


class SecurityHeadersMiddleware:
    """Adds the browser-safety headers to every answer, errors included.

    `Cache-Control: no-store` on everything but the static files: pages and answers carry
    report text, which must not stay in a shared or browser cache.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        policy = DOCS_CONTENT_SECURITY_POLICY if path in DOCS_PATHS else CONTENT_SECURITY_POLICY
        added = [
            (b"content-security-policy", policy.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
        ]
        if not path.startswith(CACHEABLE_PREFIXES):
            added.append((b"cache-control", b"no-store"))

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                kept = [
                    (k, v) for k, v in message.get("headers", []) if k.lower() not in _SET_HERE
                ]
                message = {**message, "headers": kept + added}
            await send(message)

        await self.app(scope, receive, with_headers)


async def _no_receive() -> Message:  # pragma: no cover - a JSONResponse never reads
    return {"type": "http.disconnect"}


def _field_errors(exc: RequestValidationError) -> list[dict[str, object]]:
    # Pydantic's "input" would echo report text back (and into any proxy log): left out.
    out = []
    for error in exc.errors():
        loc = [str(part) for part in error.get("loc", ())]
        msg = str(error.get("msg", "")).removeprefix("Value error, ")
        out.append({"loc": loc, "msg": msg, "type": error.get("type", "")})
    return out


def _install_error_handlers(app: FastAPI) -> None:
    from cimcoder.terminologies.errors import InvalidCodeError, UnknownCodeError

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _field_errors(exc)
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body")  # type: ignore[attr-defined]
        detail = f"invalid request: {first['msg']}" + (f" (at {where})" if where else "")
        return JSONResponse({"detail": detail, "errors": errors}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        body: dict[str, Any] = (
            dict(exc.detail) if isinstance(exc.detail, dict) else {"detail": str(exc.detail)}
        )
        return JSONResponse(body, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(UnknownCodeError)
    async def _unknown_code(request: Request, exc: UnknownCodeError) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc), "suggestions": list(exc.suggestions)}, status_code=404
        )

    @app.exception_handler(InvalidCodeError)
    async def _invalid_code(request: Request, exc: InvalidCodeError) -> JSONResponse:
        return JSONResponse({"detail": str(exc), "suggestions": []}, status_code=404)

    @app.exception_handler(CimcoderError)
    async def _user_error(request: Request, exc: CimcoderError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # The type only: an exception message may quote the report.
        logger.error("internal error on %s %s: %s", request.method, request.url.path,
                     type(exc).__name__)
        return JSONResponse({"detail": "internal server error"}, status_code=500)


def _include_review(app: FastAPI, settings: Settings) -> None:
    if importlib.util.find_spec(REVIEW_MODULE) is None:
        logger.info("no review module: the review page is not served")
        return
    # A review module that exists but fails to import is a bug to surface, not to hide.
    review = importlib.import_module(REVIEW_MODULE)
    init_app = getattr(review, "init_app", None)
    if init_app is not None:
        init_app(app, settings)
    router = getattr(review, "router", None)
    if router is not None:
        app.include_router(router)


def create_app(settings: Settings | None = None, predictor: Any = None) -> FastAPI:
    """Build the service. `predictor` (a loaded `Predictor`) skips loading `settings.model`."""
    from cimcoder.serving.routes import codes_router, coding_router, ops_router

    settings = settings if settings is not None else Settings()
    metrics = ServiceMetrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = app.state
        if state.predictor is None and settings.model is not None:
            from cimcoder.inference.predictor import Predictor

            logger.info("loading model %s", settings.model)
            state.predictor = await asyncio.to_thread(
                Predictor.load, settings.model, runtime=settings.runtime
            )
        batcher: MicroBatcher[Any, Any] | None = None
        if state.predictor is not None:
            loaded = state.predictor

            def predict(items: Sequence[Any]) -> list[Any]:
                return list(loaded.predict(items, batch_size=settings.predict_batch_size))

            batcher = MicroBatcher(
                predict,
                max_size=settings.batch_max_size,
                max_wait_s=settings.batch_max_wait_ms / 1000.0,
                on_batch=metrics.observe_batch,
                max_queued=settings.max_queued_stays,
                # Half the timeout at most in the queue, the rest for the scoring itself:
                # a request that would wait longer is told to come back (429), not left to 504.
                max_queue_wait_s=settings.request_timeout_s / 2,
            )
            await batcher.start()
        else:
            logger.warning("no model configured: coding endpoints answer 503")
        state.batcher = batcher
        try:
            yield
        finally:
            if batcher is not None:
                await batcher.stop()
            state.batcher = None

    app = FastAPI(
        title="cimcoder",
        version=__version__,
        description="Automated CIM-10 FR / CIM-11 coding of French hospital reports (PMSI): "
        "ranked codes with calibrated scores, decisions (auto / review / reject), PMSI role "
        "proposals and restriction flags, CIM-11 equivalents and evidence spans.",
        lifespan=lifespan,
        docs_url="/docs" if settings.docs else None,
        redoc_url="/redoc" if settings.docs else None,
    )
    app.state.settings = settings
    app.state.predictor = predictor
    app.state.batcher = None
    app.state.in_flight = collections.Counter()  # coding requests in flight, per principal
    app.state.metrics = metrics

    _install_error_handlers(app)
    app.include_router(ops_router)
    app.include_router(coding_router)
    app.include_router(codes_router)
    _include_review(app, settings)

    # The last added is the outermost: metrics see every answer, 413s and 500s included.
    app.add_middleware(InternalErrorMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    app.add_middleware(SecurityHeadersMiddleware)
    if settings.allowed_hosts != ["*"]:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts)
    return app
