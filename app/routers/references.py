"""Stored references (upsert, read, delete, list by element, bulk load from NPZ) and the list of
elements they belong to."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response

from app.api_errors import InputError
from app.bodies import read_json, read_npz
from app.dependencies import (
    LimitsDep,
    ReferencesDep,
    SettingsDep,
    require_read_key,
    require_write_key,
)
from app.openapi import json_body
from app.responses import respond
from app.schemas import (
    ReferenceList,
    ReferenceOut,
    ReferencesCreated,
    ReferencesRequest,
    error_responses,
)
from app.services.references import ReferenceInput
from app.signals import check_array, check_batch_size, parse_one

router = APIRouter(tags=["references"], responses=error_responses(401, 403, 404, 413, 422))


@router.post(
    "/references",
    status_code=201,
    response_model=ReferencesCreated,
    dependencies=[Depends(require_write_key)],
    openapi_extra=json_body(ReferencesRequest),
    summary="Add or replace references",
)
async def upsert_references(request: Request, service: ReferencesDep, limits: LimitsDep):
    """Embeds and stores each reference; answers once they are committed. An existing id is
    replaced (upsert); a missing id gets a new one."""
    body = await read_json(request, ReferencesRequest)
    check_batch_size(len(body.references), limits, "body.references", what="references")
    refs = [
        ReferenceInput(
            element_id=r.element_id,
            session_id=r.session_id,
            id=r.id,
            metadata=r.metadata,
            recorded_at=r.recorded_at,
            signal=parse_one(r.signal, limits, f"body.references.{i}.signal"),
        )
        for i, r in enumerate(body.references)
    ]
    return respond(await service.upsert(refs), status_code=201)


@router.post(
    "/references/npz",
    status_code=201,
    response_model=ReferencesCreated,
    dependencies=[Depends(require_write_key)],
    summary="Bulk load references from NPZ",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def bulk_load_npz(
    request: Request, service: ReferencesDep, limits: LimitsDep, settings: SettingsDep
):
    """The body is an NPZ file in the training format (``signals``, ``element_ids``,
    ``session_ids``; optional ``ids`` (N,) str to make reloads idempotent and ``recorded_at``
    (N,) ISO 8601 strings). Its arrays' declared shapes are checked against the model's limits
    and HSN_MAX_NPZ_BYTES (inflated) before any is inflated. Stored in batches of
    HSN_MAX_BATCH, each committed before the next."""
    data = await read_npz(request, limits, settings.max_npz_bytes)
    ids = data.extras.get("ids")
    if ids is not None and (ids.shape != (len(data),) or ids.dtype.kind not in "US"):
        raise InputError("body.ids", f"must be ({len(data)},) strings like 'signals'")
    recorded = _recorded_at(data.extras.get("recorded_at"), len(data))
    signals = check_array(data.signals, limits, "body.signals")
    refs = [
        ReferenceInput(
            element_id=str(data.element_ids[i]),
            session_id=str(data.session_ids[i]),
            id=None if ids is None else str(ids[i]),
            signal=signals[i],
            recorded_at=recorded[i],
        )
        for i in range(len(data))
    ]
    stored: list[str] = []
    for start in range(0, len(refs), limits.max_batch):
        stored += (await service.upsert(refs[start : start + limits.max_batch])).ids
    return respond(ReferencesCreated(ids=stored), status_code=201)


def _recorded_at(raw: np.ndarray | None, n: int) -> list[datetime | None]:
    """An NPZ's optional ``recorded_at`` (N,) ISO 8601 strings, parsed; all None when absent."""
    if raw is None:
        return [None] * n
    if raw.shape != (n,) or raw.dtype.kind not in "US":
        raise InputError("body.recorded_at", f"must be ({n},) ISO 8601 strings like 'signals'")
    parsed = []
    for i, text in enumerate(raw.tolist()):
        try:
            parsed.append(datetime.fromisoformat(str(text)))
        except ValueError as exc:
            raise InputError(f"body.recorded_at.{i}", f"not an ISO 8601 time: {exc}") from exc
    return parsed


@router.get(
    "/references",
    response_model=ReferenceList,
    dependencies=[Depends(require_read_key)],
    summary="List references",
)
async def list_references(
    service: ReferencesDep,
    element_id: Annotated[str | None, Query(description="only this element's references")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**53)] = 0,
):
    return respond(await service.list(element_id, limit, offset))


# ":id" (app/routers/__init__.py): an id may hold "/" and any other character
@router.get(
    "/references/{ref_id:id}",
    response_model=ReferenceOut,
    dependencies=[Depends(require_read_key)],
    summary="Read one reference",
)
async def get_reference(ref_id: str, service: ReferencesDep):
    return respond(await service.get(ref_id))


@router.delete(
    "/references/{ref_id:id}",
    status_code=204,
    dependencies=[Depends(require_write_key)],
    summary="Delete one reference",
)
async def delete_reference(ref_id: str, service: ReferencesDep):
    await service.delete(ref_id)
    return Response(status_code=204)
