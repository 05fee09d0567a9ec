"""ASGI middleware that refuses bodies larger than ``INFERENCE_MAX_REQUEST_BYTES`` (413).

Plain ASGI rather than ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware wraps
every request in extra tasks and streams, a measurable cost on the bridge's hot path.
"""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

#: the OpenAPI answer of this limit, for the routes that take a body
TOO_LARGE = {413: {"description": "body larger than INFERENCE_MAX_REQUEST_BYTES"}}


class BodySizeLimit:
    """``max_bytes`` for every path but those of ``larger`` (path: (limit, setting))."""

    def __init__(
        self, app: ASGIApp, max_bytes: int, larger: dict[str, tuple[int, str]] | None = None
    ):
        self.app = app
        self.max_bytes = max_bytes
        self.larger = larger or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            limit, setting = self.larger.get(
                scope["path"], (self.max_bytes, "INFERENCE_MAX_REQUEST_BYTES")
            )
            for name, value in scope["headers"]:
                if name == b"content-length":
                    if value.isdigit() and int(value) > limit:
                        response = JSONResponse(
                            {
                                "detail": f"request body of {int(value)} bytes exceeds the "
                                f"limit of {limit} ({setting})"
                            },
                            status_code=413,
                        )
                        await response(scope, receive, send)
                        return
                    break
        await self.app(scope, receive, send)
