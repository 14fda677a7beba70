"""HTTP routes, one router per resource: coding, the code system, operations."""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from starlette.concurrency import run_in_threadpool

from cimcoder import __version__
from cimcoder.inference.schemas import StayPrediction
from cimcoder.serving.auth import CurrentUser, get_settings, require_api_client
from cimcoder.serving.batching import MicroBatcher, QueueFull
from cimcoder.serving.metrics import ServiceMetrics
from cimcoder.serving.schemas import (
    BatchRequest,
    BatchResponse,
    CodeConcept,
    CodeRequest,
    ErrorResponse,
    Health,
    Ready,
    SearchResponse,
    SearchResult,
)

if TYPE_CHECKING:
    from cimcoder.terminologies import Terminology

logger = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "Missing or invalid API key."},
    413: {"model": ErrorResponse, "description": "Body or report text over the size limits."},
    429: {
        "model": ErrorResponse,
        "description": "Too many requests in flight for this key, or the scoring queue is "
        "full: retry after the Retry-After header's seconds.",
    },
    422: {"model": ErrorResponse, "description": "Invalid request (field errors listed)."},
    503: {"model": ErrorResponse, "description": "No model loaded yet."},
    504: {"model": ErrorResponse, "description": "Scoring took longer than the timeout."},
}


def get_predictor(request: Request) -> Any:
    """The loaded predictor; 503 while there is none."""
    predictor = request.app.state.predictor
    if predictor is None:
        raise HTTPException(503, "no model is loaded: the service is starting or has no model")
    return predictor


def get_batcher(request: Request) -> MicroBatcher[Any, StayPrediction]:
    batcher = request.app.state.batcher
    if batcher is None or not batcher.running:
        raise HTTPException(503, "the model is not ready yet")
    return batcher


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


# The coding routes' dependencies run in the event loop (async): FastAPI runs a plain `def`
# dependency in its thread pool, which made two thread hand-offs per request (profiled), each
# waiting for the GIL behind the scoring thread. They are cheap lookups; nothing in them blocks.


async def _batcher(request: Request) -> MicroBatcher[Any, StayPrediction]:
    return get_batcher(request)


async def _api_client(request: Request) -> str:
    return require_api_client(request)


