"""OpenAI's Batch API: ``POST /v1/batches``, ``GET /v1/batches/{batch_id}``,
``GET /v1/batches``, ``POST /v1/batches/{batch_id}/cancel``, in OpenAI's shapes, so the
official client's ``batches`` calls work. A batch is kept on Kafka (``batch_book.py``)
and run by one bridge of the group (``batch_runner.py``): any bridge answers for it.

A batch's lines run at ``low`` unless the body's ``priority`` (or ``X-Priority``) names
another level within the API key's ceiling; with API keys, a key sees its own batches.
"""

from __future__ import annotations

import json
import uuid
from typing import Annotated, Any

from aiokafka.errors import KafkaError
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import JSONResponse, Response

from ..errors import BrokerUnavailable
from ..schemas import Priority
from . import openai_wire as wire
from .auth import ABOVE_CEILING, UNAUTHORIZED, CallerDep, authenticate, require_priority
from .batch_book import FINAL, BatchRecord
from .batch_lines import ENDPOINTS
from .batch_objects import WINDOW_PATTERN, new_batch, window_seconds
from .deps import BridgeDep

router = APIRouter(
    prefix="/v1", dependencies=[Depends(authenticate)], responses=UNAUTHORIZED, tags=["batches"]
)

#: OpenAI's limits on a batch's metadata
METADATA_PAIRS, METADATA_KEY, METADATA_VALUE = 16, 64, 512
#: batches a list answers at most
LIST_MAX = 100


def _error(status: int, message: str, param: str | None = None) -> JSONResponse:
    return JSONResponse(wire.error(status, message, param=param), status_code=status)


def _not_found(batch_id: str) -> JSONResponse:
    return _error(404, f"no batch {batch_id!r}", "batch_id")


_BY_ID = {
    name: {"operationId": name, "parameters": {"batch_id": "$response.body#/id"}}
    for name in ("retrieve_batch", "cancel_batch")
}

