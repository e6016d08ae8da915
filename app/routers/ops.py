"""Liveness, readiness, Prometheus metrics and the model manifest."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.dependencies import Service, require_read_key
from app.responses import FastJSONResponse, respond
from app.schemas import Health, Ready, error_responses

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health, summary="The process is alive")
async def health():
    return FastJSONResponse({"status": "ok"})


@router.get(
    "/ready",
    response_model=Ready,
    summary="Model and index are loaded",
    responses={503: {"model": Ready}},
)
async def ready(service: Service):
    """200 once the model and the index are loaded, also while the database is unreachable
    (``degraded``: searches answer from memory, writes get 503)."""
    status = await service.status()
    return respond(Ready, status, status_code=200 if status.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request, service: Service):
    """This process's metrics (with several workers on one port, one process answers a scrape)."""
    metrics, sync = request.app.state.metrics, service.sync.status()
    metrics.sync_lag_entries.set(sync.lag_entries)
    metrics.sync_lag_seconds.set(sync.lag_seconds)
    metrics.database_up.set(sync.database == "ok")
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/model",
    summary="The served model's manifest",
    dependencies=[Depends(require_read_key)],
    responses=error_responses(401),
)
async def model(service: Service):
    return FastJSONResponse(service.runtime.manifest)
