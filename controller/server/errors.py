"""Errors the server answers with."""
from __future__ import annotations


class ApiError(Exception):
    """An error for the user: message plus optional (path, reason) list."""

    def __init__(self, message: str, errors: list | None = None):
        super().__init__(message)
        self.errors = errors or []
