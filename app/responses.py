"""JSON responses serialised by orjson (numpy arrays included), and :func:`respond`, the one way
a route answers with a response model."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
from pydantic import BaseModel
from starlette.responses import JSONResponse


def _plain(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:  # integers beyond 64 bits in a client's metadata: json copes
            return json.dumps(
                content, ensure_ascii=False, separators=(",", ":"), default=_plain
            ).encode()


def respond(result: BaseModel, status_code: int = 200) -> FastJSONResponse:
    """A service's result (a model of :mod:`app.schemas`, the route's ``response_model``),
    serialised through that model: arrays inside it are written by orjson as they are."""
    return FastJSONResponse(result.model_dump(), status_code=status_code)
