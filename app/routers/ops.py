"""Liveness, readiness, Prometheus metrics and the model manifest."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from app.dependencies import Service, require_read_key
from app.responses import FastJSONResponse
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
    return FastJSONResponse(
        {
            "ready": service.ready,
            "references": len(service.index),
            "stored": await run_in_threadpool(service.store.count),
            "model_version": service.runtime.version,
            "engine": service.runtime.engine,
            "index": service.index.current_kind,
            "inference_workers": service.batcher.workers,
        },
        status_code=200 if service.ready else 503,
    )


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request):
    registry = request.app.state.metrics.registry
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/model",
    summary="The served model's manifest",
    dependencies=[Depends(require_read_key)],
    responses=error_responses(401),
)
async def model(service: Service):
    return FastJSONResponse(service.runtime.manifest)
