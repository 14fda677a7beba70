"""Shared fixtures.

`postgres_url`: a real PostgreSQL server started for the test session (see tests/pg.py),
with one empty database; skipped only where no server binaries are installed.
`postgres_server`: the server itself, to create more databases (`create_database(name)`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pg import PostgresServer, find_bin_dir, wait_ready


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    if find_bin_dir() is None:
        pytest.skip(
            "PostgreSQL server binaries not found (install postgresql, e.g. "
            "`make system-deps`, or set CIMCODER_PG_BIN)"
        )
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    url = postgres_server.create_database("cimcoder_test")
    wait_ready(url)
    return url


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real TF-IDF run folder with its decision policy, fitted on French notes."""
    from test_inference_predictor import build_tiny_run

    return build_tiny_run(tmp_path_factory.mktemp("runs") / "tiny-tfidf")


@pytest.fixture(scope="module")
def predictor(tiny_run: Path):  # type: ignore[no-untyped-def]
    from cimcoder.inference import Predictor

    return Predictor.load(tiny_run)
