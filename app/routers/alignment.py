"""/align: signals aligned by their keypoints. JSON bodies, or .npy bodies with the other fields
as query parameters."""

from __future__ import annotations

from fastapi import Request

from app.bodies import read_signals
from app.dependencies import AlignmentDep, LimitsDep
from app.openapi import signals_body
from app.responses import respond
from app.routers import reading_router
from app.schemas import AlignOptions, AlignRequest, AlignResponse

router = reading_router("applications", 400, 404, 409, 413, 422)


@router.post(
    "/align",
    response_model=AlignResponse,
    openapi_extra=signals_body(AlignRequest),
    summary="Align signals by their keypoints",
)
async def align(request: Request, service: AlignmentDep, limits: LimitsDep):
    """Each signal's predicted keypoints (those at least ``min_confidence`` sure) are mapped onto
    the target's positions: ``shift`` moves the signal by one keypoint, ``piecewise`` warps time
    piecewise linearly between consecutive ones (monotone; an anchor the model places less
    precisely than the signals' own interval variation is pulled towards the shift). Per signal
    the aligned signal, the warp as anchor lists, the keypoints used and those skipped (why);
    with ``average`` the ensemble mean and SD."""
    batch, options = await read_signals(request, limits, AlignOptions)
    return respond(await service.align(batch, options))
