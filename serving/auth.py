"""Authentication of the cimcoder service.

Three ways to present a credential, all checked in constant time against
`Settings.api_keys`:

- `X-API-Key: <key>` header (hospital systems),
- `Authorization: Bearer <key>` header,
- the session cookie set by the review page's login form (DIM coders): the login form
  checks a principal name and its key with `authenticate`, opens a session in the review
  database (`cimcoder.serving.review.sessions`), then calls `set_session_cookie`. The cookie
  holds only the session's random id, signed with `Settings.session_secret` (itsdangerous),
  `HttpOnly`, `SameSite=Strict`, and `Secure` off loopback (`Settings.session_cookie_secure`).
  The review module looks sessions up (`app.state.find_session`), so logging out revokes one
  on every replica at once and an expired one is refused.

Authentication is on unless `CIMCODER_AUTH_DISABLED=true`; the principal is then "local",
with every role (one developer on loopback).

Authorisation: each key name has one role (`CIMCODER_ROLES="name=role,..."`, see
`Settings.role_of`): `client` (coding API), `coder` (+ review queue, stays, saves, code
search), `dim` (+ review settings, exports, audit, monitoring). A valid key without the role
gets 403.

Use the `Annotated` aliases in route signatures:

    @router.get("/things")
    def things(user: CurrentUser) -> ...:      # key, bearer or session cookie
    def code(client: ApiClient) -> ...:        # key or bearer only (machine API)
    def queue(user: CoderUser) -> ...:         # any credential, role coder or dim
    def audit(user: DimUser) -> ...:           # any credential, role dim
"""

from __future__ import annotations

import hmac
import logging
import re
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Response, status
from itsdangerous import BadSignature, Signer

from cimcoder.serving.settings import ROLES, Role, Settings

logger = logging.getLogger(__name__)

SESSION_COOKIE = "cimcoder_session"
LOCAL_PRINCIPAL = "local"
# Not the salt of the cookies that held a principal's name: those are refused, not misread.
_SESSION_SALT = "cimcoder.review.session-id"
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{32,128}")
_AUTH_HELP = (
    "authentication required: send 'X-API-Key: <key>' or 'Authorization: Bearer <key>' "
    "(keys are configured with CIMCODER_API_KEYS)"
)


def get_settings(request: Request) -> Settings:
    """The settings the running app was created with."""
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def principal_for_key(settings: Settings, presented: str) -> str | None:
    """The principal whose key is `presented`, or None. Every key is compared (constant time)."""
    found: str | None = None
    candidate = presented.encode("utf-8", "surrogateescape")
    for entry in settings.api_key_entries():
        if hmac.compare_digest(candidate, entry.key.encode("utf-8")) and found is None:
            found = entry.principal
    return found


def authenticate(settings: Settings, principal: str, key: str) -> str | None:
    """Check a login form's (principal, key) pair; return the principal, or None."""
    owner = principal_for_key(settings, key)
    if owner is None:
        return None
    if not hmac.compare_digest(owner.encode("utf-8"), principal.strip().encode("utf-8")):
        return None
    return owner


SessionLookup = Callable[[str], str | None]
"""A session id -> the principal of the live session, or None (`app.state.find_session`)."""


def _signer(settings: Settings) -> Signer:
    return Signer(settings.resolved_session_secret(), salt=_SESSION_SALT)


def set_session_cookie(response: Response, settings: Settings, session_id: str) -> None:
    """Log in: attach the cookie of the session `session_id` (opened in the review database)."""
    response.set_cookie(
        SESSION_COOKIE,
        _signer(settings).sign(session_id).decode("ascii"),
        max_age=settings.session_max_age_s,
        httponly=True,
        samesite="strict",
        secure=settings.session_cookie_secure(),
        path="/",
    )


def clear_session_cookie(response: Response, settings: Settings) -> None:
    """Log out: expire the session cookie (the session itself is revoked in the database)."""
    response.delete_cookie(
        SESSION_COOKIE,
        path="/",
        httponly=True,
        samesite="strict",
        secure=settings.session_cookie_secure(),
    )


