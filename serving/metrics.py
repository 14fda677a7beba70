"""Prometheus metrics of one app (own registry, so several apps can live in one process)."""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    """Request counts, latency, batch sizes and codes per decision."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "cimcoder_requests_total",
            "HTTP requests by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "cimcoder_request_latency_seconds",
            "HTTP request latency by route template.",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.codes = Counter(
            "cimcoder_codes_total",
            "Codes returned, by decision (auto / review / reject).",
            ["decision"],
            registry=self.registry,
        )
        self.stays = Counter(
            "cimcoder_stays_scored_total", "Stays scored.", registry=self.registry
        )
        self.batch_size = Histogram(
            "cimcoder_batch_size",
            "Stays per model call (micro-batching).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "cimcoder_batch_seconds",
            "Scoring time per model call (its sum over the wall time: how busy the scorer is).",
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def count_decisions(self, decisions: Iterable[str]) -> None:
        # One labelled increment per decision kind, not per code: a child lookup per code
        # (30 codes an answer) was about a fifth of the event loop's time per request under
        # cProfile.
        for decision, count in collections.Counter(decisions).items():
            self.codes.labels(decision=decision).inc(count)

    def observe_batch(self, stays: int, seconds: float) -> None:
        self.batch_size.observe(stays)
        self.batch_seconds.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request by its route template (never the raw path: no ids, no PII)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], template, str(status)).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - start)
