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

# The dependencies below are ``async def`` although they never await: FastAPI runs a plain
# ``def`` dependency in the thread pool, and those hand-offs were most of a small request's cost.


def _services(request: Request) -> Services:
    return request.app.state.services


async def get_embedding(request: Request) -> EmbeddingService:
    return _services(request).embedding


async def get_references(request: Request) -> ReferenceService:
    return _services(request).references


async def get_search(request: Request) -> SearchService:
    return _services(request).search


async def get_verification(request: Request) -> VerificationService:
    return _services(request).verification


async def get_drift(request: Request) -> DriftService:
    return _services(request).drift


async def get_alignment(request: Request) -> AlignmentService:
    return _services(request).alignment


async def get_status(request: Request) -> StatusService:
    return _services(request).status


Embedding = Annotated[EmbeddingService, Depends(get_embedding)]
References = Annotated[ReferenceService, Depends(get_references)]
Search = Annotated[SearchService, Depends(get_search)]
Verification = Annotated[VerificationService, Depends(get_verification)]
Drift = Annotated[DriftService, Depends(get_drift)]
Alignment = Annotated[AlignmentService, Depends(get_alignment)]
Status = Annotated[StatusService, Depends(get_status)]


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
