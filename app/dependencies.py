"""What routes are given: their service (from the composition root, app/container.py) and the
API-key checks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request

from app.api_errors import InputError
from app.catalog import Collection
from app.container import Services
from app.keys import ApiKey
from app.observability import access
from app.schemas import NAME_PATTERN
from app.services.alignment import AlignmentService
from app.services.backup import BackupService
from app.services.collections import CollectionService
from app.services.drift import DriftService
from app.services.embedding import EmbeddingService
from app.services.references import ReferenceService
from app.services.search import SearchService
from app.services.status import StatusService
from app.services.verification import VerificationService
from app.settings import Settings
from app.signals import SignalLimits
from app.store import DEFAULT_COLLECTION

# The dependencies below are ``async def`` although they never await: FastAPI runs a plain
# ``def`` dependency in the thread pool, and those hand-offs were most of a small request's cost.


def _services(request: Request) -> Services:
    return request.app.state.services


def collection_name(request: Request) -> str:
    """The collection a request is for: ``/collections/{collection}/…``, else ``default``."""
    return request.path_params.get("collection", DEFAULT_COLLECTION)


def _collection(request: Request) -> Collection:
    return _services(request).collections.get(collection_name(request))


def _one(name: str):
    """A dependency answering the request's collection's service ``name``."""

    async def service(request: Request):
        return getattr(_collection(request), name)

    return Depends(service)


EmbeddingDep = Annotated[EmbeddingService, _one("embedding")]
ReferencesDep = Annotated[ReferenceService, _one("references")]
SearchDep = Annotated[SearchService, _one("search")]
VerificationDep = Annotated[VerificationService, _one("verification")]
DriftDep = Annotated[DriftService, _one("drift")]
AlignmentDep = Annotated[AlignmentService, _one("alignment")]


async def _status(request: Request) -> StatusService:
    return _services(request).status


async def _catalog(request: Request) -> CollectionService:
    return _services(request).catalog


async def _backup(request: Request) -> BackupService:
    return _services(request).backup


StatusDep = Annotated[StatusService, Depends(_status)]
BackupDep = Annotated[BackupService, Depends(_backup)]
CollectionsDep = Annotated[CollectionService, Depends(_catalog)]


async def _limits(request: Request) -> SignalLimits:
    return _collection(request).limits


async def _settings(request: Request) -> Settings:
    return _services(request).settings


LimitsDep = Annotated[SignalLimits, Depends(_limits)]  # what the collection's model takes
SettingsDep = Annotated[Settings, Depends(_settings)]


CollectionName = Annotated[
    str,
    Path(
        pattern=NAME_PATTERN,
        description="a collection's name; the routes without /collections/{collection} serve"
        " default",
    ),
]


def _authorized(scope: str, needs: str, per_collection: bool = True, whole: bool = False):
    """A dependency: the request's API key must allow ``scope`` (see app/keys.py) and, on a
    route ``per_collection``, cover the request's collection (the key is left in
    ``request.state.key`` for the routes that check it themselves). With no key configured
    anywhere nothing is asked; reads are open unless HSN_AUTH_READS."""

    async def check(request: Request) -> None:
        services = _services(request)
        ring = services.keys
        if not ring.enabled or (scope == "read" and not services.settings.auth_reads):
            return
        kind, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip()
        key = await ring.identify(given) if kind.lower() == "bearer" and given else None
        if key is None:
            raise InputError(
                "header.authorization",
                "missing or wrong API key (Bearer)",
                status=401,
                kind="unauthorized",
            )
        access.get({})["key_id"] = key.id  # the access log names the key, never its secret
        if not key.allows(scope):
            raise InputError(
                "header.authorization",
                f"this key's scope is {key.scope}: {needs} needs {scope}",
                status=403,
                kind="forbidden",
            )
        if per_collection:
            check_covers(key, collection_name(request))
        if whole and key.collections:  # what holds every collection needs every collection
            raise InputError(
                "header.authorization",
                f"this key is for the collections {', '.join(key.collections)}: {needs} needs"
                " a key for every collection",
                status=403,
                kind="forbidden",
            )
        request.state.key = key
        ring.used(key)

    return check


require_read_key = _authorized("read", "reading")
require_write_key = _authorized("write", "writing references")
require_any_read_key = _authorized("read", "reading", per_collection=False)
require_admin_key = _authorized("admin", "managing collections", per_collection=False)
require_collection_admin_key = _authorized("admin", "managing collections")
require_deployment_admin_key = _authorized("admin", "a backup", per_collection=False, whole=True)


def check_covers(key: ApiKey | None, collection: str) -> None:
    """403 naming the key's collections when ``key`` (None: no key was asked) does not cover
    ``collection``."""
    if key is not None and not key.covers(collection):
        raise InputError(
            "header.authorization",
            f"this key is for the collections {', '.join(key.collections)}, not {collection!r}",
            status=403,
            kind="forbidden",
        )


def request_key(request: Request) -> ApiKey | None:
    """The key the request was let in with (None: no key was asked)."""
    return getattr(request.state, "key", None)
