"""Client errors that name the field and the problem, in FastAPI's own error shape."""

from __future__ import annotations

from fastapi import Request

from app.responses import FastJSONResponse


class InputError(Exception):
    """A request the service refuses: ``status`` 4xx, ``field`` as a path like ``signals[3]``."""

    def __init__(self, field: str, message: str, status: int = 422, kind: str = "value_error"):
        super().__init__(f"{field}: {message}")
        self.field, self.message, self.status, self.kind = field, message, status, kind


def error_body(field: str, message: str, kind: str) -> dict:
    return {"detail": [{"loc": field.split("."), "msg": message, "type": kind}]}


async def input_error_handler(_: Request, exc: InputError) -> FastJSONResponse:
    return FastJSONResponse(error_body(exc.field, exc.message, exc.kind), status_code=exc.status)


async def store_unavailable_handler(_: Request, exc: Exception) -> FastJSONResponse:
    """The database could not be reached: nothing was committed; the client may retry."""
    return FastJSONResponse(
        error_body("database", f"unavailable, nothing was written: {exc}", "unavailable"),
        status_code=503,
        headers={"Retry-After": "1"},
    )
