"""OpenAI's batch object and the lines of a batch's output and error files, built from the
answers on the responses topic. Pure: the runner (``batch_runner.py``) keeps the state on
Kafka and calls these.

Statuses: ``validating`` -> ``failed`` (a bad input file) or ``in_progress`` ->
``finalizing`` -> ``completed``; ``in_progress`` -> ``cancelling`` -> ``cancelled``;
``in_progress`` -> ``expired`` at the end of the completion window. A cancelled or expired
batch keeps its finished lines in its output file.
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..schemas import ResponseRecord
from .openai_wire import result

Status = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired",
    "cancelling", "cancelled",
]  # fmt: skip
#: a completion window: "24h" or shorter, in whole hours or minutes (as a schema pattern)
WINDOW_PATTERN = r"^(([1-9]|1[0-9]|2[0-4])h|([1-9][0-9]{0,2}|1[0-3][0-9]{2}|14[0-3][0-9]|1440)m)$"
WINDOW = re.compile(WINDOW_PATTERN)


def window_seconds(window: str) -> int | None:
    """The seconds of a completion window ("24h", "90m"); None when it is not one."""
    if not WINDOW.match(window):
        return None
    return int(window[:-1]) * (3600 if window.endswith("h") else 60)


class RequestCounts(BaseModel):
    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchObject(BaseModel):
    """What ``/v1/batches`` answers, as OpenAI's."""

    id: str
    object: str = "batch"
    endpoint: str
    errors: dict[str, Any] | None = None
    input_file_id: str
    completion_window: str
    status: Status
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts = Field(default_factory=RequestCounts)
    metadata: dict[str, str] | None = None


def request_id(batch_id: str, line: int) -> str:
    """The id a batch's line (its place in the file, from 0) has on Kafka: the same for
    every attempt, so a runner that takes over runs nothing twice (the allocator runs an
    id once). Not the ``custom_id``, which may hold what a request id may not."""
    return f"{batch_id}.{line}"


def output_line(custom_id: str, answer: ResponseRecord, model: str, chat: bool) -> dict:
    """A line of the output file (an ``ok`` answer) or of the error file (any other)."""
    line_id = f"batch_req_{answer.request_id}"
    if answer.status == "ok":
        body = result(answer, model, chat)
        response = {"status_code": 200, "request_id": answer.request_id, "body": body}
        return {"id": line_id, "custom_id": custom_id, "response": response, "error": None}
    code = {"expired": "batch_expired", "cancelled": "batch_cancelled"}.get(
        answer.status, "server_error"
    )
    error = {"code": code, "message": answer.error or answer.status}
    return {"id": line_id, "custom_id": custom_id, "response": None, "error": error}


def unrun_line(request_id: str, custom_id: str, ending: str) -> dict:
    """A line of the error file for a request a cancelled or expired batch never ran."""
    code = "batch_cancelled" if ending == "cancelled" else "batch_expired"
    error = {"code": code, "message": f"the batch was {ending} before this request ran"}
    return {"id": f"batch_req_{request_id}", "custom_id": custom_id, "response": None,
            "error": error}  # fmt: skip


def new_batch(
    batch_id: str, input_file_id: str, endpoint: str, window: str, window_s: int,
    metadata: dict[str, str] | None,
) -> BatchObject:  # fmt: skip
    created = int(time.time())
    return BatchObject(
        id=batch_id,
        endpoint=endpoint,
        input_file_id=input_file_id,
        completion_window=window,
        status="validating",
        created_at=created,
        expires_at=created + window_s,
        metadata=metadata,
    )
