"""CLI of cimcoder.serving: `cimcoder serve`."""

from __future__ import annotations

import argparse
import logging
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
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument(
        "--model",
        default=None,
        metavar="URI_OR_PATH",
        help="run folder or MLflow URI (default: $CIMCODER_MODEL or models:/cimcoder@champion)",
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
    settings = load_settings(**overrides)
    if settings.auth_disabled:
        logger.warning("authentication is DISABLED (CIMCODER_AUTH_DISABLED=true): local use only")
        if args.host not in {"127.0.0.1", "localhost", "::1"}:
            raise CimcoderError(
                f"refusing to serve without authentication on {args.host}: bind 127.0.0.1 "
                "or configure CIMCODER_API_KEYS"
            )
    predictor = None
    if settings.model is not None:
        from cimcoder.inference.predictor import Predictor

        # Loaded here, before uvicorn starts, so a bad model is a one-line error (exit 2)
        # rather than a lifespan traceback.
        predictor = Predictor.load(settings.model, runtime=settings.runtime)
    app = create_app(settings, predictor=predictor)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", timeout_graceful_shutdown=10)
    return 0
