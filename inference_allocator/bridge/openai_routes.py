"""The OpenAI HTTP API as a front door: ``/v1/chat/completions``, ``/v1/completions``,
``/v1/models``, with priority, and token streaming through Kafka.

Statuses are those of ``/api/v1/inference`` (400 for a bad body, 404 for a model no pool
serves, 503 with Retry-After, 504 past the deadline), in OpenAI's error shape, so an SDK's
retry logic behaves. A stream relays the worker's chunk records as server-sent events; a
failure after the first event is an error event, never a silent end.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..errors import AllocatorError, BrokerUnavailable, ModelNotServed, QueueFull, RequestTimedOut
from ..schemas import SESSION_HEADER_PATTERN, SESSION_ID_MAX, RequestRecord, ResponseRecord
from . import openai_wire as wire
from .auth import (
    ABOVE_CEILING,
    UNAUTHORIZED,
    CallerDep,
    TenantHeader,
    authenticate,
    default_priority,
    require_priority,
    tenant_of,
)
from .bridge import Bridge
from .chunk_stream import Stream
from .deps import BridgeDep
from .limits import TOO_LARGE

log = logging.getLogger(__name__)

#: ``X-Session-Id``: a conversation's key (prefix routing's strongest hint)
SessionHeader = Annotated[
    str | None, Header(min_length=1, max_length=SESSION_ID_MAX, pattern=SESSION_HEADER_PATTERN)
]

router = APIRouter(
    prefix="/v1",
    dependencies=[Depends(authenticate)],
    tags=["OpenAI API"],
    responses=UNAUTHORIZED,
)

#: the status of an answer that is not ``ok``
_STATUS = {"expired": 504, "cancelled": 499}

#: what the completion routes answer, in OpenAI's error shape but for the 200
_ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "the completion (a JSON object), or with stream: true its server-sent "
        "events (an error after the first event is an error event)",
        "content": {
            "text/event-stream": {
                "schema": {
                    "description": "each event's data: a chunk as JSON, an error, or [DONE]",
                    "type": "object",
                    "properties": {"data": {"type": "string"}},
                }
            }
        },
    },
    400: {"description": "a bad body: not a JSON object, a field wrong, a bad priority, n != 1"},
    **ABOVE_CEILING,
    404: {"description": "no pool of the fleet serves the model (code model_not_found)"},
    **TOO_LARGE,
    429: {
        "description": "the API key is over a budget (code rate_limit_exceeded): Retry-After "
        "and x-ratelimit-* say when"
    },
    499: {"description": "the request was cancelled"},
    500: {"description": "the model server failed the request"},
    503: {
        "description": "queue full, broker unreachable or the model's pools down; see Retry-After"
    },  # fmt: skip
    504: {"description": "no answer within the request's deadline"},
}


def _body_schema(body: type[wire.ChatBody] | type[wire.CompletionBody]) -> dict[str, Any]:
    """The route's request body in the schema (the route reads it raw, to answer a bad one
    with OpenAI's 400 rather than FastAPI's 422)."""
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _inlined(body.model_json_schema())}},
        }
    }


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema with its ``$defs`` put in place (the operation's schema has no
    ``$defs`` of its own to point into)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {key: walk(value) for key, value in node.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(schema)


@router.post("/chat/completions", responses=_ANSWERS, openapi_extra=_body_schema(wire.ChatBody))
async def chat_completions(
    request: Request,
    bridge: BridgeDep,
    caller: CallerDep,
    x_priority: Annotated[str | None, Header(pattern=wire.PRIORITY_PATTERN)] = None,
    x_session_id: SessionHeader = None,
    x_tenant: TenantHeader = None,
) -> Response:
    """OpenAI's chat completions: the messages go to a model server of the fleet that
    serves ``model``, at the request's priority (``priority`` in the body, or the
    ``X-Priority`` header). A conversation's turns (one ``X-Session-Id``, else one
    ``user``) go to the server that ran its last one while it has a free slot."""
    return await _complete(request, bridge, caller, x_priority, x_session_id, x_tenant, chat=True)


@router.post("/completions", responses=_ANSWERS, openapi_extra=_body_schema(wire.CompletionBody))
async def completions(
    request: Request,
    bridge: BridgeDep,
    caller: CallerDep,
    x_priority: Annotated[str | None, Header(pattern=wire.PRIORITY_PATTERN)] = None,
    x_session_id: SessionHeader = None,
    x_tenant: TenantHeader = None,
) -> Response:
    """OpenAI's (legacy) completions: the prompt goes to the model server as it is."""
    return await _complete(request, bridge, caller, x_priority, x_session_id, x_tenant, chat=False)


