"""MLflow tracking through one logger object, `RunTracker`, and the model registry's plumbing.

Logging a run folder as the registered pyfunc model is `cimcoder.inference.mlflow_model.
register_run_model`, next to the pyfunc class it logs; this module keeps what it builds on
(`RegisteredModel`, `read_run_metric`, `fluent_uri`), `set_alias`, and `load_run_dir_from_uri`.

Where runs go:
- `tracking_uri` argument, else `MLFLOW_TRACKING_URI`, else the **local store**: an SQLite
  backend `sqlite:///<dir>/mlflow.db` with artefacts under `<dir>/mlartifacts` (the layout
  MLflow 3 recommends: `./mlruns` file stores are deprecated, and the model registry needs a
  database backend). `<dir>` is `CIMCODER_MLFLOW_DIR` or the current directory. No server is
  needed; view it with `mlflow ui --backend-store-uri sqlite:///<dir>/mlflow.db`.
- If a tracking server (http/https URI) does not answer a short probe, or fails during the
  run, training goes on: the run is kept in the local store, with a warning saying where and
  how to view it (see `FALLBACK_HINT`). When the server dies mid-run, MLflow's HTTP client
  first retries (MLFLOW_HTTP_REQUEST_MAX_RETRIES / MLFLOW_HTTP_REQUEST_TIMEOUT bound that);
  then a new local run receives everything logged so far, and logging continues there.

The tracker talks to MLflow through `MlflowClient` (no global active run), so several trackers
can coexist in one process and tests can point each one at its own temporary store.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from cimcoder.errors import CimcoderError
from cimcoder.run_folder import CHECKPOINT_DIR, CONFIG_FILE, SUMMARY_FILES, RunFolder, read_json

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

logger = logging.getLogger(__name__)

LOCAL_DIR_ENV = "CIMCODER_MLFLOW_DIR"
DB_FILE = "mlflow.db"
ARTIFACTS_DIR = "mlartifacts"
PROBE_TIMEOUT_S = 2.0
# MLflow 3 caps a param value at 6000 characters; keep well below so a long value is
# visibly truncated rather than rejected.
MAX_PARAM_CHARS = 500
# Run-folder files worth browsing in the MLflow UI (small; the weights go with the model).
RUN_SUMMARY_FILES = SUMMARY_FILES
RUN_REPORT_GLOBS = ("report*", "eval*", "*.md", "*.html")

FALLBACK_HINT = (
    "view it with `mlflow ui --backend-store-uri {uri}`; to copy it to the server later, "
    "re-log the run folder {run_dir} (it holds the config, labels, weights and metrics) or use "
    "mlflow-export-import"
)


class TrackingError(CimcoderError):
    """MLflow tracking or registration failed in a way the user must act on."""


def local_store_dir(base: str | Path | None = None) -> Path:
    """Folder of the local store: `base`, else $CIMCODER_MLFLOW_DIR, else the current dir."""
    return Path(base or os.environ.get(LOCAL_DIR_ENV) or ".").resolve()


def local_tracking_uri(base: str | Path | None = None) -> str:
    """`sqlite:////abs/path/mlflow.db` of the local store."""
    return f"sqlite:///{local_store_dir(base) / DB_FILE}"


def resolve_tracking_uri(tracking_uri: str | None = None) -> str:
    """Explicit URI, else MLFLOW_TRACKING_URI, else the local store."""
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri()


def _is_remote(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _uses_local_sqlite(uri: str) -> Path | None:
    """Directory holding the SQLite file of a `sqlite:///` URI (None for other schemes)."""
    if not uri.startswith("sqlite:///"):
        return None
    return Path(uri[len("sqlite:///") :]).resolve().parent


def probe_server(uri: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when the tracking server answers `/health`, else why not (short, no retries)."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            if resp.status < 500:
                return None
            return f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        # A server that answers, even 401/404 for /health, is up: let MLflow deal with it.
        return None if exc.code < 500 else f"HTTP {exc.code}"
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return str(reason) or type(exc).__name__


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {"a.b.c": "value"}; lists become JSON; long values are truncated."""
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            if value:
                flat.update(flatten_params(value, prefix=f"{name}."))
            else:
                flat[name] = "{}"
            continue
        if isinstance(value, (list, tuple)):
            text = json.dumps(list(value), ensure_ascii=False, default=str)
        elif value is None:
            text = "None"
        else:
            text = str(value)
        if len(text) > MAX_PARAM_CHARS:
            text = text[: MAX_PARAM_CHARS - 3] + "..."
        flat[_safe_key(name)] = text
    return flat


