"""Drift: of an element's stored sessions over time (GET /elements/{element_id}/drift), and of
a new session not stored (POST /drift: JSON, or .npy with the other fields in the query)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from app.bodies import read_signals
from app.dependencies import DriftDep, LimitsDep, require_read_key
from app.openapi import signals_body
from app.responses import respond
from app.schemas import (
    BatchDriftResponse,
    DriftOptions,
    DriftRequest,
    DriftResponse,
    error_responses,
)

router = APIRouter(
    dependencies=[Depends(require_read_key)],
    responses=error_responses(401, 403, 404, 409, 422),
)


# ":id" (app/routers/__init__.py): an id may hold "/" and any other character
@router.get(
    "/elements/{element_id:id}/drift",
    response_model=DriftResponse,
    tags=["elements"],
    summary="An element's drift",
)
async def element_drift(
    element_id: str,
    service: DriftDep,
    baseline_sessions: Annotated[
        int | None,
        Query(
            ge=1,
            le=10_000,
            description="default HSN_DRIFT_BASELINE_SESSIONS; at most the element's sessions"
            " less one (409 beyond)",
        ),
    ] = None,
):
    """The element's baseline (its first sessions in time order) and, for every later session,
    its distance from the baseline and a calibrated score (see app/drift.py): higher = more
    unusual than the baseline's sessions are among themselves."""
    return respond(await service.element_drift(element_id, baseline_sessions))


@router.post(
    "/drift",
    response_model=BatchDriftResponse,
    openapi_extra=signals_body(DriftRequest),
    tags=["applications"],
    responses=error_responses(400, 413),
    summary="Score a new session's drift",
)
async def drift(request: Request, service: DriftDep, limits: LimitsDep):
    """How far a session not stored (two or more signals) has moved from the element's baseline:
    the calibrated score of GET /elements/{element_id}/drift, and a kernel two-sample test (MMD,
    permutation p-value) of its embeddings against the baseline's."""
    batch, options = await read_signals(request, limits, DriftOptions)
    return respond(await service.batch_drift(options.element_id, batch, options.baseline_sessions))