@router.get("/models")
async def models(bridge: BridgeDep) -> Response:
    """The models the fleet serves, from the slot table."""
    listed = bridge.reader.models().models
    data = [
        {"id": m.model, "object": "model", "created": 0, "owned_by": "inference-allocator"}
        for m in listed
    ]
    return JSONResponse({"object": "list", "data": data})


async def _complete(
    request: Request,
    bridge: Bridge,
    caller: Any,
    x_priority: str | None,
    x_session_id: str | None,
    x_tenant: str | None,
    *,
    chat: bool,
) -> Response:
    try:
        body = wire.parse_body(wire.ChatBody if chat else wire.CompletionBody, await request.body())
        priority = wire.priority_of(body.priority, x_priority)
    except wire.BadBody as exc:
        return _error(400, str(exc), param=exc.param)
    named = body.priority is not None or x_priority is not None
    priority = default_priority(caller, priority, named)
    require_priority(caller, priority)  # 403 above the key's ceiling
    budget = bridge.budgets.verdict(caller)
    if budget is not None and budget.over:
        return _error(429, budget.message, code="rate_limit_exceeded", headers=budget.headers)
    if isinstance(body, wire.ChatBody):
        prompt, messages = wire.prompt_of(body.messages), body.messages
    else:
        prompt, messages = body.prompt, None
    record = bridge.producer.build(
        body.model,
        prompt,
        priority,
        params=body.params() or None,
        tenant=tenant_of(caller, x_tenant, body.user()),
        messages=messages,
        api="chat" if chat else "completions",
        stream=body.stream,
        session=x_session_id or body.user(),
    )
    try:
        bridge.admit(body.model)
        if body.stream:
            stream = await bridge.start_stream(record)
        else:
            response = await bridge.answer(record)
    except (QueueFull, BrokerUnavailable) as exc:
        after = getattr(exc, "retry_after", bridge.settings.retry_after_seconds)
        return _error(503, str(exc), headers={"Retry-After": str(after)})
    except ModelNotServed as exc:
        return _error(404, str(exc), param="model", code="model_not_found")
    except RequestTimedOut as exc:
        return _error(504, str(exc))
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        events = _events(stream, body.model, chat, include_usage)
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={
                "Cache-Control": "no-cache",
                "X-Request-Id": stream.request_id,
                **(budget.headers if budget is not None else {}),
            },
        )
    answer = _answer(response, record, chat)
    if budget is not None:
        answer.headers.update(budget.headers)
    return answer


def _answer(response: ResponseRecord, record: RequestRecord, chat: bool) -> Response:
    if response.status == "ok":
        headers = {"X-Request-Id": response.request_id}
        return JSONResponse(wire.result(response, record.model_id, chat), headers=headers)
    status = _STATUS.get(response.status, 500)
    return _error(status, response.error or response.status, code=response.status)


async def _events(
    stream: Stream, model: str, chat: bool, include_usage: bool
) -> AsyncIterator[bytes]:
    """The chunk records of one run as OpenAI's stream: a first event with the role (chat),
    the text as it comes, one with the finish reason, the usage if asked, ``[DONE]``; an
    error event instead of the rest when the run fails, times out or breaks."""
    created = int(time.time())
    request_id = stream.request_id
    if chat:
        yield wire.sse(wire.chunk(request_id, model, chat, created, text="", role=True))
    try:
        async for chunk in stream.chunks():
            if chunk.text:
                yield wire.sse(wire.chunk(request_id, model, chat, created, text=chunk.text))
            if not chunk.done:
                continue
            if chunk.status != "ok":
                status = _STATUS.get(chunk.status or "", 500)
                message = chunk.error or str(chunk.status)
                yield wire.sse(wire.error(status, message, code=chunk.status))
                return
            finish = chunk.finish_reason or "stop"
            yield wire.sse(wire.chunk(request_id, model, chat, created, finish_reason=finish))
            if include_usage:
                usage = wire.usage_of(chunk.usage) or {}
                yield wire.sse(wire.chunk(request_id, model, chat, created, usage=usage))
    except RequestTimedOut as exc:
        yield wire.sse(wire.error(504, str(exc), code="timeout"))
        return
    except AllocatorError as exc:  # StreamBroken
        yield wire.sse(wire.error(500, str(exc), code="stream_broken"))
        return
    yield wire.sse("[DONE]")


def _error(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(
        wire.error(status, message, param=param, code=code), status_code=status, headers=headers
    )


def openai_invalid(exc: RequestValidationError) -> JSONResponse:
    """A parameter FastAPI refused (a header) as OpenAI's 400, naming it."""
    error = exc.errors()[0]
    where = str(error.get("loc", ("", ""))[-1]).replace("_", "-")
    return _error(400, f"{where}: {error.get('msg', 'invalid')}", param=where)


def openai_http_error(exc: HTTPException) -> JSONResponse:
    """An HTTPException of a ``/v1`` route (401, 403, 413) in OpenAI's error shape."""
    return _error(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))
