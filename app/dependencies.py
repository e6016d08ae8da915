"""What routes are given: their service (from the composition root, app/container.py) and the
API-key checks."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.api_errors import InputError
from app.container import Services
from app.keys import DEFAULT_COLLECTION
from app.observability import access
from app.services.alignment import AlignmentService
from app.services.drift import DriftService
from app.services.embedding import EmbeddingService
from app.services.references import ReferenceService
from app.services.search import SearchService
from app.services.status import StatusService
from app.services.verification import VerificationService
from app.settings import Settings
from app.signals import SignalLimits

# The dependencies below are ``async def`` although they never await: FastAPI runs a plain
# ``def`` dependency in the thread pool, and those hand-offs were most of a small request's cost.


def _services(request: Request) -> Services:
    return request.app.state.services


def _one(name: str):
    """A dependency answering the composition root's service ``name``."""

    async def service(request: Request):
        return getattr(_services(request), name)

    return Depends(service)


EmbeddingDep = Annotated[EmbeddingService, _one("embedding")]
ReferencesDep = Annotated[ReferenceService, _one("references")]
SearchDep = Annotated[SearchService, _one("search")]
VerificationDep = Annotated[VerificationService, _one("verification")]
DriftDep = Annotated[DriftService, _one("drift")]
AlignmentDep = Annotated[AlignmentService, _one("alignment")]
StatusDep = Annotated[StatusService, _one("status")]


async def _limits(request: Request) -> SignalLimits:
    return _services(request).embedding.limits


async def _settings(request: Request) -> Settings:
    return _services(request).settings


LimitsDep = Annotated[SignalLimits, Depends(_limits)]  # what the served model takes
SettingsDep = Annotated[Settings, Depends(_settings)]


def _authorized(scope: str, needs: str):
    """A dependency: the request's API key must allow ``scope`` (see app/keys.py). With no key
    configured anywhere nothing is asked; reads are open unless HSN_AUTH_READS."""

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
        if not key.covers(DEFAULT_COLLECTION):
            raise InputError(
                "header.authorization",
                f"this key is for the collections {', '.join(key.collections)}, not"
                f" {DEFAULT_COLLECTION!r}",
                status=403,
                kind="forbidden",
            )
        ring.used(key)

    return check


require_read_key = _authorized("read", "reading")
require_write_key = _authorized("write", "writing references")
