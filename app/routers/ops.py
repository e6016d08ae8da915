"""Liveness, readiness and Prometheus metrics: the process, every collection."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app.dependencies import StatusDep
from app.responses import respond
from app.schemas import Health, Ready

router = APIRouter(tags=["operations"])


@router.get("/health", response_model=Health, summary="The process is alive")
async def health():
    return respond(Health(status="ok"))


@router.get(
    "/ready",
    response_model=Ready,
    summary="Model and index are loaded",
    responses={503: {"model": Ready}},
)
async def ready(service: StatusDep):
    """200 once the model and the index are loaded, also while the database is unreachable
    (``degraded``: searches answer from memory, writes get 503)."""
    status = await service.status()
    return respond(status, status_code=200 if status.ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(service: StatusDep):
    """This process's metrics (with several workers on one port, one process answers a scrape)."""
    return Response(await service.metrics_text(), media_type=CONTENT_TYPE_LATEST)
