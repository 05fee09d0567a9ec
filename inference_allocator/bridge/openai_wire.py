"""The OpenAI HTTP API's wire format: request bodies, priorities, results, chunks, errors.

Pure functions and models, no I/O: ``openai_routes.py`` serves them. Only what the
allocator can honour is accepted: one choice (``n`` = 1), text in and out.
"""

from __future__ import annotations

import json
import time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    StringConstraints,
    ValidationError,
)

from ..schemas import Priority, ResponseRecord

#: generation parameters passed to the model server as they are (any other unknown field too)
_NOT_PASSED = {"model", "messages", "prompt", "stream", "stream_options", "priority", "n"}
_LEVELS = {p.value: p for p in Priority}


#: what ``priority`` (or ``X-Priority``) may say: a level's name in any case, or an integer
#: (lower is more urgent); spelled out, since a schema's pattern has no case flag
PRIORITY_PATTERN = r"^\s*([Hh][Ii][Gg][Hh]|[Mm][Ee][Dd][Ii][Uu][Mm]|[Ll][Oo][Ww]|[+-]?[0-9]+)\s*$"


class StreamOptions(BaseModel):
    include_usage: StrictBool = False


class _OpenAIBody(BaseModel):
    # Unknown fields (top_k, repetition_penalty, ...) pass through to the model server.
    model_config = ConfigDict(extra="allow")

    model: StrictStr = Field(min_length=1, max_length=256)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    priority: (
        Annotated[str, StringConstraints(strict=True, pattern=PRIORITY_PATTERN)] | StrictInt | None
    ) = None
    n: StrictInt = Field(1, ge=1, le=1, description="only 1 (one choice per request)")

    def params(self) -> dict[str, Any]:
        """What goes to the model server besides the messages or the prompt."""
        fields = {**self.model_dump(exclude_unset=True), **(self.model_extra or {})}
        return {k: v for k, v in fields.items() if k not in _NOT_PASSED and v is not None}

    def user(self) -> str | None:
        """OpenAI's ``user`` (an end user's id), which also keys a conversation's session
        when no ``X-Session-Id`` is sent; it still goes to the model server."""
        user = (self.model_extra or {}).get("user")
        return user if isinstance(user, str) and user else None


class ChatBody(_OpenAIBody):
    """``POST /v1/chat/completions``."""

    messages: list[dict[str, Any]] = Field(min_length=1)


class CompletionBody(_OpenAIBody):
    """``POST /v1/completions``."""

    prompt: StrictStr = Field(min_length=1)


