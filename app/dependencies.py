"""Injected pieces: the service, API-key checks, and request bodies read into signal batches."""

from __future__ import annotations

import hmac
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from app.errors import InputError
from app.schemas import SearchOptions
from app.service import SignalService
from app.settings import Settings
from app.signals import NPY_MEDIA_TYPE, SignalBatch, parse_json_body, parse_npy_body, parse_signals

Options = TypeVar("Options", bound=BaseModel)

INLINE_PARSE_BYTES = 256 * 1024  # smaller bodies parse faster than a thread hand-off

# The dependencies below are ``async def`` although they never await: FastAPI runs a plain
# ``def`` dependency in the thread pool, and those hand-offs were most of a small request's cost.


async def get_service(request: Request) -> SignalService:
    return request.app.state.service


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


Service = Annotated[SignalService, Depends(get_service)]
AppSettings = Annotated[Settings, Depends(get_settings)]


def _check_key(request: Request, settings: Settings) -> None:
    expected = settings.api_key.get_secret_value().encode()
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest takes the same time wherever the strings differ
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise InputError(
            "header.authorization",
            "missing or wrong API key (Bearer)",
            status=401,
            kind="unauthorized",
        )


async def require_write_key(request: Request, settings: AppSettings) -> None:
    if settings.api_key is not None:
        _check_key(request, settings)


async def require_read_key(request: Request, settings: AppSettings) -> None:
    if settings.api_key is not None and settings.auth_reads:
        _check_key(request, settings)


async def read_signals(request: Request, service: SignalService) -> tuple[SignalBatch, dict]:
    """A JSON body ``{"signals": [...], ...}`` or a .npy body with options in the query."""
    body = await request.body()
    is_npy = request.headers.get("content-type", "").split(";")[0].strip() == NPY_MEDIA_TYPE
    if len(body) > INLINE_PARSE_BYTES:  # big bodies are parsed off the event loop
        return await run_in_threadpool(_parse, body, is_npy, request.query_params, service)
    return _parse(body, is_npy, request.query_params, service)


def _parse(body: bytes, is_npy: bool, query, service: SignalService) -> tuple[SignalBatch, dict]:
    limits = service.runtime.limits
    if is_npy:
        return parse_npy_body(body, limits), dict(query)
    payload = parse_json_body(body)
    if "signals" not in payload:
        raise InputError("body.signals", "field required", kind="missing")
    return parse_signals(payload["signals"], limits, field="body.signals"), payload


def parse_options(model: type[Options], values: dict) -> Options:
    """A request's non-signal fields (from a JSON body, or the query with a .npy body)."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"])
        raise InputError(f"body.{field}", error["msg"], kind=error["type"]) from exc


def search_options(values: dict, settings: Settings) -> SearchOptions:
    options = parse_options(SearchOptions, values)
    if options.k > settings.max_k:
        raise InputError(
            "body.k", f"{options.k} is over the limit of {settings.max_k}", kind="less_than_equal"
        )
    return options
