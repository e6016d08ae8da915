"""The API's routers, one per resource, and the path convertor their id segments use."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.convertors import Convertor, register_url_convertor

from app.dependencies import require_read_key
from app.schemas import error_responses


class IdConvertor(Convertor[str]):
    """``{name:id}``: a path segment holding an id of any characters, "/" (sent as %2F, which
    the server decodes before routing) and newlines included (Starlette's ``path`` stops at
    a newline, which the schema fuzzer found)."""

    regex = "[\\s\\S]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("id", IdConvertor())


def reading_router(tag: str, *errors: int) -> APIRouter:
    """A router of routes that read (the read key where reads are guarded), documenting the
    statuses ``errors`` besides 401 and 403."""
    return APIRouter(
        dependencies=[Depends(require_read_key)],
        tags=[tag],
        responses=error_responses(401, 403, *errors),
    )