def session_id_of(request: Request) -> str | None:
    """The session id in the request's cookie when its signature holds, else None."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        session_id = _signer(get_settings(request)).unsign(token).decode("ascii")
    except (BadSignature, UnicodeDecodeError):
        logger.info("rejected a session cookie with a bad signature")
        return None
    return session_id if _SESSION_ID.fullmatch(session_id) else None


def principal_from_cookie(request: Request) -> str | None:
    """The principal of the request's live session whose key is still configured, or None."""
    session_id = session_id_of(request)
    find_session: SessionLookup | None = getattr(request.app.state, "find_session", None)
    if session_id is None or find_session is None:
        return None
    principal = find_session(session_id)
    # A principal whose key was removed from the configuration loses its sessions too.
    names = {entry.principal for entry in get_settings(request).api_key_entries()}
    return principal if principal in names else None


def _header_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _unauthorized(detail: str) -> HTTPException:
    return HTTPException(
        status_code=status.HTTP_401_UNAUTHORIZED,
        detail=detail,
        headers={"WWW-Authenticate": 'Bearer realm="cimcoder"'},
    )


def optional_user(request: Request) -> str | None:
    """The principal of the request (key, bearer or cookie), or None when anonymous.

    For pages that redirect to a login form instead of answering 401. A wrong key still
    counts as anonymous here.
    """
    settings = get_settings(request)
    if settings.auth_disabled:
        return LOCAL_PRINCIPAL
    key = _header_key(request)
    if key is not None:
        return principal_for_key(settings, key)
    return principal_from_cookie(request)


def require_api_client(request: Request) -> str:
    """Dependency: the principal of an `X-API-Key` / bearer request; 401 otherwise."""
    settings = get_settings(request)
    if settings.auth_disabled:
        return LOCAL_PRINCIPAL
    key = _header_key(request)
    if key is None:
        raise _unauthorized(_AUTH_HELP)
    principal = principal_for_key(settings, key)
    if principal is None:
        raise _unauthorized("invalid API key")
    return principal


def require_user(request: Request) -> str:
    """Dependency: the principal from a key, a bearer token or the session cookie; 401 otherwise."""
    settings = get_settings(request)
    if settings.auth_disabled:
        return LOCAL_PRINCIPAL
    key = _header_key(request)
    if key is not None:
        principal = principal_for_key(settings, key)
        if principal is None:
            raise _unauthorized("invalid API key")
        return principal
    if request.cookies.get(SESSION_COOKIE):
        principal = principal_from_cookie(request)
        if principal is None:
            raise _unauthorized("session expired or invalid: log in again")
        return principal
    raise _unauthorized(_AUTH_HELP)


def role_allows(settings: Settings, principal: str, needed: Role) -> bool:
    """Whether `principal`'s role is `needed` or above (client < coder < dim)."""
    if settings.auth_disabled:
        return True
    return ROLES.index(settings.role_of(principal)) >= ROLES.index(needed)


def forbidden(settings: Settings, principal: str, needed: Role) -> HTTPException:
    """The 403 of a valid credential without the role (logged with the name, never the key)."""
    role = settings.role_of(principal)
    logger.info("refused %r (role %s) a %s-only resource", principal, role, needed)
    return HTTPException(
        status_code=status.HTTP_403_FORBIDDEN,
        detail=f"'{principal}' has the role '{role}'; this needs the role '{needed}'"
        + (" or 'dim'" if needed == "coder" else "")
        + " (CIMCODER_ROLES)",
    )


def require_coder(request: Request) -> str:
    """Dependency: an authenticated principal whose role is coder or dim; 401 / 403 otherwise."""
    principal = require_user(request)
    settings = get_settings(request)
    if not role_allows(settings, principal, "coder"):
        raise forbidden(settings, principal, "coder")
    return principal


def require_dim(request: Request) -> str:
    """Dependency: an authenticated principal whose role is dim; 401 / 403 otherwise."""
    principal = require_user(request)
    settings = get_settings(request)
    if not role_allows(settings, principal, "dim"):
        raise forbidden(settings, principal, "dim")
    return principal


ApiClient = Annotated[str, Depends(require_api_client)]
CurrentUser = Annotated[str, Depends(require_user)]
OptionalUser = Annotated[str | None, Depends(optional_user)]
CoderUser = Annotated[str, Depends(require_coder)]
DimUser = Annotated[str, Depends(require_dim)]
