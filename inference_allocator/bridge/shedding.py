"""ASGI middleware that refuses a request at once, before FastAPI parses it, while any
request would be refused (a full queue, a silent broker): under overload a refusal must
cost a small part of an admission, or refusing slows down the requests admitted.

It answers what the routes would (503 with ``Retry-After``, in each API's error shape) and
steps aside for what they decide otherwise: a request that names its id (a retry may
be answered from what is retained), and one whose API key it does not know (401).
"""

from __future__ import annotations

import json
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..apikeys import KeyRing
from ..errors import BrokerUnavailable, QueueFull
from . import openai_wire as wire
from .auth import presented_key

#: the routes that admit a request, and whether they speak OpenAI's error shape
SUBMITTING = {"/api/v1/inference": False, "/v1/chat/completions": True, "/v1/completions": True}

Refused = QueueFull | BrokerUnavailable


class Shedding:
    def __init__(
        self,
        app: ASGIApp,
        keys: KeyRing,
        refusal: Callable[[], Refused | None],
        count: Callable[[Refused], None],
        default_retry_after: int,
    ):
        self.app = app
        self.keys = keys
        self.refusal = refusal
        self.count = count
        self.default_retry_after = default_retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        openai = SUBMITTING.get(scope.get("path", "")) if scope["type"] == "http" else None
        refused = None
        if openai is not None and scope["method"] == "POST" and self._may_refuse(scope):
            refused = self.refusal()
        if refused is None:  # the body is left to the route
            await self.app(scope, receive, send)
            return
        body, read = await _read_body(receive)
        if b'"request_id"' in body:
            await self.app(scope, _replay(read, receive), send)
            return
        self.count(refused)
        after = getattr(refused, "retry_after", self.default_retry_after)
        payload = wire.error(503, str(refused)) if openai else {"detail": str(refused)}
        content = json.dumps(payload).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                    (b"retry-after", str(after).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})

    def _may_refuse(self, scope: Scope) -> bool:
        headers = scope["headers"]
        for name, _ in headers:
            if name == b"idempotency-key":
                return False
        if not self.keys:
            return True
        decoded = {name.decode("latin-1"): value.decode("latin-1") for name, value in headers}
        return self.keys.identify(presented_key(decoded)) is not None  # else the route's 401


async def _read_body(receive: Receive) -> tuple[bytes, list[Message]]:
    """The whole body (the size limit outside has bounded it), and the messages read."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":  # the client left
            return b"".join(chunks), messages
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), messages


def _replay(messages: list[Message], receive: Receive) -> Receive:
    """A ``receive`` that gives the messages already read again, then the rest."""
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
