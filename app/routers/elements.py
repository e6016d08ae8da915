"""GET /elements: the elements the stored references belong to."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

from app.dependencies import ReferencesDep
from app.responses import respond
from app.routers import reading_router
from app.schemas import ElementList

router = reading_router("elements", 404, 409, 422)


@router.get(
    "/elements",
    response_model=ElementList,
    summary="List elements",
)
async def list_elements(
    service: ReferencesDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=2**53)] = 0,
    contains: Annotated[
        str | None, Query(max_length=256, description="only ids containing this (any case)")
    ] = None,
):
    """Elements in id order, each with its references, sessions and recording span."""
    return respond(await service.elements(limit, offset, contains))
