"""/search: JSON bodies, or .npy bodies with the options as query parameters."""

from __future__ import annotations

from fastapi import Request

from app.bodies import read_signals
from app.dependencies import LimitsDep, SearchDep
from app.openapi import signals_body
from app.responses import respond
from app.routers import reading_router
from app.schemas import SearchOptions, SearchRequest, SearchResponse

router = reading_router("inference", 400, 404, 413, 422)


@router.post(
    "/search",
    response_model=SearchResponse,
    openapi_extra=signals_body(SearchRequest),
    summary="Nearest references, element vote and anomaly score",
)
async def search(request: Request, service: SearchDep, limits: LimitsDep):
    """For each signal: its k nearest references (optionally within one element or session, or
    outside one session), the element they vote for, and an anomaly score calibrated on the
    references (on ``expected_element``'s alone when given)."""
    batch, options = await read_signals(request, limits, SearchOptions)
    return respond(await service.search(batch, options))
