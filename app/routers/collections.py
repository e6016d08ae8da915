"""/collections: list, make, read and delete collections, and change their model while serving
(each with its own model and references; its data routes are under
``/collections/{collection}/…``, see app/main.py)."""

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
from app.schemas import (
    CollectionIn,
    CollectionList,
    CollectionOut,
    ModelChange,
    error_responses,
)

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


@router.put(
    "/collections/{collection}/model",
    status_code=202,
    response_model=CollectionOut,
    dependencies=[Depends(require_collection_admin_key)],
    openapi_extra=json_body(ModelChange),
    responses=error_responses(404, 409, 422),
    summary="Change a collection's model while serving",
)
async def change_model(collection: CollectionName, request: Request, service: CollectionsDep):
    """Starts re-embedding every reference with ``model`` in the background; the collection
    keeps answering with its current model until the new one covers every reference, then every
    process switches. ``upgrade`` in the answer (and in GET /collections/{name}) shows the
    progress. 409: a change under way, the same version, or stored signals the model cannot
    take (the message says what differs); 422: a model that cannot be served (its checksum)."""
    body = await read_json(request, ModelChange)
    return respond(await service.change_model(collection, body.model), status_code=202)


@router.delete(
    "/collections/{collection}/model/versions/{version}",
    status_code=204,
    dependencies=[Depends(require_collection_admin_key)],
    responses=error_responses(404, 409, 422),
    summary="Delete the embeddings of a model version served before",
)
async def forget_version(collection: CollectionName, version: str, service: CollectionsDep):
    """A change back to it then re-embeds every reference; the version served, or one being
    changed to, cannot be deleted (409)."""
    await service.forget_version(collection, version)
    return Response(status_code=204)
