"""``POST /api/v1/inference`` for a plain request, without FastAPI's per-request machinery.

Under load, most of the bridge's own time went around its route rather than in it:
Starlette's routing over every route, FastAPI reading the body, solving the route's
dependencies and validating each optional header. A plain request (a JSON body with a
declared length, none of the optional headers, a known API key or none configured, a valid
body) needs none of that: this middleware validates the body as the route does
(``json.loads``, then the same pydantic model) and answers with the route's own function,
``routes.serve_inference``.

Everything else steps aside to FastAPI, with the body replayed, so every refusal (a bad
body, a bad header, a missing key) and every header's meaning stay the route's, as the
OpenAPI schema documents them.
"""

from __future__ import annotations

import json

from pydantic import ValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..apikeys import KeyRing
from ..schemas import InferenceRequest
from .auth import presented_key
from .routes import serve_inference

PATH = "/api/v1/inference"
#: headers the route reads: a request with one goes to the route, which checks its form
_ROUTE_HEADERS = frozenset({b"prefer", b"idempotency-key", b"x-session-id", b"x-tenant"})


class FastInference:
    def __init__(self, app: ASGIApp, keys: KeyRing):
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = _plain(scope["headers"])
        if headers is None:
            await self.app(scope, receive, send)
            return
        body = await _body(receive)
        if body is None:  # the client left before its body came
            return
        replay = _replaying(body, receive)
        caller = None
        if self.keys:
            caller = self.keys.identify(presented_key(headers))
            if caller is None:  # the route's 401
                await self.app(scope, replay, send)
                return
        try:
            request = InferenceRequest.model_validate(json.loads(body))
        except (ValueError, ValidationError):  # the route's 422, in FastAPI's shape
            await self.app(scope, replay, send)
            return
        bridge = scope["app"].state.bridge
        try:
            response: Response = await serve_inference(bridge, request, caller)
        except HTTPException as exc:  # 403 above the key's ceiling, as FastAPI answers it
            response = JSONResponse(
                {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
            )
        await response(scope, receive, send)


def _plain(raw: list[tuple[bytes, bytes]]) -> dict[str, str] | None:
    """The headers (lower-case names) of a plain request, or None: a JSON body with a
    declared length, and no header the route reads."""
    headers: dict[str, str] = {}
    for name, value in raw:
        if name in _ROUTE_HEADERS:
            return None
        headers[name.decode("latin-1")] = value.decode("latin-1")
    content_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != "application/json" or "content-length" not in headers:
        return None
    return headers


async def _body(receive: Receive) -> bytes | None:
    """The whole body, or None if the client disconnected first."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the body read here once, then what the client sends."""
    pending: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay
