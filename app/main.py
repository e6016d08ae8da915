"""``create_app(settings)``: the FastAPI application: the composition root's services
(app/container.py) behind the routers, the body limit, request context, CORS, the error
mapping (app/api_errors.py), the OpenAPI document and the explorer page."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from app import api_errors, container, explorer, openapi
from app.bodies import BodyLimitMiddleware
from app.observability import SERVED_BY, Metrics, RequestContextMiddleware
from app.openapi import COLLECTION_PREFIX
from app.responses import FastJSONResponse
from app.routers import (
    admin,
    alignment,
    collections,
    drift,
    elements,
    inference,
    ops,
    references,
    search,
    verification,
)
from app.schemas import error_responses
from app.settings import Settings

DESCRIPTION = """Embeddings, keypoints and similarity search for hierarchical signals
(element → session → signal), in collections: each has its own model and references
(`/collections`); every data route also lives under `/collections/{collection}/…`, and the
routes without that prefix serve the collection `default`. Signals are lists of numbers (one
channel) or lists of C lists (channels first). `/embed`, `/keypoints`, `/search`, `/align`,
`/verify` and `/drift` also take a `.npy` body (`Content-Type: application/x-npy`, shape (B, L)
or (B, C, L)) with the other fields as query parameters. Every other body is read as JSON,
whatever its content type.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Loads the model and connects to the database now (so a bad model or an unreachable
    database fails fast); the lifespan re-embeds what another model stored (under the store's
    start-up lock), loads or rebuilds the index, follows the change log, and saves the index on
    shutdown."""
    settings = settings or Settings()
    metrics = Metrics()
    services = container.build(settings, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        await services.start()
        try:
            yield
        finally:
            await services.stop()

    app = FastAPI(
        title="Hierarchical signal service",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        default_response_class=FastJSONResponse,
    )
    app.state.services, app.state.metrics = services, metrics
    # Each data route twice: the collection default's, and every collection's. Starlette tries
    # routes in order, so each prefixed router follows its plain one: a request finds its route
    # about as soon either way (all prefixed after all plain cost /collections/x/embed ~22 us
    # more than /embed to match). The collection is looked up (its name checked) by the route's
    # service dependency: a dependency of its own for the prefix cost ~15 us a request
    # (BENCHMARKS.md "Collections"); app/openapi.py documents the path parameter.
    for router in (inference, search, references, elements, alignment, verification, drift):
        app.include_router(router.router)
        app.include_router(router.router, prefix=COLLECTION_PREFIX, responses=error_responses(404))
    app.include_router(collections.router)
    app.include_router(admin.router)
    app.include_router(ops.router)
    explorer.install(app)
    api_errors.install(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, served_by=SERVED_BY)
    default = services.default.embedding
    openapi.install(app, default.limits, settings, default.keypoint_names)
    return app


def create_app_from_environment() -> FastAPI:
    """The factory each server process calls when ``HSN_WORKERS`` > 1 (settings from HSN_*);
    the process dies with uvicorn's supervisor, however that ends."""
    from app.lifetime import die_with_parent
    from app.observability import configure_logging

    die_with_parent()
    settings = Settings()
    configure_logging(settings.log_level)
    return create_app(settings)
