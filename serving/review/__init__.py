"""DIM review workflow: review queue and pages, feedback store, audit trail, monitoring.

`create_app` includes `router` and calls `init_app(app, settings)`; other code uses
`enqueue` (put a scored stay in the queue), `save_review`, `ReviewStore` / `open_store`.
Heavy parts (SQLAlchemy engine, Alembic, templates) are only touched when used.
"""

from cimcoder.serving.review.routes import init_app, router, store_for_app
from cimcoder.serving.review.store import (
    ReviewConflict,
    ReviewError,
    ReviewStore,
    StayStatus,
    UnknownStay,
    open_store,
)
from cimcoder.serving.review.workflow import InvalidReview, enqueue, enqueue_many, save_review

__all__ = [
    "InvalidReview",
    "ReviewConflict",
    "ReviewError",
    "ReviewStore",
    "StayStatus",
    "UnknownStay",
    "enqueue",
    "enqueue_many",
    "init_app",
    "open_store",
    "router",
    "save_review",
    "store_for_app",
]
