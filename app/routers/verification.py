"""/verify: is this session a claimed element? JSON bodies, or .npy bodies with the other
fields as query parameters."""

from __future__ import annotations

from fastapi import Request

from app.bodies import read_signals
from app.dependencies import LimitsDep, VerificationDep
from app.openapi import signals_body
from app.responses import respond
from app.routers import reading_router
from app.schemas import VerifyOptions, VerifyRequest, VerifyResponse

router = reading_router("applications", 400, 404, 409, 413, 422)


@router.post(
    "/verify",
    response_model=VerifyResponse,
    openapi_extra=signals_body(VerifyRequest),
    summary="Verify a claimed element",
)
async def verify(request: Request, service: VerificationDep, limits: LimitsDep):
    """Are these signals (one session) of ``element_id``? The score compares each signal with
    the element's most similar references; the threshold is calibrated on the stored
    references to the false-accept rate HSN_VERIFY_FAR for this many signals."""
    batch, options = await read_signals(request, limits, VerifyOptions)
    return respond(await service.verify(options.element_id, batch))
