"""Alembic migrations of the review store (applied by `store.upgrade`)."""
