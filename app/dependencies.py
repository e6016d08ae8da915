"""What routes are given: their service (from the composition root, app/container.py) and the
API-key checks."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request

from app.api_errors import InputError
from app.container import Services
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


def _check_key(request: Request, settings: Settings) -> None:
    expected = settings.api_key.get_secret_value().encode()
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    # compare_digest takes the same time wherever the strings differ
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
        raise InputError(
            "header.authorization",
            "missing or wrong API key (Bearer)",
            status=401,
            kind="unauthorized",
        )


async def require_write_key(request: Request) -> None:
    settings = _services(request).settings
    if settings.api_key is not None:
        _check_key(request, settings)


async def require_read_key(request: Request) -> None:
    settings = _services(request).settings
    if settings.api_key is not None and settings.auth_reads:
        _check_key(request, settings)