PredictorDep = Annotated[Any, Depends(get_predictor)]
BatcherDep = Annotated[MicroBatcher[Any, StayPrediction], Depends(_batcher)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
CodingClient = Annotated[str, Depends(_api_client)]


def _to_input(item: CodeRequest) -> Any:
    from cimcoder.inference.predictor import StayInput

    return StayInput.from_documents(item.id, item.texts())


async def _score(
    request: Request,
    batcher: MicroBatcher[Any, StayPrediction],
    items: list[CodeRequest],
    principal: str,
) -> list[StayPrediction]:
    return await score_inputs(request, batcher, [_to_input(item) for item in items], principal)


def _too_busy(detail: str, retry_after_s: int) -> HTTPException:
    return HTTPException(429, detail, headers={"Retry-After": str(retry_after_s)})


async def score_inputs(
    request: Request,
    batcher: MicroBatcher[Any, StayPrediction],
    inputs: list[Any],
    principal: str,
) -> list[StayPrediction]:
    """Score `StayInput`s with the loaded model through the micro-batcher.

    413 past `max_chars_per_request`; 429 (Retry-After) when `principal` already has
    `max_concurrent_per_key` requests in flight or the scoring queue is full; 504 only when
    the scoring itself outlasts the timeout.
    """
    settings = get_settings(request)
    metrics = get_metrics(request)
    chars = sum(len(item.text) for item in inputs)
    if chars > settings.max_chars_per_request:
        raise HTTPException(
            413,
            f"too much text in one request: {chars} characters > "
            f"{settings.max_chars_per_request} (send fewer or shorter reports)",
        )
    in_flight: collections.Counter[str] = request.app.state.in_flight
    if in_flight[principal] >= settings.max_concurrent_per_key:
        raise _too_busy(
            f"'{principal}' already has {in_flight[principal]} coding requests in flight "
            f"(limit {settings.max_concurrent_per_key}): wait for their answers",
            1,
        )
    in_flight[principal] += 1
    try:
        results = await asyncio.wait_for(
            batcher.submit(inputs, key=principal), settings.request_timeout_s
        )
    except QueueFull as exc:
        raise _too_busy(
            f"the scoring queue is full ({exc.queued} stays waiting): retry after "
            f"{exc.retry_after_s} s",
            exc.retry_after_s,
        ) from None
    except TimeoutError:
        raise HTTPException(
            504,
            f"scoring took longer than {settings.request_timeout_s:g} s: try again or "
            "send fewer or shorter reports",
        ) from None
    finally:
        in_flight[principal] -= 1
        if in_flight[principal] <= 0:
            del in_flight[principal]
    metrics.stays.inc(len(results))
    metrics.count_decisions(code.decision for result in results for code in result.codes)
    return results


# --- coding -------------------------------------------------------------------------------

coding_router = APIRouter(prefix="/v1/code", tags=["coding"], responses=_ERRORS)


@coding_router.post(
    "",
    response_model=StayPrediction,
    summary="Code one report or one stay",
    description="Ranked CIM-10 FR (or CIM-11) codes with calibrated score, decision, proposed "
    "PMSI role, restriction flags, CIM-11 equivalents and evidence spans (char offsets in "
    "the stay's text: documents joined with a blank line).",
)
async def code_one(
    request: Request, body: CodeRequest, client: CodingClient, batcher: BatcherDep
) -> StayPrediction:
    return (await _score(request, batcher, [body], client))[0]


@coding_router.post("/batch", response_model=BatchResponse, summary="Code several reports or stays")
async def code_batch(
    request: Request, body: BatchRequest, client: CodingClient, batcher: BatcherDep
) -> BatchResponse:
    limit = get_settings(request).max_batch_items
    if len(body.items) > limit:
        raise HTTPException(
            413, f"too many items in one batch: {len(body.items)} > {limit} (split the batch)"
        )
    return BatchResponse(results=await _score(request, batcher, body.items, client))


# --- code system ------------------------------------------------------------------------

codes_router = APIRouter(
    prefix="/v1/codes",
    tags=["codes"],
    responses={
        401: _ERRORS[401],
        404: {"model": ErrorResponse, "description": "Unknown code, with suggestions."},
        422: _ERRORS[422],
    },
    dependencies=[Depends(require_api_client)],
)


def served_terminology(request: Request) -> Terminology:
    """The loaded model's terminology, else CIM-10 FR (a service started without a model)."""
    predictor = getattr(request.app.state, "predictor", None)
    if predictor is not None:
        terminology: Terminology = predictor.terminology
        return terminology
    from cimcoder.terminologies import load_terminology

    return load_terminology("cim10")


def search_terminology(terminology: Terminology, q: str, limit: int) -> SearchResponse:
    """The terminology's own search (a code typed as such comes first), as an API answer."""
    if not q.strip():
        raise HTTPException(422, "the query 'q' is empty")
    hits = terminology.search(q, limit)
    return SearchResponse(
        query=q,
        terminology=terminology.name,
        edition=terminology.edition,
        results=[SearchResult(code=h.code, label=h.label, score=round(h.score, 4)) for h in hits],
    )


def _cim11_for(request: Request, code: str, terminology_name: str) -> list[str]:
    predictor = request.app.state.predictor
    if predictor is not None:
        return list(predictor.cim11_for(code))
    if terminology_name == "cim11":
        return [code]
    from cimcoder.terminologies import load_crosswalk

    return [target.code for target in load_crosswalk().to_cim11(code)]


@codes_router.get("/search", response_model=SearchResponse, summary="Search codes by words")
async def search_codes(
    request: Request,
    q: Annotated[str, Query(min_length=1, max_length=200, description="Words of a label.")],
    limit: Annotated[int, Query(ge=1, le=100, description="Most results.")] = 10,
) -> SearchResponse:
    terminology = await run_in_threadpool(served_terminology, request)
    return await run_in_threadpool(search_terminology, terminology, q, limit)


@codes_router.get("/{code}", response_model=CodeConcept, summary="Look a code up")
async def get_code(request: Request, code: str) -> CodeConcept:
    terminology = await run_in_threadpool(served_terminology, request)
    concept = await run_in_threadpool(terminology.__getitem__, code)  # 404 via handler
    predictor = request.app.state.predictor
    label_space = predictor.label_space if predictor is not None else None
    in_model = label_space is not None and concept.code in label_space
    restrictions = concept.restrictions.to_dict() if concept.restrictions is not None else None
    return CodeConcept(
        code=concept.code,
        label=concept.label,
        long_label=concept.long_label,
        kind=concept.kind,
        parent=concept.parent,
        chapter=concept.chapter,
        block=concept.block,
        terminology=terminology.name,
        edition=terminology.edition,
        restrictions=restrictions,
        cim11=await run_in_threadpool(_cim11_for, request, concept.code, terminology.name),
        in_model=in_model,
        train_count=label_space.count(concept.code) if label_space is not None else None,
    )


# --- operations -----------------------------------------------------------------------------

ops_router = APIRouter(tags=["operations"])


@ops_router.get("/health", response_model=Health, summary="Liveness")
async def health() -> Health:
    return Health(status="ok", version=__version__)


@ops_router.get(
    "/ready",
    response_model=Ready,
    summary="Readiness: the model is loaded",
    responses={503: {"model": Ready, "description": "Not ready."}},
)
async def ready(request: Request, response: Response) -> Ready:
    predictor = request.app.state.predictor
    batcher = request.app.state.batcher
    if predictor is None or batcher is None or not batcher.running:
        response.status_code = 503
        return Ready(ready=False, detail="no model loaded")
    return Ready(ready=True, model=predictor.model_info().model_dump(exclude_none=True))


@ops_router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics_endpoint(request: Request, metrics: MetricsDep) -> Response:
    if not get_settings(request).metrics_public:
        require_api_client(request)
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


__all__ = ["CurrentUser", "codes_router", "coding_router", "ops_router"]
