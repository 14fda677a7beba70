"""Review page sessions and login throttling, kept in the review database.

A session is a random id (`secrets.token_urlsafe`): the browser holds it in the signed cookie
(`cimcoder.serving.auth`), the database its SHA-256 with the principal, the expiry and, once
logged out, the revocation. Replicas on one database therefore share sessions, and a cookie
replayed after logout or past its expiry opens nothing.

Failed logins are rows of `login_failures`, so that replicas share the count too: after
`Throttle.max_failures` failures within `Throttle.window_s` for one name, or from one client
address, logging in is refused (even with the right key) until enough of them have left the
window. A successful login clears its principal's failures, not its address's.
"""

from __future__ import annotations

import datetime
import hashlib
import math
import secrets
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cimcoder.serving.review.store import LoginFailure, LoginSession, ReviewStore, utcnow

_CLIENT_CHARS = 64  # the column's width; an IPv6 address with a zone id fits


@dataclass(frozen=True)
class Throttle:
    """How many failed logins (per name, per client address) within how long a window."""

    max_failures: int
    window_s: float

    @property
    def window(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=self.window_s)


def _hashed(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("ascii")).hexdigest()


# -- sessions -----------------------------------------------------------------------------


def open_session(db: Session, principal: str, lifetime_s: int) -> str:
    """Start a session for `principal`; return its id (for the cookie only: it is not stored)."""
    now = utcnow()
    # Expired sessions open nothing any more: drop them as new ones come.
    db.execute(delete(LoginSession).where(LoginSession.expires_at <= now))
    session_id = secrets.token_urlsafe(32)
    db.add(
        LoginSession(
            id_hash=_hashed(session_id),
            principal=principal,
            created_at=now,
            expires_at=now + datetime.timedelta(seconds=lifetime_s),
        )
    )
    return session_id


def principal_of(store: ReviewStore, session_id: str) -> str | None:
    """The principal of a live session (neither revoked nor expired), or None."""
    with store.session() as db:
        row = db.get(LoginSession, _hashed(session_id))
        if row is None or row.revoked_at is not None or row.expires_at <= utcnow():
            return None
        return row.principal


def revoke_session(db: Session, session_id: str) -> str | None:
    """Log out: revoke the session; return its principal, or None if it was not live."""
    row = db.get(LoginSession, _hashed(session_id), with_for_update=True)
    now = utcnow()
    if row is None or row.revoked_at is not None or row.expires_at <= now:
        return None
    row.revoked_at = now
    return row.principal


# -- throttling ---------------------------------------------------------------------------


def login_wait_s(db: Session, principal: str, client: str | None, throttle: Throttle) -> int:
    """Seconds before `principal` may try to log in from `client` again; 0 when it may now."""
    now = utcnow()
    since = now - throttle.window
    frees_at: list[datetime.datetime] = []
    counted = [LoginFailure.principal == principal]
    if _client(client) is not None:
        counted.append(LoginFailure.client == _client(client))
    for same_source in counted:
        latest = db.scalars(
            select(LoginFailure.at)
            .where(same_source, LoginFailure.at > since)
            .order_by(LoginFailure.at.desc())
            .limit(throttle.max_failures)
        ).all()
        if len(latest) >= throttle.max_failures:
            # Allowed again once the oldest of the last max_failures leaves the window.
            frees_at.append(latest[-1] + throttle.window)
    if not frees_at:
        return 0
    return max(1, math.ceil((max(frees_at) - now).total_seconds()))


def record_failure(db: Session, principal: str, client: str | None, throttle: Throttle) -> None:
    """Count one failed login of `principal` from `client` (older ones past the window go)."""
    now = utcnow()
    db.execute(delete(LoginFailure).where(LoginFailure.at <= now - throttle.window))
    db.add(LoginFailure(principal=principal, client=_client(client), at=now))


def clear_failures(db: Session, principal: str) -> None:
    """A successful login: the principal's failed attempts no longer count."""
    db.execute(delete(LoginFailure).where(LoginFailure.principal == principal))


def _client(client: str | None) -> str | None:
    return client[:_CLIENT_CHARS] if client else None
