"""DIM review workflow: review queue and pages, feedback store, audit trail, monitoring.

`create_app` includes `router` and calls `init_app(app, settings)`; other code uses
`enqueue` (put a scored stay in the queue), `save_review`, `ReviewStore` / `open_store`.
Heavy parts (SQLAlchemy engine, Alembic, templates) are only touched when used.

Names are resolved lazily, so `import cimcoder.serving.review.cli` (which `cimcoder`
registers for every command) loads neither FastAPI nor SQLAlchemy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cimcoder.lazy import lazy_exports

if TYPE_CHECKING:  # real types for mypy and editors; at run time `__getattr__` imports
    from cimcoder.serving.review.routes import (
        init_app as init_app,
        router as router,
        store_for_app as store_for_app,
    )
    from cimcoder.serving.review.store import (
        ReviewConflict as ReviewConflict,
        ReviewError as ReviewError,
        ReviewStore as ReviewStore,
        StayStatus as StayStatus,
        UnknownStay as UnknownStay,
        open_store as open_store,
    )
    from cimcoder.serving.review.workflow import (
        InvalidReview as InvalidReview,
        enqueue as enqueue,
        enqueue_many as enqueue_many,
        save_review as save_review,
    )

_EXPORTS = {
    "init_app": "cimcoder.serving.review.routes",
    "router": "cimcoder.serving.review.routes",
    "store_for_app": "cimcoder.serving.review.routes",
    "ReviewConflict": "cimcoder.serving.review.store",
    "ReviewError": "cimcoder.serving.review.store",
    "ReviewStore": "cimcoder.serving.review.store",
    "StayStatus": "cimcoder.serving.review.store",
    "UnknownStay": "cimcoder.serving.review.store",
    "open_store": "cimcoder.serving.review.store",
    "InvalidReview": "cimcoder.serving.review.workflow",
    "enqueue": "cimcoder.serving.review.workflow",
    "enqueue_many": "cimcoder.serving.review.workflow",
    "save_review": "cimcoder.serving.review.workflow",
}

__all__ = sorted(_EXPORTS)

__getattr__ = lazy_exports(__name__, _EXPORTS)