class BadBody(ValueError):
    """A body the endpoint cannot take: 400, with the field named."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def parse_body(
    kind: type[ChatBody] | type[CompletionBody], raw: bytes
) -> ChatBody | CompletionBody:
    """The validated body, or ``BadBody`` saying what is wrong with it."""
    try:
        body = kind.model_validate_json(raw)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        where = ".".join(str(part) for part in error["loc"]) or None
        if error["type"] in ("json_invalid", "json_type"):
            raise BadBody(f"the body is not a JSON object: {error['msg']}") from None
        if where == "n":
            raise BadBody("only n=1 is supported (one choice per request)", "n") from None
        if where is not None and where.startswith("priority"):
            raise BadBody(f"priority={error['input']!r}: {_PRIORITIES}", "priority") from None
        raise BadBody(f"{where}: {error['msg']}", where) from None
    return body


def prompt_of(messages: list[dict[str, Any]]) -> str:
    """A one-string rendering of chat messages (logs, the mock backend, the request's
    ``prompt``); the messages themselves go to the model server."""
    parts = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        parts.append(f"{message.get('role', 'user')}: {content}")
    return "\n".join(parts)


_PRIORITIES = (
    "use high, medium, low, or an integer (lower is more urgent: <0 high, 0 medium, >0 low)"
)


def priority_of(body_priority: str | int | None, header: str | None) -> Priority:
    """The request's level: the body's ``priority`` wins over the ``X-Priority`` header;
    default ``medium``.

    Names are ours (``high``, ``medium``, ``low``). Integers follow vLLM and LiteLLM (lower
    is more urgent, 0 the default): below 0 is ``high``, 0 ``medium``, above 0 ``low``.
    The Gateway API inference extension counts the other way (higher is more urgent): send
    its value negated, or a name.
    """
    for value, where in ((body_priority, "priority"), (header, "X-Priority")):
        if value is None:
            continue
        if isinstance(value, str):
            text = value.strip().lower()
            if text in _LEVELS:
                return _LEVELS[text]
            try:
                value = int(text)
            except ValueError:
                raise BadBody(f"{where}={value!r}: {_PRIORITIES}", "priority") from None
        return Priority.HIGH if value < 0 else Priority.MEDIUM if value == 0 else Priority.LOW
    return Priority.MEDIUM


# --- answers -------------------------------------------------------------------------


def completion_id(request_id: str, chat: bool) -> str:
    return f"{'chatcmpl' if chat else 'cmpl'}-{request_id}"


def usage_of(usage: dict[str, int] | None) -> dict[str, Any] | None:
    """An answer's token counts in OpenAI's shape: the prompt tokens the server found in
    its cache as ``prompt_tokens_details.cached_tokens``, as OpenAI reports them."""
    if not usage:
        return None
    shaped: dict[str, Any] = {k: v for k, v in usage.items() if k != "cached_tokens"}
    if "cached_tokens" in usage:
        shaped["prompt_tokens_details"] = {"cached_tokens": usage["cached_tokens"]}
    return shaped


def result(response: ResponseRecord, model: str, chat: bool) -> dict[str, Any]:
    """A ``chat.completion`` or a ``text_completion`` of an ``ok`` answer."""
    text = response.output or ""
    finish = response.finish_reason or "stop"
    choice: dict[str, Any] = (
        {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
        if chat
        else {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    )
    body: dict[str, Any] = {
        "id": completion_id(response.request_id, chat),
        "object": "chat.completion" if chat else "text_completion",
        "created": int((response.completed_at_ms or time.time() * 1000) // 1000),
        "model": response.model_id or model,
        "choices": [choice],
    }
    usage = usage_of(response.usage)
    if usage:
        body["usage"] = usage
    return body


def chunk(
    request_id: str,
    model: str,
    chat: bool,
    created: int,
    *,
    text: str | None = None,
    role: bool = False,
    finish_reason: str | None = None,
    usage: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One streamed ``chat.completion.chunk`` or ``text_completion``; with ``usage`` the
    last one, whose ``choices`` are empty (``stream_options.include_usage``)."""
    body: dict[str, Any] = {
        "id": completion_id(request_id, chat),
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": created,
        "model": model,
    }
    if usage is not None:
        body["choices"] = []
        body["usage"] = usage
        return body
    if chat:
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        body["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
    else:
        body["choices"] = [
            {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        ]
    return body


def sse(data: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


# --- errors --------------------------------------------------------------------------

ErrorType = Literal[
    "invalid_request_error", "authentication_error", "permission_error", "not_found_error",
    "rate_limit_error", "server_error", "timeout_error", "cancelled",
]  # fmt: skip

_TYPES: dict[int, ErrorType] = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    499: "cancelled",
    503: "server_error",
    504: "timeout_error",
}


def error(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """OpenAI's error body for an HTTP status."""
    return {
        "error": {
            "message": message,
            "type": _TYPES.get(status, "server_error"),
            "param": param,
            "code": code,
        }
    }


def page(data: list[dict[str, Any]], has_more: bool = False) -> dict[str, Any]:
    """OpenAI's list body: the objects, the ids of the first and the last, and whether
    more follow."""
    first, last = (data[0]["id"], data[-1]["id"]) if data else (None, None)
    return {"object": "list", "data": data, "first_id": first, "last_id": last,
            "has_more": has_more}  # fmt: skip
