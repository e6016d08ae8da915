"""/embed, /keypoints and /search: JSON bodies or .npy bodies (options as query parameters)."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter, Depends, Request

from app.dependencies import Service, read_signals, require_read_key, search_options
from app.responses import FastJSONResponse, respond
from app.schemas import (
    EmbedResponse,
    KeypointsResponse,
    SearchRequest,
    SearchResponse,
    SignalsRequest,
    error_responses,
)
from app.signals import NPY_MEDIA_TYPE, SignalBatch, batch_size

router = APIRouter(
    dependencies=[Depends(require_read_key)],
    tags=["inference"],
    responses=error_responses(400, 401, 404, 413, 422),
)


def signals_body(model: type) -> dict:
    """OpenAPI for a body read by hand: the JSON schema, or a raw .npy array."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inline(model.model_json_schema())},
                NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}},
            },
        }
    }


def _inline(schema: dict) -> dict:
    """A model's JSON schema with its nested models (``$defs``) written in place: the schema is
    embedded in the OpenAPI document, where ``#/$defs/...`` would point nowhere."""
    defs = schema.pop("$defs", {})

    def resolve(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schema)


async def read_counted(request: Request, service: Service) -> tuple[SignalBatch, dict]:
    """The request's signals (counted in the metrics per route) and its other values."""
    batch, values = await read_signals(request, service)
    route = request.scope["route"].path
    request.app.state.metrics.request_signals.labels(route).observe(batch_size(batch))
    return batch, values


@router.post(
    "/embed",
    response_model=EmbedResponse,
    openapi_extra=signals_body(SignalsRequest),
    summary="Embed signals",
)
async def embed(request: Request, service: Service):
    """One L2-normalised embedding per signal, in request order."""
    batch, _ = await read_counted(request, service)
    result = await service.embed(batch)
    return FastJSONResponse(
        {
            "embeddings": result.embeddings,
            "dim": service.runtime.dim,
            "model_version": service.runtime.version,
        }
    )


@router.post(
    "/keypoints",
    response_model=KeypointsResponse,
    openapi_extra=signals_body(SignalsRequest),
    summary="Locate keypoints",
)
async def keypoints(request: Request, service: Service):
    """Per signal, one entry per keypoint type in manifest order: position in that signal's own
    samples (fractional) and a confidence in [0, 1]."""
    batch, _ = await read_counted(request, service)
    result = await service.embed(batch)
    names = service.runtime.keypoint_names
    positions = np.round(result.positions.astype(np.float64), 3).tolist()
    confidences = np.round(result.confidences.astype(np.float64), 4).tolist()
    return FastJSONResponse(
        {
            "keypoints": [
                [
                    {"name": n, "position": p, "confidence": c}
                    for n, p, c in zip(names, pos, conf, strict=True)
                ]
                for pos, conf in zip(positions, confidences, strict=True)
            ],
            "model_version": service.runtime.version,
        }
    )


@router.post(
    "/search",
    response_model=SearchResponse,
    openapi_extra=signals_body(SearchRequest),
    summary="Nearest references, element vote and anomaly score",
)
async def search(request: Request, service: Service):
    """For each signal: its k nearest references (optionally within one element or session, or
    outside one session), the element they vote for, and an anomaly score calibrated on the
    references (on ``expected_element``'s alone when given)."""
    batch, values = await read_counted(request, service)
    options = search_options(values, request.app.state.settings)
    results = await service.search(
        batch,
        options.k,
        options.element_id,
        options.session_id,
        options.exclude_session_id,
        options.expected_element,
    )
    return respond(SearchResponse, {"results": results, "model_version": service.runtime.version})
