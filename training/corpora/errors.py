"""Errors of the corpora area."""

from __future__ import annotations

from cimcoder.errors import CimcoderError


class CorpusError(CimcoderError):
    """A data set that cannot be read: missing, malformed or of an unknown format."""
