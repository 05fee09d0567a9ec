"""A batch's input file, read and checked before anything runs (OpenAI's ``validating``
status): every line a JSON object with a ``custom_id`` (unique in the file), ``method``
``POST``, the batch's ``url`` (its endpoint) and a ``body`` for a model some pool serves.
Problems come as OpenAI's batch errors (``code``, ``message``, ``param``, ``line``), every
one of them at once (up to ``MAX_ERRORS``), so a client fixes its file in one go.

Pure: the caller says which models the fleet serves.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import openai_wire as wire

ENDPOINTS = ("/v1/chat/completions", "/v1/completions")
#: errors reported at most (the rest are counted in the last one)
MAX_ERRORS = 100


@dataclass(frozen=True, slots=True)
class BatchLine:
    """One request of a batch: its client's id, its line, and the body to send (checked
    as ``/v1`` checks it)."""

    custom_id: str
    line: int
    body: wire.ChatBody | wire.CompletionBody


@dataclass(frozen=True, slots=True)
class LineError:
    code: str
    message: str
    line: int | None = None
    param: str | None = None

    def openai(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


def read_lines(
    content: bytes, endpoint: str, serves: Callable[[str], bool]
) -> tuple[list[BatchLine], list[LineError]]:
    """The batch's requests, or (when any line is wrong) the errors."""
    if endpoint not in ENDPOINTS:
        return [], [LineError("invalid_endpoint", f"endpoint {endpoint!r}: use one of "
                              f"{', '.join(ENDPOINTS)}", param="endpoint")]  # fmt: skip
    try:
        text = content.decode()
    except UnicodeDecodeError:
        return [], [LineError("invalid_file", "the input file is not UTF-8 text")]
    lines: list[BatchLine] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        problem = _check(raw, number, endpoint, serves, seen)
        if isinstance(problem, LineError):
            errors.append(problem)
        else:
            lines.append(problem)
            seen[problem.custom_id] = number
    if not lines and not errors:
        errors.append(LineError("empty_file", "the input file has no requests"))
    if len(errors) > MAX_ERRORS:
        more = len(errors) - MAX_ERRORS + 1
        errors = [*errors[: MAX_ERRORS - 1], LineError("too_many_errors", f"and {more} more")]
    return (lines if not errors else []), errors


def _check(
    raw: str, number: int, endpoint: str, serves: Callable[[str], bool], seen: dict[str, int]
) -> BatchLine | LineError:
    try:
        value = json.loads(raw)
    except ValueError:
        return LineError("invalid_json_line", f"line {number} is not JSON", number)
    if not isinstance(value, dict):
        return LineError("invalid_json_line", f"line {number} is not a JSON object", number)
    custom_id = value.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return LineError("missing_custom_id", f"line {number} has no custom_id (a string)",
                         number, "custom_id")  # fmt: skip
    if custom_id in seen:
        return LineError("duplicate_custom_id", f"line {number}: custom_id {custom_id!r} is "
                         f"on line {seen[custom_id]} too", number, "custom_id")  # fmt: skip
    if value.get("method", "POST") != "POST":
        return LineError("invalid_method", f"line {number}: method {value.get('method')!r} "
                         "(only POST)", number, "method")  # fmt: skip
    if value.get("url") != endpoint:
        return LineError("mismatched_url", f"line {number}: url {value.get('url')!r} is not "
                         f"the batch's endpoint {endpoint}", number, "url")  # fmt: skip
    body = value.get("body")
    if not isinstance(body, dict):
        return LineError("invalid_body", f"line {number} has no body (a JSON object)",
                         number, "body")  # fmt: skip
    kind = wire.ChatBody if endpoint == "/v1/chat/completions" else wire.CompletionBody
    try:
        parsed = wire.parse_body(kind, json.dumps(body).encode())
    except wire.BadBody as exc:
        param = f"body.{exc.param}" if exc.param else "body"
        return LineError("invalid_body", f"line {number}: {exc}", number, param)
    if parsed.stream:
        return LineError("invalid_body", f"line {number}: a batch's requests do not stream",
                         number, "body.stream")  # fmt: skip
    if not serves(parsed.model):
        return LineError("model_not_found", f"line {number}: no pool serves model "
                         f"{parsed.model!r}", number, "body.model")  # fmt: skip
    return BatchLine(custom_id, number, parsed)
