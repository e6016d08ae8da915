"""The one exception the client raises for what the service (or the network) refused."""

from __future__ import annotations

from typing import Any

import httpx


class HsnError(Exception):
    """A call that failed: ``status`` is the HTTP status (None when no answer came: the service
    could not be reached, or the connection broke) and ``detail`` the service's list of
    ``{"loc", "msg", "type"}`` items saying what was wrong (empty without an answer)."""

    def __init__(
        self, message: str, status: int | None = None, detail: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail or []


def read_answer(response: httpx.Response) -> Any:
    """The JSON of a successful answer (None for 204); HsnError carrying the service's detail
    for an error status."""
    where = f"{response.request.method} {response.request.url.path}"
    if response.status_code < 400:
        if response.status_code == 204:
            return None
        try:
            return response.json()
        except ValueError as exc:  # another server at this address, say
            raise HsnError(
                f"{response.status_code} from {where} is not JSON: is {response.url.host}:"
                f"{response.url.port} the service?",
                response.status_code,
            ) from exc
    detail = _detail(response)
    reasons = "; ".join(f"{_loc(item)}: {item.get('msg', '')}" for item in detail)
    raise HsnError(f"{response.status_code} from {where}: {reasons}", response.status_code, detail)


def _detail(response: httpx.Response) -> list[dict[str, Any]]:
    """The service's ``detail`` list. Anything else in front of it (FastAPI's plain 404 or 405,
    a balancer's HTML page) becomes one item in the same shape, so callers read one form."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, list) and all(isinstance(item, dict) for item in detail):
        return detail
    message = detail if isinstance(detail, str) else response.text[:200] or response.reason_phrase
    return [{"loc": [], "msg": message, "type": "http_error"}]


def _loc(item: dict[str, Any]) -> str:
    return ".".join(str(part) for part in item.get("loc", [])) or "request"


def no_answer(base_url: httpx.URL, exc: httpx.TransportError) -> HsnError:
    """The call got no answer: the service could not be reached, or the connection broke."""
    return HsnError(f"no answer from {base_url} ({type(exc).__name__}: {exc})")
