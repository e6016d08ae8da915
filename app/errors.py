"""Domain errors: what a service refuses, in the terms of what it was given.

A service names the offending field as the request names it (``element_id``,
``target.reference_id``, ``baseline_sessions``), never where it sat in an HTTP request: the one
mapping in :mod:`app.api_errors` adds the location (path, query or body) and the status.
"""

from __future__ import annotations


class DomainError(Exception):
    """A refused operation: ``field`` as a dotted name, ``message`` what is wrong."""

    kind = "value_error"

    def __init__(self, field: str, message: str, kind: str | None = None) -> None:
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message
        if kind is not None:
            self.kind = kind


class NotFound(DomainError):
    """The request names something that is not stored."""

    kind = "not_found"


class Conflict(DomainError):
    """The request is well-formed, but what is stored falls short of it (nothing to compare
    with, too few elements to calibrate on)."""

    kind = "conflict"


class Unavailable(DomainError):
    """It exists but cannot be served now (a collection whose model this process could not
    load)."""

    kind = "unavailable"


class Invalid(DomainError):
    """The value itself is wrong (an unknown keypoint, a ``k`` over the limit)."""
