"""Review store: reads never wait for a save, writes only in write sessions, and the SQLite
file is private (folder 0700, files 0600)."""

from __future__ import annotations

import logging
import os
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.exc import DBAPIError
from test_review_store import enqueue_cases, full_review

from cimcoder.serving.review import store as store_module, workflow
from cimcoder.serving.review.store import ReviewStay, ReviewStore

# A regression (reads taking the write lock again) fails after this, not after 30 s.
SHORT_BUSY_TIMEOUT_MS = 300


@pytest.fixture
def sqlite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ReviewStore]:
    monkeypatch.setattr(store_module, "SQLITE_BUSY_TIMEOUT_MS", SHORT_BUSY_TIMEOUT_MS)
    opened = ReviewStore(f"sqlite:///{tmp_path / 'review.db'}")
    enqueue_cases(opened, ["sej-ic-lecture-1", "sej-ic-lecture-2"])
    yield opened
    opened.close()


def test_queue_and_stay_reads_complete_while_a_save_holds_the_write_lock(
    sqlite_store: ReviewStore,
) -> None:
    # A coder's save is in flight: its transaction holds SQLite's write lock, uncommitted.
    with sqlite_store.session(write=True) as saving:
        saving.get(ReviewStay, "sej-ic-lecture-1").status = "validated"  # type: ignore[union-attr]
        saving.flush()
        # Meanwhile another coder opens the queue and a stay: both read a snapshot at once
        # (with BEGIN IMMEDIATE they would fail with "database is locked" after 0.3 s).
        with sqlite_store.session() as reading:
            queue = workflow.list_stays(reading, workflow.QueueFilter())
            view = workflow.stay_view(reading, "sej-ic-lecture-1")
    assert {row["id"] for row in queue["stays"]} == {"sej-ic-lecture-1", "sej-ic-lecture-2"}
    assert view["status"] == "to_code"  # the snapshot: the save was not committed yet
    with sqlite_store.session() as reading:
        assert reading.get(ReviewStay, "sej-ic-lecture-1").status == "validated"  # type: ignore[union-attr]


def test_writers_still_queue_for_the_lock_and_then_save(sqlite_store: ReviewStore) -> None:
    # Two saves in turn on one stay: the second, based on the same version, is a conflict.
    workflow.save_review(sqlite_store, "sej-ic-lecture-2", full_review(1), "dr-martin")
    with pytest.raises(workflow.ReviewConflict):
        workflow.save_review(sqlite_store, "sej-ic-lecture-2", full_review(1), "dr-durand")


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ReviewStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'review.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        url = server.create_database(f"review_reads_{uuid.uuid4().hex[:8]}")
    opened = ReviewStore(url)
    yield opened
    opened.close()


def test_a_write_in_a_session_not_declared_writing_fails(any_store: ReviewStore) -> None:
    # Loudly, on every run, rather than as a rare "database is locked" under load.
    with pytest.raises(DBAPIError, match=r"(?i)read.?only"), any_store.session() as session:
        workflow.set_qc_rate(session, 0.5, "dr-martin", 0.05)
    with any_store.session(write=True) as session:
        assert workflow.set_qc_rate(session, 0.5, "dr-martin", 0.05) == 0.5
    with any_store.session() as session:
        assert workflow.qc_rate(session, 0.05) == 0.5


# -- file permissions --------------------------------------------------------------------


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def loose_umask() -> Iterator[None]:
    # The usual default: without explicit modes, files would be 0644 and folders 0755.
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_a_new_database_is_private(tmp_path: Path, loose_umask: None) -> None:
    path = tmp_path / "etat" / "cimcoder" / "review.db"
    opened = ReviewStore(f"sqlite:///{path}")
    enqueue_cases(opened, ["sej-ic-perm-1"])
    try:
        assert _mode(path.parent) == 0o700
        files = [path, path.with_name("review.db-wal"), path.with_name("review.db-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: _mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        opened.close()


def test_an_existing_database_is_tightened_and_a_shared_folder_named(
    tmp_path: Path, loose_umask: None, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "partage"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    path = folder / "review.db"
    ReviewStore(f"sqlite:///{path}").close()
    path.chmod(0o644)  # a database created by an earlier version
    with caplog.at_level(logging.WARNING, logger="cimcoder.serving.review.store"):
        opened = ReviewStore(f"sqlite:///{path}")
    opened.close()
    assert _mode(path) == 0o600
    # A folder we did not create is not changed (an administrator may share it on purpose),
    # but the operator is told.
    assert _mode(folder) == 0o755
    assert any(str(folder) in r.getMessage() and "0700" in r.getMessage() for r in caplog.records)


def test_the_default_state_folder_is_created_private(
    tmp_path: Path, loose_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cimcoder.serving.settings import Settings

    state = tmp_path / "state"
    settings: Any = Settings(model=None, auth_disabled=True, state_dir=state, _env_file=None)
    opened = ReviewStore(settings.resolved_database_url())
    opened.close()
    assert _mode(state) == 0o700
    assert _mode(state / "review.db") == 0o600
