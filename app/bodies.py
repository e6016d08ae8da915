"""One way in for a request body: JSON, .npy and NPZ, read by one layer with one rule for the
content type and one set of limits, each checked before anything is inflated.

The content type rule: ``application/x-npy`` is a .npy array; the NPZ route reads NPZ whatever
it is sent as; anything else is JSON (curl's default form type included: every JSON route
accepts what ``curl -d '{...}'`` sends). The body's size was already limited as it streamed in
(app/main.py, HSN_MAX_BODY_BYTES); a .npy array's size and an NPZ's arrays' inflated sizes are
read off their headers and checked before any array is made (HSN_MAX_NPZ_BYTES).

Errors are located here (``body.signals.3``, ``body.k``): a .npy request's options come as
query parameters but are the same fields as the JSON body's, so they are named ``body.`` too.
"""

from __future__ import annotations

from typing import TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api_errors import InputError, error_body
from app.responses import FastJSONResponse
from app.schemas import Options
from app.signals import (
    NPY_MEDIA_TYPE,
    SignalBatch,
    SignalLimits,
    batch_size,
    check_shape,
    parse_json_body,
    parse_npy_body,
    parse_signals,
)
from model.data_format import DataFormatError, MemberHeader, NpzTooLarge, SignalData, load_npz

Model = TypeVar("Model", bound=BaseModel)
OptionsModel = TypeVar("OptionsModel", bound=Options)

INLINE_PARSE_BYTES = 256 * 1024  # smaller bodies parse faster than a thread hand-off


def is_npy(request: Request) -> bool:
    content_type = request.headers.get("content-type", "")
    return content_type.split(";")[0].strip().lower() == NPY_MEDIA_TYPE


def validate(model: type[Model], values: dict) -> Model:
    """A request's fields validated by their model; every error named under ``body``."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise InputError.of_validation(exc.errors(), "body") from exc


async def read_signals(
    request: Request, limits: SignalLimits, options: type[OptionsModel]
) -> tuple[SignalBatch, OptionsModel]:
    """A JSON body ``{"signals": [...], ...}``, or a .npy body with the options in the query:
    the signals as a batch and the other fields validated by ``options`` (its ``from_query``
    reads them from query parameters). The batch's size is counted in the metrics, per
    route."""
    body = await request.body()
    npy = is_npy(request)
    if len(body) > INLINE_PARSE_BYTES:  # big bodies are parsed off the event loop
        batch, values = await run_in_threadpool(_parse_signals, body, npy, limits)
    else:
        batch, values = _parse_signals(body, npy, limits)
    if npy:
        values = options.from_query(dict(request.query_params))
    route = request.scope["route"].path
    request.app.state.metrics.request_signals.labels(route).observe(batch_size(batch))
    return batch, validate(options, values)


def _parse_signals(body: bytes, npy: bool, limits: SignalLimits) -> tuple[SignalBatch, dict]:
    if npy:
        return parse_npy_body(body, limits), {}
    payload = parse_json_body(body)
    if "signals" not in payload:
        raise InputError("body.signals", "field required", kind="missing")
    return parse_signals(payload["signals"], limits, field="body.signals"), payload


async def read_json(request: Request, model: type[Model]) -> Model:
    """A JSON body (whatever its content type says) validated by ``model``."""
    body = await request.body()
    if len(body) > INLINE_PARSE_BYTES:
        payload = await run_in_threadpool(parse_json_body, body)
    else:
        payload = parse_json_body(body)
    return validate(model, payload)


async def read_npz(request: Request, limits: SignalLimits, max_bytes: int) -> SignalData:
    """An NPZ body in the training format. Its members' declared shapes are read first: the
    signals' channels and length against the model's limits, and all arrays' inflated size
    against ``max_bytes``; only then is anything inflated (in bounded pieces)."""
    body = await request.body()
    return await run_in_threadpool(_load_npz, body, limits, max_bytes)


def _load_npz(body: bytes, limits: SignalLimits, max_bytes: int) -> SignalData:
    def fits_the_model(members: dict[str, MemberHeader]) -> None:
        signals = members.get("signals")
        if signals is not None and len(signals.shape) in (2, 3):
            channels = 1 if len(signals.shape) == 2 else signals.shape[1]
            check_shape(channels, signals.shape[-1], limits, "body.signals")

    try:
        return load_npz(body, source="body", max_bytes=max_bytes, check=fits_the_model)
    except NpzTooLarge as exc:
        raise InputError(
            f"body.{exc.member}", str(exc).removeprefix("body: "), status=413, kind="too_long"
        ) from exc
    except DataFormatError as exc:
        raise InputError("body", str(exc).removeprefix("body: ")) from exc


class _BodyTooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Refuses a body over ``max_bytes`` with 413 before reading it whole: at once when
    Content-Length says so, otherwise as soon as the streamed bytes pass the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise _BodyTooLarge
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _BodyTooLarge:
            if not started:
                await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        response = FastJSONResponse(
            error_body("body", f"over the limit of {self.max_bytes} bytes", "too_large"),
            status_code=413,
        )
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}
