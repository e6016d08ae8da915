"""/embed and /keypoints (JSON bodies or .npy bodies), and /model: the model's manifest."""

from __future__ import annotations

from fastapi import Request

from app.bodies import read_signals
from app.dependencies import EmbeddingDep, LimitsDep
from app.openapi import signals_body
from app.responses import FastJSONResponse, respond
from app.routers import reading_router
from app.schemas import (
    EmbedResponse,
    KeypointsResponse,
    NoOptions,
    SignalsRequest,
)

router = reading_router("inference", 400, 413, 422)


@router.post(
    "/embed",
    response_model=EmbedResponse,
    openapi_extra=signals_body(SignalsRequest),
    summary="Embed signals",
)
async def embed(request: Request, embedding: EmbeddingDep, limits: LimitsDep):
    """One L2-normalised embedding per signal, in request order."""
    batch, _ = await read_signals(request, limits, NoOptions)
    return respond(await embedding.embed(batch))


@router.post(
    "/keypoints",
    response_model=KeypointsResponse,
    openapi_extra=signals_body(SignalsRequest),
    summary="Locate keypoints",
)
async def keypoints(request: Request, embedding: EmbeddingDep, limits: LimitsDep):
    """Per signal, one entry per keypoint type in manifest order: position in that signal's own
    samples (fractional) and a confidence in [0, 1]."""
    batch, _ = await read_signals(request, limits, NoOptions)
    return respond(await embedding.keypoints(batch))


@router.get("/model", summary="The served model's manifest")
async def model(embedding: EmbeddingDep):
    """The manifest of the collection's model (the collection default's on the plain route)."""
    return FastJSONResponse(embedding.manifest)
