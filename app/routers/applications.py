"""What users do with the embeddings: verify an element (POST /verify) and score a new session's
drift (POST /drift). JSON bodies, or .npy bodies with the other fields as query parameters."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from app.dependencies import Service, parse_options, require_read_key
from app.responses import respond
from app.routers.inference import read_counted, signals_body
from app.schemas import (
    BatchDriftResponse,
    DriftOptions,
    DriftRequest,
    VerifyOptions,
    VerifyRequest,
    VerifyResponse,
    error_responses,
)

router = APIRouter(
    dependencies=[Depends(require_read_key)],
    tags=["applications"],
    responses=error_responses(400, 401, 404, 409, 413, 422),
)


@router.post(
    "/verify",
    response_model=VerifyResponse,
    openapi_extra=signals_body(VerifyRequest),
    summary="Verify a claimed element",
)
async def verify(request: Request, service: Service):
    """Are these signals (one session) of ``element_id``? The score compares each signal with
    the element's most similar references; the threshold is calibrated on the stored
    references to the false-accept rate HSN_VERIFY_FAR for this many signals."""
    batch, values = await read_counted(request, service)
    options = parse_options(VerifyOptions, values)
    return respond(VerifyResponse, await service.verify(options.element_id, batch))


@router.post(
    "/drift",
    response_model=BatchDriftResponse,
    openapi_extra=signals_body(DriftRequest),
    summary="Score a new session's drift",
)
async def drift(request: Request, service: Service):
    """How far a session not stored (two or more signals) has moved from the element's baseline:
    the calibrated score of GET /elements/{element_id}/drift, and a kernel two-sample test (MMD,
    permutation p-value) of its embeddings against the baseline's."""
    batch, values = await read_counted(request, service)
    options = parse_options(DriftOptions, values)
    result = await service.drift_batch(options.element_id, batch, options.baseline_sessions)
    return respond(BatchDriftResponse, result)
