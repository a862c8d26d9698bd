"""Cross-origin requests: an allow-list of web origins (none by default).

A browser sends a page's JSON POST to another origin only after a preflight (`OPTIONS` with
`Access-Control-Request-Method`) that the server answers with `Access-Control-Allow-Origin`; the requests a
page may send without one (text/plain, forms) are refused by the API's Content-Type check (415). So with the
default empty list no web page can drive the server: preflights get 403 and no response carries
`Access-Control-Allow-Origin`. An origin on the list (exactly as the browser sends it, e.g.
`https://ui.example:8080`; `*` for any) gets its preflights answered and its responses marked readable.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.responses import JSONResponse, Response

from vicuna_jax.serve.protocol import APIError

ALLOW_METHODS = b"GET, POST, OPTIONS"
ALLOW_HEADERS = b"Authorization, Content-Type"
PREFLIGHT_MAX_AGE = b"600"


class CorsMiddleware:
    """Pure ASGI: answers preflights itself (before the API key check: browsers send them without one)."""

    def __init__(self, app: Any, origins: Iterable[str]):
        origins = {o.strip().rstrip("/") for o in origins if o.strip()}
        self.app, self.any = app, "*" in origins
        self.origins = {o.encode("latin-1") for o in origins - {"*"}}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        origin = headers.get(b"origin")
        if origin is None:
            await self.app(scope, receive, send)
            return
        allowed = self.any or origin in self.origins
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            if not allowed:
                err = APIError(403, f"cross-origin requests from {origin.decode('latin-1')[:200]!r} are not "
                               "allowed (the server's --cors_origins)", code="cors_origin_not_allowed")
                await JSONResponse(err.body(), 403, headers={"Vary": "Origin"})(scope, receive, send)
                return
            response = Response(status_code=204)
            response.raw_headers += [(b"access-control-allow-origin", origin), (b"vary", b"Origin"),
                                     (b"access-control-allow-methods", ALLOW_METHODS),
                                     (b"access-control-allow-headers", ALLOW_HEADERS),
                                     (b"access-control-max-age", PREFLIGHT_MAX_AGE)]
            await response(scope, receive, send)
            return
        if not allowed:
            await self.app(scope, receive, send)  # served, but the browser keeps the reply from the page
            return

        async def marked_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                extra = [(b"access-control-allow-origin", origin), (b"vary", b"Origin")]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, marked_send)
