"""The HTTP edge's one mapping of errors to FastAPI's error shape (``{"detail": [{"loc", "msg",
"type"}]}``), with the right status.

- :class:`InputError`: a request refused while it is read (a body that is not JSON, a signal of
  the wrong shape); raised by the reading layer (:mod:`app.bodies`, :mod:`app.signals`), which
  knows where the value sat, so it carries its full location.
- :class:`app.errors.DomainError`: a service's refusal, naming a field by its name alone; the
  location is added here: ``path`` when the route took it from its path, else ``body`` for a
  request that carries one (a .npy body's options come as query parameters, but they are the
  body's fields, as its JSON form has them) and ``query`` for one that does not.
- ``StoreUnavailable``: 503 with Retry-After (nothing was written).
- FastAPI's own validation errors: its shape, without echoing the input back.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError

from app.database import StoreUnavailable
from app.errors import Conflict, DomainError, NotFound, Unavailable
from app.responses import FastJSONResponse

STATUS = {NotFound: 404, Conflict: 409, Unavailable: 503}  # any other DomainError: 422
BODYLESS = ("GET", "HEAD", "DELETE")


class InputError(Exception):
    """A request refused as it is read: ``status`` 4xx, ``field`` a located path such as
    ``body.signals.3`` (or its parts, as pydantic gives them: ``("body", "references", 0)``)."""

    def __init__(
        self,
        field: str | tuple[str | int, ...],
        message: str,
        status: int = 422,
        kind: str = "value_error",
    ):
        name = field if isinstance(field, str) else ".".join(str(part) for part in field)
        super().__init__(f"{name}: {message}")
        self.field, self.message, self.status, self.kind = field, message, status, kind
        self.others: list[dict] = []  # further errors of the same request, in the same shape

    @staticmethod
    def of_validation(errors: list[dict], where: str) -> InputError:
        """Every error pydantic found, each located under ``where``."""
        first, *rest = details(errors, where)
        error = InputError(tuple(first["loc"]), first["msg"], kind=first["type"])
        error.others = rest
        return error


def details(errors: list[dict], *where: str) -> list[dict]:
    """pydantic's errors in the API's shape (located under ``where``), without the input each
    carries (a request's input is never echoed back: it may be huge)."""
    return [{"loc": [*where, *e["loc"]], "msg": e["msg"], "type": e["type"]} for e in errors]


def error_body(field: str | tuple[str | int, ...], message: str, kind: str) -> dict:
    loc = field.split(".") if isinstance(field, str) else list(field)
    return {"detail": [{"loc": loc, "msg": message, "type": kind}]}


def locate(request: Request, field: str) -> str:
    """``field`` with the part of the request it came from in front."""
    if field.split(".", 1)[0] in request.path_params:
        return f"path.{field}"
    return f"{'query' if request.method in BODYLESS else 'body'}.{field}"


async def _input_error(_: Request, exc: InputError) -> FastJSONResponse:
    body = error_body(exc.field, exc.message, exc.kind)
    body["detail"] += exc.others
    return FastJSONResponse(body, status_code=exc.status)


async def _domain_error(request: Request, exc: DomainError) -> FastJSONResponse:
    status = next((s for cls, s in STATUS.items() if isinstance(exc, cls)), 422)
    return FastJSONResponse(
        error_body(locate(request, exc.field), exc.message, exc.kind),
        status_code=status,
        headers={"Retry-After": "1"} if status == 503 else None,
    )


async def _store_unavailable(_: Request, exc: Exception) -> FastJSONResponse:
    """The database could not be reached: nothing was committed; the client may retry."""
    return FastJSONResponse(
        error_body("database", f"unavailable, nothing was written: {exc}", "unavailable"),
        status_code=503,
        headers={"Retry-After": "1"},
    )


async def _validation_error(_: Request, exc: RequestValidationError) -> FastJSONResponse:
    """FastAPI's 422 shape, without echoing the (possibly huge) input back."""
    return FastJSONResponse({"detail": details(exc.errors())}, status_code=422)


def install(app: FastAPI) -> None:
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(RequestValidationError, _validation_error)
