"""JSON responses serialised by orjson (numpy arrays included), the service's response class."""

from __future__ import annotations

import json
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:  # integers beyond 64 bits in a client's metadata: json copes
            return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()


def respond(schema: type[BaseModel], result: Any, status_code: int = 200) -> FastJSONResponse:
    """A service result (dataclasses, or a dict of them) serialised through its response schema:
    the response's shape is written once, in :mod:`app.schemas`."""
    body = schema.model_validate(result, from_attributes=True).model_dump(mode="json")
    return FastJSONResponse(body, status_code=status_code)