def _safe_key(key: str) -> str:
    # MLflow keys allow alphanumerics, _ - . space / only.
    return "".join(c if c.isalnum() or c in "_-. /" else "_" for c in key)


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Nested mapping of numbers -> {"a.b": float}; non-numeric leaves are skipped."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, prefix=f"{name}."))
        elif isinstance(value, bool):
            flat[_safe_key(name)] = float(value)
        elif isinstance(value, (int, float)) or hasattr(value, "__float__"):
            try:
                flat[_safe_key(name)] = float(value)
            except (TypeError, ValueError):
                continue
    return flat


@dataclass
class _Journal:
    """What was logged so far, replayed into the local store if the server fails mid-run."""

    params: dict[str, str]
    metrics: list[tuple[str, float, int, int]]  # key, value, timestamp ms, step
    tags: dict[str, str]
    artifacts: list[tuple[str, str | None]]  # local path, artifact_path
    dicts: list[tuple[dict, str]]


class RunTracker:
    """One MLflow run, logged through `MlflowClient`; falls back to the local store.

    Use `RunTracker.start(...)`, as a context manager or ending it with `end(status)`.
    """

    def __init__(
        self,
        client: MlflowClient,
        run_id: str,
        experiment_id: str,
        tracking_uri: str,
        experiment: str,
        run_name: str | None,
        fallback_dir: Path,
        fell_back: bool = False,
    ) -> None:
        self._client = client
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self.fell_back = fell_back
        self._fallback_dir = fallback_dir
        self._ended = False
        self._journal = _Journal({}, [], {}, [], [])

    # ------------------------------------------------------------------ start

    @classmethod
    def start(
        cls,
        experiment: str,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        tags: Mapping[str, Any] | None = None,
        *,
        fallback_dir: str | Path | None = None,
    ) -> RunTracker:
        """Start a run in `experiment` (created if needed).

        `tracking_uri`: explicit URI, else MLFLOW_TRACKING_URI, else the local store.
        `fallback_dir`: where the local store lives when the server is down (default:
        $CIMCODER_MLFLOW_DIR or the current directory).
        """
        uri = resolve_tracking_uri(tracking_uri)
        fb_dir = local_store_dir(fallback_dir)
        reason: str | None = None
        if _is_remote(uri):
            reason = probe_server(uri)
        if reason is None:
            try:
                return cls._start_at(uri, experiment, run_name, tags, fb_dir, fell_back=False)
            except TrackingError:
                raise
            except Exception as exc:  # an unreachable or failing server: keep training
                if not _is_remote(uri):
                    raise TrackingError(f"cannot start an MLflow run at {uri}: {exc}") from exc
                reason = f"{type(exc).__name__}: {exc}"
        local_uri = local_tracking_uri(fb_dir)
        tracker = cls._start_at(local_uri, experiment, run_name, tags, fb_dir, fell_back=True)
        tracker._warn_fallback(uri, reason)
        return tracker

    @classmethod
    def _start_at(
        cls,
        uri: str,
        experiment: str,
        run_name: str | None,
        tags: Mapping[str, Any] | None,
        fallback_dir: Path,
        *,
        fell_back: bool,
    ) -> RunTracker:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment_id = _get_or_create_experiment(client, uri, experiment)
        all_tags = {k: str(v) for k, v in (tags or {}).items()}
        if fell_back:
            all_tags["cimcoder.tracking_fallback"] = "true"
        run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
        tracker = cls(
            client,
            run.info.run_id,
            experiment_id,
            uri,
            experiment,
            run_name,
            fallback_dir,
            fell_back=fell_back,
        )
        tracker._journal.tags.update(all_tags)
        logger.info(
            "MLflow run %s in experiment %r at %s", run.info.run_id, experiment, redact_uri(uri)
        )
        return tracker

    def _warn_fallback(self, server_uri: str, reason: str | None) -> None:
        logger.warning(
            "MLflow tracking server %s is unreachable (%s); the run %s is kept in the local "
            "store %s; %s",
            redact_uri(server_uri),
            reason,
            self.run_id,
            self.tracking_uri,
            FALLBACK_HINT.format(uri=self.tracking_uri, run_dir="<the run folder>"),
        )

    @property
    def client(self) -> MlflowClient:
        return self._client

    # ------------------------------------------------------------------ logging

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one client call; on a remote failure, move the run to the local store."""
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if self.fell_back or not _is_remote(self.tracking_uri):
                raise TrackingError(
                    f"MLflow {what} failed at {redact_uri(self.tracking_uri)}: {exc}"
                ) from exc
            self._switch_to_local(f"{what} failed: {type(exc).__name__}: {exc}")
            return None

    def _switch_to_local(self, reason: str) -> None:
        server_uri = self.tracking_uri
        old = self._journal
        replacement = RunTracker._start_at(
            local_tracking_uri(self._fallback_dir),
            self.experiment,
            self.run_name,
            old.tags,
            self._fallback_dir,
            fell_back=True,
        )
        self._client = replacement._client
        self.run_id = replacement.run_id
        self.experiment_id = replacement.experiment_id
        self.tracking_uri = replacement.tracking_uri
        self.fell_back = True
        self._journal = _Journal({}, [], dict(replacement._journal.tags), [], [])
        # Replay what the server had received so nothing logged so far is lost.
        if old.params:
            self.log_params(old.params)
        self._log_metric_rows(old.metrics)
        for path, artifact_path in old.artifacts:
            if Path(path).exists():
                self.log_artifacts(path, artifact_path)
        for data, name in old.dicts:
            self.log_dict(data, name)
        self._warn_fallback(server_uri, reason)

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log (nested) parameters as dotted keys; values are truncated if long."""
        from mlflow.entities import Param

        flat = flatten_params(params)
        # MLflow params are write-once: a changed value would fail the whole batch.
        changed = sorted(
            k for k, v in flat.items() if k in self._journal.params and self._journal.params[k] != v
        )
        if changed:
            logger.warning("params already logged with another value, first kept: %s", changed[:10])
        new = {k: v for k, v in flat.items() if k not in self._journal.params}
        if not new:
            return
        self._journal.params.update(new)
        items = [Param(k, v) for k, v in new.items()]
        for i in range(0, len(items), 100):
            self._call("log_params", self._client.log_batch, self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log (nested) numeric metrics, at `step` (epoch or optimizer step)."""
        now = int(time.time() * 1000)
        rows = [(k, v, now, int(step or 0)) for k, v in flatten_metrics(metrics).items()]
        self._journal.metrics.extend(rows)
        self._log_metric_rows(rows)

    def _log_metric_rows(self, rows: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric

        items = [
            Metric(k, v if math.isfinite(v) else float("nan"), ts, st) for k, v, ts, st in rows
        ]
        for i in range(0, len(items), 500):
            self._call(
                "log_metrics", self._client.log_batch, self.run_id, metrics=items[i : i + 500]
            )

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        str_tags = {k: str(v) for k, v in tags.items()}
        self._journal.tags.update(str_tags)
        items = [RunTag(k, v) for k, v in str_tags.items()]
        if items:
            self._call("set_tags", self._client.log_batch, self.run_id, tags=items)

    def log_artifacts(self, local_dir: str | Path, artifact_path: str | None = None) -> None:
        """Upload a folder (or a single file) under `artifact_path`."""
        path = Path(local_dir)
        if not path.exists():
            raise TrackingError(f"cannot log artefacts: {path} does not exist")
        self._journal.artifacts.append((str(path), artifact_path))
        if path.is_dir():
            self._call(
                "log_artifacts", self._client.log_artifacts, self.run_id, str(path), artifact_path
            )
        else:
            self._call(
                "log_artifact", self._client.log_artifact, self.run_id, str(path), artifact_path
            )

    def log_artifact(self, local_file: str | Path, artifact_path: str | None = None) -> None:
        self.log_artifacts(local_file, artifact_path)

    def log_dict(self, data: dict, artifact_file: str) -> None:
        """Write `data` as JSON or YAML (by extension) into the run's artefacts."""
        self._journal.dicts.append((data, artifact_file))
        self._call("log_dict", self._client.log_dict, self.run_id, data, artifact_file)

    def log_run_folder_summary(self, run_dir: str | Path) -> None:
        """Log the run folder's small files (config, labels, metrics, policy, reports)."""
        root = Path(run_dir)
        files = {root / name for name in RUN_SUMMARY_FILES}
        for pattern in RUN_REPORT_GLOBS:
            files.update(root.glob(pattern))
        for f in sorted(files):
            if f.is_file():
                self.log_artifacts(f, "run")
            elif f.is_dir() and f.name not in (CHECKPOINT_DIR, "encoder"):
                self.log_artifacts(f, f"run/{f.name}")

    def end(self, status: Literal["FINISHED", "FAILED", "KILLED"] = "FINISHED") -> None:
        """Mark the run terminated (idempotent)."""
        if self._ended:
            return
        self._ended = True
        self._call("end", self._client.set_terminated, self.run_id, status)
        if self.fell_back:
            logger.warning(
                "MLflow run %s was kept in the local store %s; %s",
                self.run_id,
                self.tracking_uri,
                FALLBACK_HINT.format(uri=self.tracking_uri, run_dir="<the run folder>"),
            )

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")


def redact_uri(uri: str) -> str:
    """Hide credentials in a URI before logging it."""
    if "://" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    # The user part ends at the last "@" before the path: a password may hold "@" itself.
    netloc, sep, path = rest.partition("/")
    if "@" not in netloc:
        return uri
    return f"{scheme}://***@{netloc.rsplit('@', 1)[1]}{sep}{path}"


def _get_or_create_experiment(client: MlflowClient, uri: str, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return str(exp.experiment_id)
    artifact_location = None
    db_dir = _uses_local_sqlite(uri)
    if db_dir is not None:
        # Keep artefacts beside the database, not in ./mlruns of whatever the cwd is.
        artifact_location = (db_dir / ARTIFACTS_DIR / _slug(name)).as_uri()
    try:
        return str(client.create_experiment(name, artifact_location=artifact_location))
    except Exception:
        # Another process created it between our look-up and create: use theirs.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return str(exp.experiment_id)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "default"


# ====================================================================== registration


def read_run_metric(run_dir: str | Path, metric: str = "map") -> float | None:
    """`metric` from the run folder's metrics.json (flat, or nested: first key ending in it)."""
    path = RunFolder(Path(run_dir)).metrics
    if not path.is_file():
        return None
    try:
        data = read_json(path)
    except json.JSONDecodeError:
        logger.warning("%s is not valid JSON; no %s to compare", path, metric)
        return None
    if not isinstance(data, Mapping):
        return None
    flat = flatten_metrics(data)
    if metric in flat:
        return flat[metric]
    for key in sorted(flat, key=len):
        if key.endswith("." + metric):
            return flat[key]
    # The trainer writes its early-stopping metric as `dev_metric`, named by
    # `validation_metric` (the pipeline validates on mean_average_precision).
    named = str(data.get("validation_metric", ""))
    if "dev_metric" in flat and named in _METRIC_ALIASES.get(metric, {metric}):
        return flat["dev_metric"]
    return None


_METRIC_ALIASES = {"map": {"map", "mean_average_precision"}, "micro_f1": {"micro_f1"}}


@dataclass
class RegisteredModel:
    """What `register_run_model` (`cimcoder.inference.mlflow_model`) did."""

    name: str
    version: str
    model_uri: str  # models:/<name>/<version>
    metric: float | None
    promoted: bool
    alias: str


@contextmanager
def fluent_uri(uri: str) -> Iterator[None]:
    """Point MLflow's fluent API at `uri` for the duration (model logging needs it).

    `mlflow.set_tracking_uri` also writes MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI into the
    environment; both module state and environment are restored afterwards.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved_tracking = getattr(tracking_utils, "_tracking_uri", None)
    saved_registry = getattr(registry_utils, "_registry_uri", None)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_tracking)  # type: ignore[arg-type]  # None unsets it
        registry_utils._registry_uri = saved_registry
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def set_alias(
    registered: RegisteredModel, alias: str = "champion", tracking_uri: str | None = None
) -> RegisteredModel:
    """Point `alias` at a version already registered (in the resolved tracking store)."""
    import dataclasses

    from mlflow import MlflowClient

    uri = resolve_tracking_uri(tracking_uri)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_registered_model_alias(registered.name, alias, registered.version)
    logger.info("@%s -> %s version %s", alias, registered.name, registered.version)
    return dataclasses.replace(registered, promoted=True, alias=alias)


def load_run_dir_from_uri(
    uri: str,
    dst: str | Path | None = None,
    tracking_uri: str | None = None,
) -> Path:
    """Download an MLflow model (`models:/cimcoder@champion`, `runs:/...`) -> local run folder.

    `dst`: where to download (default: a new temporary folder). `tracking_uri`: registry to
    ask (default: MLFLOW_TRACKING_URI or the local store).
    """
    import mlflow.artifacts
    import yaml
    from mlflow.exceptions import MlflowException

    registry = resolve_tracking_uri(tracking_uri)
    target = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="cimcoder-model-"))
    target.mkdir(parents=True, exist_ok=True)
    try:
        # MLflow resolves `models:/` names through the *global* registry URI whatever
        # `registry_uri` says (mlflow 3.17, ModelsArtifactRepository._get_model_uri_infos).
        with fluent_uri(registry):
            local = Path(
                mlflow.artifacts.download_artifacts(
                    artifact_uri=uri,
                    dst_path=str(target),
                    tracking_uri=registry,
                    registry_uri=registry,
                )
            )
    except MlflowException as exc:
        raise TrackingError(f"cannot load model {uri} from {redact_uri(registry)}: {exc.message}") from None
    except OSError as exc:
        raise TrackingError(f"cannot download model {uri} from {redact_uri(registry)}: {exc}") from None
    mlmodel = local / "MLmodel"
    if not mlmodel.is_file():
        raise TrackingError(f"{uri} is not an MLflow model (no MLmodel file)")
    spec = yaml.safe_load(mlmodel.read_text(encoding="utf-8")) or {}
    artifacts = ((spec.get("flavors") or {}).get("python_function") or {}).get("artifacts") or {}
    run_entry = artifacts.get("run")
    if not run_entry or "path" not in run_entry:
        raise TrackingError(f"{uri} is not a cimcoder model (no 'run' artefact)")
    run_dir = local / run_entry["path"]
    if not RunFolder(run_dir).is_run():
        raise TrackingError(f"{uri}: the model's run folder lacks {CONFIG_FILE}")
    return run_dir
