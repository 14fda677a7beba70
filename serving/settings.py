"""Settings of the cimcoder service: one `BaseSettings`, read from `CIMCODER_*` variables.

Nothing is read at import time: build `Settings()` where the app is created. Secrets that
look like placeholders ("changeme", "secret", ...) are refused, so a copy-pasted example
config never reaches production.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import secrets
import threading
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from cimcoder.inference.schemas import Runtime

logger = logging.getLogger(__name__)
_RANDOM_SECRET_LOCK = threading.Lock()

DEFAULT_MODEL_URI = "models:/cimcoder@champion"
MIN_SECRET_LENGTH = 16

Role = Literal["client", "coder", "dim"]
"""What a key may do: client (coding API), coder (+ review), dim (+ settings, exports,
audit, monitoring). Each role includes the ones before it."""
ROLES: tuple[Role, ...] = ("client", "coder", "dim")

# Lower-cased values (or fragments) that only ever appear in examples and docs.
_PLACEHOLDERS = (
    "changeme",
    "change-me",
    "change_me",
    "secret",
    "password",
    "motdepasse",
    "example",
    "exemple",
    "placeholder",
    "your-key",
    "yourkey",
    "xxxx",
    "todo",
    "dummy",
)


def _is_placeholder(value: str) -> bool:
    low = value.strip().lower()
    if not low or (low.startswith("<") and low.endswith(">")):
        return True
    if len(set(low)) <= 2:  # "aaaaaaaaaaaaaaaa", "0000000000000000"
        return True
    return any(fragment in low for fragment in _PLACEHOLDERS)


def _default_state_dir() -> Path:
    return Path.home() / ".local" / "share" / "cimcoder"


class ApiKey:
    """One accepted API key and the principal (coder or client name) it authenticates."""

    __slots__ = ("key", "principal")

    def __init__(self, principal: str, key: str) -> None:
        self.principal = principal
        self.key = key

    def __repr__(self) -> str:  # never print the key itself
        return f"ApiKey(principal={self.principal!r}, key=***)"


class Settings(BaseSettings):
    """Configuration of `cimcoder serve` (env prefix `CIMCODER_`, or a `.env` file)."""

    model_config = SettingsConfigDict(
        env_prefix="CIMCODER_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="forbid",
    )

    model: str | None = Field(
        default=DEFAULT_MODEL_URI,
        description="Run folder or MLflow model URI loaded at start-up. None (or an empty "
        "variable) starts the service without a model: coding endpoints answer 503.",
    )
    runtime: Runtime = Field(
        default="torch",
        description="What scores the model: torch, onnx (ONNX Runtime fp32) or onnx-int8 (int8 "
        "weights). ONNX runtimes serve transformer (plm_icd) models only.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Accepted API keys, each 'principal:key' (the principal names the coder or "
        "client in the review log) or a bare key. Env: JSON list or comma-separated.",
    )
    auth_disabled: bool = Field(
        default=False,
        description="Explicit local opt-out of authentication (development on loopback only).",
    )
    state_dir: Path = Field(
        default_factory=_default_state_dir,
        description="Folder for local state (the SQLite review database by default).",
    )
    data_dir: Path | None = Field(
        default=None,
        description="Deprecated old name of state_dir (CIMCODER_DATA_DIR), read for one more "
        "release when state_dir is not set; use CIMCODER_STATE_DIR.",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the review store; default sqlite:///<state_dir>/review.db.",
    )
    max_request_bytes: int = Field(
        default=2_000_000, gt=0, description="Largest accepted request body, bytes (else 413)."
    )
    request_timeout_s: float = Field(
        default=30.0, gt=0, description="Longest wait for a coding answer, seconds (else 504)."
    )
    batch_max_size: int = Field(
        default=16, ge=1, description="Most reports scored in one micro-batch."
    )
    batch_max_wait_ms: float = Field(
        default=5.0, ge=0, description="How long the first request of a batch waits for others."
    )
    predict_batch_size: int = Field(
        default=8, ge=1, description="Batch size passed to the scorer (chunks per forward)."
    )
    max_batch_items: int = Field(
        default=64, ge=1, description="Most stays accepted in one POST /v1/code/batch."
    )
    max_queued_stays: int = Field(
        default=512,
        ge=1,
        description="Most stays waiting to be scored; past it (or past half request_timeout_s "
        "of expected wait) a request gets 429 with Retry-After instead of waiting. Keep it above "
        "max_concurrent_per_key x max_batch_items, so that one key cannot fill it alone.",
    )
    max_concurrent_per_key: int = Field(
        default=4,
        ge=1,
        description="Most coding requests one key has in flight at once (else 429), so that one "
        "client flooding batches cannot take the whole scorer.",
    )
    max_chars_per_request: int = Field(
        default=400_000,
        ge=1,
        description="Most report characters in one coding request, all its stays together "
        "(else 413).",
    )
    workers: int = Field(
        default=1,
        ge=1,
        description="Server processes (uvicorn workers) on one port, each with its own copy of "
        "the model, scoring queue and limits (max_queued_stays, max_concurrent_per_key and "
        "/metrics are per worker); the review database is shared.",
    )
    review_qc_sample_rate: float = Field(
        default=0.05,
        ge=0.0,
        le=1.0,
        description="Fraction of auto-coded stays sent to the DIM review queue for quality control.",
    )
    session_secret: SecretStr | None = Field(
        default=None,
        description="Key signing the review page's session cookie (>= 16 chars). When unset, a "
        "random one is drawn at start-up and sessions end with the process.",
    )
    session_max_age_s: int = Field(
        default=8 * 3600,
        gt=0,
        description="Lifetime of a review session, seconds (kept in the review database; "
        "logging out ends it at once).",
    )
    host: str = Field(
        default="127.0.0.1",
        description="Address `cimcoder serve` binds (its --host option overrides it). Off "
        "loopback, the session cookie is Secure unless cookie_secure says otherwise.",
    )
    cookie_secure: bool | None = Field(
        default=None,
        description="Mark the session cookie Secure (HTTPS only): 1 or 0; unset, Secure unless "
        "the service is bound to a loopback host (127.0.0.1, ::1, localhost).",
    )
    login_max_failures: int = Field(
        default=5,
        ge=1,
        description="Failed review logins, for one name or from one client address, after "
        "which logging in is refused (429 with Retry-After) until login_window_s has passed.",
    )
    login_window_s: float = Field(
        default=15 * 60.0,
        gt=0,
        description="Window over which failed review logins are counted, seconds.",
    )
    roles: Annotated[dict[str, Role], NoDecode] = Field(
        default_factory=dict,
        description="Role of each key name, 'name=role,...' (client, coder or dim). A name not "
        "listed is a client (coding API only). Env: comma-separated or a JSON object.",
    )
    metrics_public: bool = Field(
        default=True, description="Serve /metrics without authentication (for Prometheus)."
    )
    docs: bool = Field(
        default=False,
        description="Serve the OpenAPI pages /docs and /redoc (they load Swagger UI / ReDoc from a "
        "CDN); off by default. The schema itself is always at /openapi.json.",
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="Host headers accepted (else 400), comma-separated, e.g. "
        "'coder.chu.example,127.0.0.1'; '*' accepts any (the default).",
    )

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [h.strip() for h in value.split(",") if h.strip()] or ["*"]
        return value

    _random_secret: str | None = PrivateAttr(default=None)

    @field_validator("model", mode="before")
    @classmethod
    def _empty_model_is_none(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in {"", "none", "null"}:
            return None
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    return json.loads(text)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"CIMCODER_API_KEYS is not a valid JSON list: {exc}") from None
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_keys(cls, value: list[str]) -> list[str]:
        seen: set[str] = set()
        for i, entry in enumerate(value):
            key = entry.split(":", 1)[1] if ":" in entry else entry
            if len(key) < MIN_SECRET_LENGTH or _is_placeholder(key):
                raise ValueError(
                    f"API key #{i + 1} is too short or a placeholder: use >= {MIN_SECRET_LENGTH} "
                    "random characters (e.g. `python -c 'import secrets; "
                    "print(secrets.token_urlsafe(32))'`)"
                )
            if key in seen:
                raise ValueError(f"API key #{i + 1} is listed twice")
            seen.add(key)
        return value

    @field_validator("roles", mode="before")
    @classmethod
    def _split_roles(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("{"):
            try:
                return json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"CIMCODER_ROLES is not a valid JSON object: {exc}") from None
        out: dict[str, str] = {}
        for part in (p.strip() for p in text.split(",")):
            if not part:
                continue
            name, sep, role = part.partition("=")
            if not sep or not name.strip() or not role.strip():
                raise ValueError(f"CIMCODER_ROLES: {part!r} is not 'name=role'")
            out[name.strip()] = role.strip()
        return out

    @field_validator("session_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        if not raw.strip():
            return None
        if len(raw) < MIN_SECRET_LENGTH or _is_placeholder(raw):
            raise ValueError(
                f"CIMCODER_SESSION_SECRET is too short or a placeholder: use >= "
                f"{MIN_SECRET_LENGTH} random characters"
            )
        return value

    @model_validator(mode="after")
    def _deprecated_data_dir(self) -> Settings:
        if self.data_dir is None:
            return self
        message = (
            "CIMCODER_DATA_DIR (data_dir) is deprecated: set CIMCODER_STATE_DIR for the "
            "service's state folder (and CIMCODER_DATASETS_DIR for the data sets); "
            "CIMCODER_DATA_DIR will be ignored in the next release"
        )
        if "state_dir" in self.model_fields_set:
            message += f"; ignored here since the state folder is set ({self.state_dir})"
        else:
            self.state_dir = self.data_dir
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        logger.warning(message)
        return self

    @model_validator(mode="after")
    def _auth_is_configured(self) -> Settings:
        if not self.auth_disabled and not self.api_keys:
            logger.warning(
                "authentication is on but no API key is configured (CIMCODER_API_KEYS): every "
                "authenticated request will be refused"
            )
        return self

    @model_validator(mode="after")
    def _roles_name_keys(self) -> Settings:
        # A typo in a name would silently leave that coder a client: refuse it.
        names = {entry.principal for entry in self.api_key_entries()}
        unknown = sorted(set(self.roles) - names)
        if unknown and self.api_keys:
            raise ValueError(
                f"CIMCODER_ROLES names {unknown}, which no key of CIMCODER_API_KEYS has "
                f"(names: {sorted(names)})"
            )
        return self

    # -- derived values -------------------------------------------------------------------

    def role_of(self, principal: str) -> Role:
        """The principal's role (CIMCODER_ROLES); a name not listed is a client."""
        return self.roles.get(principal, "client")

    def api_key_entries(self) -> list[ApiKey]:
        """Accepted keys with their principals; a bare key is named 'client-<n>'."""
        out = []
        for i, entry in enumerate(self.api_keys):
            if ":" in entry:
                principal, key = entry.split(":", 1)
                principal = principal.strip() or f"client-{i + 1}"
            else:
                principal, key = f"client-{i + 1}", entry
            out.append(ApiKey(principal, key))
        return out

    def bound_to_loopback(self) -> bool:
        """Whether `host` is a loopback address (only this machine can connect)."""
        host = self.host.strip().strip("[]").lower()
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:  # a host name: reachable from elsewhere
            return False

    def session_cookie_secure(self) -> bool:
        """`cookie_secure`, or by default Secure unless bound to loopback (plain HTTP there)."""
        if self.cookie_secure is not None:
            return self.cookie_secure
        return not self.bound_to_loopback()

    def resolved_database_url(self) -> str:
        """`database_url`, or the SQLite file under `state_dir` (the store creates the folder,
        0700, when it opens the file)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.state_dir / 'review.db').resolve()}"

    def resolved_session_secret(self) -> str:
        """The configured session secret, or a random one drawn once per Settings object."""
        if self.session_secret is not None:
            return self.session_secret.get_secret_value()
        # Login runs in the thread pool: two first logins at once must not each draw a secret
        # (the cookie signed with the overwritten one would be refused at once).
        with _RANDOM_SECRET_LOCK:
            if self._random_secret is None:
                self._random_secret = secrets.token_urlsafe(32)
                logger.info("no CIMCODER_SESSION_SECRET: review sessions end when the process stops")
            return self._random_secret