_CREATE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["input_file_id", "endpoint", "completion_window"],
                    "properties": {
                        "input_file_id": {"type": "string", "minLength": 1},
                        "endpoint": {"type": "string", "enum": list(ENDPOINTS)},
                        "completion_window": {
                            "type": "string",
                            "pattern": WINDOW_PATTERN,
                            "description": "24h or shorter, in hours or minutes (90m)",
                        },
                        "metadata": {
                            "type": ["object", "null"],
                            "maxProperties": METADATA_PAIRS,
                            "propertyNames": {"maxLength": METADATA_KEY},
                            "additionalProperties": {
                                "type": "string",
                                "maxLength": METADATA_VALUE,
                            },
                        },
                        "priority": {
                            "description": "the level of the batch's lines (default low)",
                            "anyOf": [
                                {"type": "string", "pattern": wire.PRIORITY_PATTERN},
                                {"type": "integer"},
                            ],
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/batches",
    operation_id="create_batch",
    openapi_extra=_CREATE_BODY,
    responses={
        200: {"description": "the batch object (status validating)", "links": _BY_ID},
        400: {"description": "a bad body: endpoint, completion_window, metadata, priority"},
        **ABOVE_CEILING,
        404: {"description": "no such input file"},
        503: {"description": "broker unreachable"},
    },
)
async def create_batch(
    request: Request,
    bridge: BridgeDep,
    caller: CallerDep,
    x_priority: Annotated[str | None, Header(pattern=wire.PRIORITY_PATTERN)] = None,
) -> Response:
    """Run the requests of an uploaded file (``purpose=batch``) within the completion
    window; its lines are checked first (``validating``), then run (``in_progress``)."""
    try:
        body: Any = json.loads(await request.body())
    except ValueError:
        return _error(400, "the body is not JSON")
    if not isinstance(body, dict):
        return _error(400, "the body is not a JSON object")
    input_file_id, endpoint = body.get("input_file_id"), body.get("endpoint")
    window, metadata = body.get("completion_window"), body.get("metadata")
    if not isinstance(input_file_id, str) or not input_file_id:
        return _error(400, "input_file_id: a file id is required", "input_file_id")
    if endpoint not in ENDPOINTS:
        return _error(400, f"endpoint {endpoint!r}: use one of {', '.join(ENDPOINTS)}",
                      "endpoint")  # fmt: skip
    window_s = window_seconds(window) if isinstance(window, str) else None
    if window_s is None:
        return _error(400, f"completion_window {window!r}: 24h or shorter, as 24h or 90m",
                      "completion_window")  # fmt: skip
    problem = _metadata_problem(metadata)
    if problem:
        return _error(400, problem, "metadata")
    asked = body.get("priority")
    if asked is not None and (not isinstance(asked, str | int) or isinstance(asked, bool)):
        return _error(400, f"priority {asked!r}: a level's name or an integer", "priority")
    try:
        named = asked is not None or x_priority is not None
        priority = wire.priority_of(asked, x_priority) if named else Priority.LOW
    except wire.BadBody as exc:
        return _error(400, str(exc), "priority")
    require_priority(caller, priority)  # 403 above the key's ceiling
    owner = caller.name if caller else None
    stored = bridge.files.get(input_file_id, owner)
    if stored is None:
        return _error(404, f"no file {input_file_id!r}", "input_file_id")
    if stored.file.purpose != "batch":
        return _error(400, f"file {input_file_id!r} is not a batch input (purpose "
                      f"{stored.file.purpose!r})", "input_file_id")  # fmt: skip
    batch = new_batch(
        f"batch_{uuid.uuid4().hex}", input_file_id, endpoint, window, window_s, metadata
    )
    try:
        bridge.reader.reachability.require()
        await bridge.batches.put(BatchRecord(batch=batch, owner=owner, priority=priority))
    except (BrokerUnavailable, KafkaError) as exc:
        return _unavailable(bridge, exc)
    return JSONResponse(batch.model_dump())


def _unavailable(bridge: Any, exc: Exception) -> JSONResponse:
    after = str(bridge.settings.retry_after_seconds)
    answer = _error(503, f"the broker did not take the batch: {exc}")
    answer.headers["Retry-After"] = after
    return answer


def _metadata_problem(metadata: Any) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return "metadata: an object of strings"
    if len(metadata) > METADATA_PAIRS:
        return f"metadata: at most {METADATA_PAIRS} pairs"
    for key, value in metadata.items():
        if not isinstance(value, str) or len(key) > METADATA_KEY or len(value) > METADATA_VALUE:
            return (
                f"metadata: keys of at most {METADATA_KEY} characters, values strings of at "
                f"most {METADATA_VALUE}"
            )
    return None


@router.get(
    "/batches",
    operation_id="list_batches",
    responses={400: {"description": "a limit that is not an integer from 1 to 100"}},
)
async def list_batches(
    bridge: BridgeDep,
    caller: CallerDep,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=LIST_MAX)] = 20,
) -> Response:
    """This key's batches (without keys: every batch), newest first; ``after`` a batch
    id, at most ``limit``."""
    records = bridge.batches.visible(caller.name if caller else None)
    if after is not None:
        ids = [r.batch.id for r in records]
        records = records[ids.index(after) + 1 :] if after in ids else []
    data = [bridge.batches.view(r).model_dump() for r in records[:limit]]
    return JSONResponse(wire.page(data, has_more=len(records) > limit))


def _visible(bridge: Any, caller: Any, batch_id: str) -> BatchRecord | None:
    return bridge.batches.get(batch_id, caller.name if caller else None)


@router.get(
    "/batches/{batch_id}",
    operation_id="retrieve_batch",
    responses={404: {"description": "no such batch"}},
)
async def retrieve_batch(bridge: BridgeDep, caller: CallerDep, batch_id: str) -> Response:
    record = _visible(bridge, caller, batch_id)
    if record is None:
        return _not_found(batch_id)
    return JSONResponse(bridge.batches.view(record).model_dump())


@router.post(
    "/batches/{batch_id}/cancel",
    operation_id="cancel_batch",
    responses={404: {"description": "no such batch"}, 503: {"description": "broker unreachable"}},
)
async def cancel_batch(bridge: BridgeDep, caller: CallerDep, batch_id: str) -> Response:
    """Stop the batch: lines not sent yet never run, those in flight are cancelled; it is
    ``cancelling`` until the runner has written the lines answered so far, then
    ``cancelled``. A finished batch stays as it is."""
    record = _visible(bridge, caller, batch_id)
    if record is None:
        return _not_found(batch_id)
    if record.batch.status not in FINAL:
        try:
            bridge.reader.reachability.require()
            await bridge.batches.cancel(batch_id)
        except (BrokerUnavailable, KafkaError) as exc:
            return _unavailable(bridge, exc)
    return JSONResponse(bridge.batches.view(record).model_dump())
