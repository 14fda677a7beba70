"""Property-based run of the OpenAPI spec against the real server on loopback: no 5xx.

uvicorn serves the app (tiny real model, auth on) in a thread; schemathesis generates
bounded requests for every coding / code-system / operations endpoint.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from test_api import AUTH, make_settings
from test_inference_predictor import build_tiny_run

pytestmark = pytest.mark.slow

OUR_PATHS = r"^/(v1/code|v1/codes|health|ready|metrics)"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    import uvicorn

    from cimcoder.inference import Predictor
    from cimcoder.serving.app import create_app

    run_dir = build_tiny_run(tmp_path_factory.mktemp("runs") / "tiny-tfidf")
    app = create_app(
        make_settings(tmp_path_factory.mktemp("data"), max_request_bytes=50_000, max_batch_items=8),
        predictor=Predictor.load(run_dir),
    )
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def api_schema(base_url: str):  # type: ignore[no-untyped-def]
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json").include(path_regex=OUR_PATHS)


def _operations(api_schema):  # type: ignore[no-untyped-def]
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) >= 7
    return operations


def _run(api_schema, base_url: str, headers: dict[str, str] | None, examples: int) -> None:  # type: ignore[no-untyped-def]
    for operation in _operations(api_schema):

        @given(case=operation.as_strategy())
        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(base_url=base_url, headers=headers)
            case.validate_response(response, checks=[not_a_server_error])
            if headers is None and case.path.startswith("/v1/"):
                assert response.status_code in {401, 413}, (case.path, response.status_code)

        check()


def test_no_server_error_with_a_key(api_schema, base_url: str) -> None:  # type: ignore[no-untyped-def]
    import re
    import urllib.request

    _run(api_schema, base_url, AUTH, examples=25)
    with urllib.request.urlopen(f"{base_url}/metrics") as response:
        metrics = response.read().decode()
    # The run really exercised the coding endpoint, with successes and clear refusals.
    counts = {
        status: float(n)
        for status, n in re.findall(
            r'cimcoder_requests_total\{method="POST",route="/v1/code",status="(\d+)"\} (\S+)', metrics
        )
    }
    assert sum(counts.values()) >= 10, counts
    assert "200" in counts and "422" in counts, counts


def test_no_server_error_without_a_key(api_schema, base_url: str) -> None:  # type: ignore[no-untyped-def]
    _run(api_schema, base_url, None, examples=5)


def test_spec_is_served(base_url: str) -> None:
    import urllib.request

    with urllib.request.urlopen(f"{base_url}/openapi.json") as response:
        assert response.status == 200


