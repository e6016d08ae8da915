"""/collections: list, make, read and delete collections (each with its own model and
references; its data routes are under ``/collections/{collection}/…``, see app/main.py)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response

from app.bodies import read_json
from app.dependencies import (
    CollectionName,
    CollectionsDep,
    check_covers,
    request_key,
    require_admin_key,
    require_any_read_key,
    require_collection_admin_key,
    require_read_key,
)
from app.openapi import json_body
from app.responses import respond
from app.schemas import CollectionIn, CollectionList, CollectionOut, error_responses

router = APIRouter(tags=["collections"], responses=error_responses(401, 403))


@router.get(
    "/collections",
    response_model=CollectionList,
    dependencies=[Depends(require_any_read_key)],
    summary="List collections",
)
async def list_collections(request: Request, service: CollectionsDep):
    """Every collection, oldest first (a key limited to some collections sees only those)."""
    key = request_key(request)
    return respond(await service.list(key.covers if key else lambda name: True))


@router.post(
    "/collections",
    status_code=201,
    response_model=CollectionOut,
    dependencies=[Depends(require_admin_key)],
    openapi_extra=json_body(CollectionIn),
    responses=error_responses(404, 409, 422),
    summary="Make a collection",
)
async def create_collection(request: Request, service: CollectionsDep):
    """A new, empty collection on one of the model repository's models; searchable through
    this process when this answers, through every other within the sync interval."""
    body = await read_json(request, CollectionIn)
    check_covers(request_key(request), body.name)
    return respond(await service.create(body.name, body.model), status_code=201)


@router.get(
    "/collections/{collection}",
    response_model=CollectionOut,
    dependencies=[Depends(require_read_key)],
    responses=error_responses(404, 422),
    summary="One collection",
)
async def get_collection(collection: CollectionName, service: CollectionsDep):
    return respond(await service.get(collection))


@router.delete(
    "/collections/{collection}",
    status_code=204,
    dependencies=[Depends(require_collection_admin_key)],
    responses=error_responses(404, 409, 422),
    summary="Delete a collection and its references",
)
async def delete_collection(collection: CollectionName, service: CollectionsDep):
    """Its references, embeddings and index go with it; default cannot be deleted (409)."""
    await service.delete(collection)
    return Response(status_code=204)
