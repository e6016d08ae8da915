"""What users do with the embeddings and keypoints: align signals (POST /align), verify an element
(POST /verify) and score a new session's drift (POST /drift). JSON bodies, or .npy bodies with
the other fields as query parameters."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request

from app.dependencies import Service, parse_options, require_read_key
from app.responses import respond
from app.routers.inference import read_counted, signals_body
from app.schemas import (
    AlignOptions,
    AlignRequest,
    AlignResponse,
    BatchDriftResponse,
    DriftOptions,
    DriftRequest,
    VerifyOptions,
    VerifyRequest,
    VerifyResponse,
    error_responses,
)
from app.signals import NPY_MEDIA_TYPE

router = APIRouter(
    dependencies=[Depends(require_read_key)],
    tags=["applications"],
    responses=error_responses(400, 401, 404, 409, 413, 422),
)


@router.post(
    "/align",
    response_model=AlignResponse,
    openapi_extra=signals_body(AlignRequest),
    summary="Align signals by their keypoints",
)
async def align(request: Request, service: Service):
    """Each signal's predicted keypoints (those at least ``min_confidence`` sure) are mapped onto
    the target's positions: ``shift`` moves the signal by one keypoint, ``piecewise`` warps time
    piecewise linearly between consecutive ones (monotone; an anchor the model places less
    precisely than the signals' own interval variation is pulled towards the shift). Per signal
    the aligned signal, the warp as anchor lists, the keypoints used and those skipped (why);
    with ``average`` the ensemble mean and SD."""
    batch, values = await read_counted(request, service)
    if request.headers.get("content-type", "").split(";")[0].strip() == NPY_MEDIA_TYPE:
        values = _align_query(values)
    options = parse_options(AlignOptions, values)
    target = options.target
    result = await service.align(
        batch,
        positions=getattr(target, "positions", None),
        reference_id=getattr(target, "reference_id", None),
        element_id=getattr(target, "element_id", None),
        mode=options.mode,
        keypoints=options.keypoints,
        average=options.average,
        length=options.length,
        min_confidence=options.min_confidence,
    )
    return respond(AlignResponse, result)


def _align_query(query: dict) -> dict:
    """/align's query parameters (with a .npy body) as its JSON fields."""
    values = dict(query)
    if "keypoints" in values:
        values["keypoints"] = [k for k in values["keypoints"].split(",") if k]
    targets = {k: values.pop(k) for k in ("reference_id", "element_id") if k in values}
    if targets:
        values["target"] = targets
    return values


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
