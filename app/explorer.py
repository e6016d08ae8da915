"""The explorer: a browser page under /ui that reads the service's own JSON API, served from
``app/static/ui`` under a strict Content-Security-Policy; ``/`` sends visitors there."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

STATIC_DIR = Path(__file__).parent / "static" / "ui"

# Everything the page needs comes from this origin: its own scripts and styles (no inline ones,
# so an injected string can never run), the API by fetch, nothing framed, no form navigation.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

SECURITY_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    # A module script or stylesheet served with the wrong type is refused, never guessed at
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


class SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` to every response of the wrapped application."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", []).extend(SECURITY_HEADERS)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(app: FastAPI) -> None:
    """Mounts the page at /ui/ (``/ui`` is redirected there, so the page's relative links
    resolve) and redirects ``/`` to it."""
    app.mount("/ui", SecurityHeaders(StaticFiles(directory=STATIC_DIR, html=True)), name="ui")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")
