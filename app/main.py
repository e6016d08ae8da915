"""``create_app(settings)``: the FastAPI application, wired from settings."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app import explorer, openapi
from app.database import StoreUnavailable, open_database
from app.errors import InputError, error_body, input_error_handler, store_unavailable_handler
from app.observability import Metrics, RequestContextMiddleware
from app.responses import FastJSONResponse
from app.routers import applications, elements, inference, ops, references
from app.service import SERVED_BY, SignalService
from app.settings import Settings

DESCRIPTION = """Embeddings, keypoints and similarity search for hierarchical signals
(element → session → signal). Signals are lists of numbers (one channel) or lists of C lists
(channels first). `/embed`, `/keypoints` and `/search` also take a `.npy` body
(`Content-Type: application/x-npy`, shape (B, L) or (B, C, L)) with options as query parameters.
"""


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


async def _validation_error_handler(_, exc: RequestValidationError) -> FastJSONResponse:
    """FastAPI's 422 shape, without echoing the (possibly huge) input back."""
    errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
    return FastJSONResponse({"detail": errors}, status_code=422)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Loads the model and connects to the database now (so a bad model or an unreachable
    database fails fast); the lifespan migrates and re-embeds once (under the store's start-up
    lock), loads or rebuilds the index, follows the change log, and saves the index on shutdown."""
    settings = settings or Settings()
    metrics = Metrics()
    url = settings.database_url.get_secret_value() if settings.database_url else None
    database = open_database(url, settings.data_dir, settings.database_connect_timeout_s)
    try:
        service = SignalService(settings, metrics, database)
    except BaseException:
        database.close()
        raise

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = FastAPI(
        title="Hierarchical signal service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=FastJSONResponse,
    )
    app.state.settings, app.state.metrics, app.state.service = settings, metrics, service
    app.include_router(inference.router)
    app.include_router(references.router)
    app.include_router(applications.router)
    app.include_router(elements.router)
    app.include_router(ops.router)
    explorer.install(app)
    app.add_exception_handler(InputError, input_error_handler)
    app.add_exception_handler(StoreUnavailable, store_unavailable_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, served_by=SERVED_BY)
    openapi.install(app, service.runtime.limits, settings, service.runtime.keypoint_names)
    return app


def create_app_from_environment() -> FastAPI:
    """The factory each server process calls when ``HSN_WORKERS`` > 1 (settings from HSN_*)."""
    from app.observability import configure_logging

    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings)
