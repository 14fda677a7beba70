"""Errors a user can act on: the CLI prints their message and exits non-zero, no traceback."""


class CimcoderError(Exception):
    """Base class of every error whose message is meant for the user."""

    exit_code = 2
