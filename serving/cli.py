"""CLI of cimcoder.serving: `cimcoder serve`."""

from __future__ import annotations

import argparse
import copy
import logging
import os
from typing import TYPE_CHECKING, Any

from cimcoder.errors import CimcoderError

if TYPE_CHECKING:
    from cimcoder.serving.settings import Settings

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add this area's sub-commands."""
    parser = subparsers.add_parser(
        "serve",
        help="run the coding API (FastAPI + uvicorn)",
        description="Serve POST /v1/code, /v1/code/batch, GET /v1/codes/..., /health, /ready, "
        "/metrics and the OpenAPI docs at /docs. Settings come from CIMCODER_* variables "
        "(CIMCODER_API_KEYS, CIMCODER_AUTH_DISABLED, ...); the options below override them.",
    )
    parser.add_argument(
        "--host", default=None, help="bind address (default $CIMCODER_HOST or 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--model",
        default=None,
        metavar="URI_OR_PATH",
        help="run folder or MLflow URI (default: $CIMCODER_MODEL or models:/cimcoder@champion)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="server processes on the port, each loading the model (default: $CIMCODER_WORKERS "
        "or 1); scoring queue, per-key limits and /metrics are per worker",
    )
    parser.set_defaults(handler=run_serve)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with a readable error instead of a pydantic dump.

    `overrides` are raw values (command-line options) that Settings validates."""
    from pydantic import ValidationError

    from cimcoder.serving.settings import Settings

    try:
        return Settings(**overrides)
    except ValidationError as exc:
        # Field and message only: the input value could be a secret.
        lines = [
            f"  CIMCODER_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        ]
        raise CimcoderError("invalid service settings:\n" + "\n".join(lines)) from None


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from cimcoder.serving.app import create_app

    if not 0 < args.port < 65536:
        raise CimcoderError(f"--port must be between 1 and 65535, got {args.port}")
    overrides: dict[str, object] = {}
    if args.model is not None:
        overrides["model"] = args.model
    if args.host is not None:
        overrides["host"] = args.host
    if args.workers is not None:
        overrides["workers"] = args.workers
    settings = load_settings(**overrides)
    if settings.auth_disabled:
        logger.warning("authentication is DISABLED (CIMCODER_AUTH_DISABLED=true): local use only")
        if not settings.bound_to_loopback():
            raise CimcoderError(
                f"refusing to serve without authentication on {settings.host}: bind 127.0.0.1 "
                "or configure CIMCODER_API_KEYS"
            )
    if settings.workers > 1:
        return _serve_workers(settings, args)
    predictor = None
    if settings.model is not None:
        from cimcoder.inference.predictor import Predictor

        # Loaded here, before uvicorn starts, so a bad model is a one-line error (exit 2)
        # rather than a lifespan traceback.
        predictor = Predictor.load(settings.model, runtime=settings.runtime)
    app = create_app(settings, predictor=predictor)
    uvicorn.run(app, host=settings.host, port=args.port, log_level="info", timeout_graceful_shutdown=10)
    return 0


def _serve_workers(settings: Settings, args: argparse.Namespace) -> int:
    """`settings.workers` uvicorn processes on one socket, each building the app from the
    environment (`create_app()`) and loading the model in its lifespan.

    One process scores on one core at a time (the event loop and the scoring thread share the
    GIL): workers are how the service uses several cores. The options given here reach the
    workers through the environment they inherit.
    """
    import uvicorn
    from uvicorn.config import LOGGING_CONFIG, STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    if settings.model is not None:
        from cimcoder.inference.predictor import resolve_run_dir

        resolve_run_dir(settings.model)  # a wrong path is one line here, not N tracebacks
    inherited = {"CIMCODER_WORKERS": str(settings.workers), "CIMCODER_HOST": settings.host}
    if args.model is not None:
        inherited["CIMCODER_MODEL"] = args.model
    if settings.session_secret is None:
        # One random secret for all the workers: a review login made through one of them
        # must hold on the others (it still ends with the service).
        inherited["CIMCODER_SESSION_SECRET"] = settings.resolved_session_secret()
    os.environ.update(inherited)
    log_config = copy.deepcopy(LOGGING_CONFIG)  # the workers' own cimcoder.* logs, too
    log_config["loggers"]["cimcoder"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    config = uvicorn.Config(
        "cimcoder.serving.app:create_app",
        factory=True,
        host=settings.host,
        port=args.port,
        workers=settings.workers,
        log_level="info",
        log_config=log_config,
        timeout_graceful_shutdown=10,
    )
    supervisor = Multiprocess(config, sockets=[config.bind_socket()])
    supervisor.run()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        raise CimcoderError("a worker failed to start (model or settings): see the log above")
    return 0
