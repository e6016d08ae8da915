"""JSON responses serialised by orjson (numpy arrays included), the service's response class."""

from __future__ import annotations

import json
from typing import Any

import orjson
from starlette.responses import JSONResponse


class FastJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        try:
            return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
        except TypeError:  # integers beyond 64 bits in a client's metadata: json copes
            return json.dumps(content, ensure_ascii=False, separators=(",", ":")).encode()
