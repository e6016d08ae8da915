"""Elements: the list of them, and the drift of one over time."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query

from app.dependencies import Service, require_read_key
from app.responses import respond
from app.schemas import DriftResponse, ElementList, error_responses

router = APIRouter(
    prefix="/elements",
    tags=["elements"],
    dependencies=[Depends(require_read_key)],
    responses=error_responses(401, 404, 409, 422),
)


@router.get("", response_model=ElementList, summary="List elements")
async def list_elements(
    service: Service,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**53)] = 0,
    contains: Annotated[
        str | None, Query(max_length=256, description="only ids containing this (any case)")
    ] = None,
):
    """Elements in id order, each with its references, sessions and recording span."""
    return respond(ElementList, await service.elements(limit, offset, contains))


# ":id" (app/routers/__init__.py): an id may hold "/" and any other character
@router.get("/{element_id:id}/drift", response_model=DriftResponse, summary="An element's drift")
async def element_drift(
    element_id: str,
    service: Service,
    baseline_sessions: Annotated[
        int | None,
        Query(ge=1, le=10_000, description="default HSN_DRIFT_BASELINE_SESSIONS"),
    ] = None,
):
    """The element's baseline (its first sessions in time order) and, for every later session,
    its distance from the baseline and a calibrated score (see app/drift.py): higher = more
    unusual than the baseline's sessions are among themselves."""
    return respond(DriftResponse, await service.drift(element_id, baseline_sessions))
