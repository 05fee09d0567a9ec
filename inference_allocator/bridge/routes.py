"""HTTP routes: the prototype's contract, served over Kafka."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from ..apikeys import Caller
from ..errors import (
    BrokerUnavailable,
    ModelNotServed,
    QueueFull,
    RequestIdReused,
    RequestTimedOut,
)
from ..schemas import (
    REQUEST_ID_MAX,
    REQUEST_ID_PATTERN,
    SESSION_HEADER_PATTERN,
    SESSION_ID_MAX,
    InferenceRequest,
    InferenceResult,
    ModelList,
    RequestState,
    ResponseRecord,
    SystemStatus,
)
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
from .deps import BridgeDep
from .limits import TOO_LARGE

# Every route needs a valid API key when keys are configured (401 otherwise).
#: the status a POST gets when its request was cancelled (nginx's "client closed request")
CANCELLED = 499

router = APIRouter(
    prefix="/api/v1",
    dependencies=[Depends(authenticate)],
    responses=UNAUTHORIZED,
)


def _json(model: BaseModel) -> Response:
    # Serialized once by pydantic-core; FastAPI passes a Response through without
    # validating it against the response model a second time.
    return Response(model.model_dump_json(exclude_none=True), media_type="application/json")


def _error(code: int, detail: str, **extra: object) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=code)


def _unavailable(exc: Exception, retry_after: int) -> JSONResponse:
    """503: a full queue or a silent broker, and when to try again."""
    return JSONResponse(
        {"detail": str(exc)}, status_code=503, headers={"Retry-After": str(retry_after)}
    )


#: where a request's id leads: its state and its cancellation (OpenAPI links, which
#: clients and schemathesis's stateful runs follow)
_BY_ID = {
    "state": {
        "operationId": "request_state",
        "parameters": {"request_id": "$response.body#/request_id"},
    },
    "cancel": {"operationId": "cancel", "parameters": {"request_id": "$response.body#/request_id"}},
}


@router.post(
    "/inference",
    operation_id="infer",
    response_model=InferenceResult,
    responses={
        200: {"description": "the answer", "links": _BY_ID},
        202: {
            "model": RequestState,
            "description": "Prefer: respond-async: accepted; GET the Location for its state",
            "links": _BY_ID,
        },
        **ABOVE_CEILING,
        404: {"description": "no pool of the fleet serves the model; the served ones named"},
        409: {"description": "the request id was answered for another API key"},
        **TOO_LARGE,
        422: {
            "description": "a bad body, an Idempotency-Key unlike its request_id, or a "
            "request id sent before with another model_id, prompt or params"
        },
        429: {
            "description": "the API key is over a budget (tokens_per_minute, "
            "requests_per_minute, tokens_per_day): Retry-After and x-ratelimit-* say when"
        },
        499: {"description": "the request was cancelled (DELETE or a cancellation record)"},
        500: {"description": "the inference backend failed"},
        503: {"description": "queue full or broker unreachable; see Retry-After"},
        504: {"description": "no result within timeout_seconds (default: the setting)"},
    },
)
async def infer(
    body: InferenceRequest,
    bridge: BridgeDep,
    caller: CallerDep,
    prefer: Annotated[str | None, Header()] = None,
    idempotency_key: Annotated[
        str | None, Header(min_length=1, max_length=REQUEST_ID_MAX, pattern=REQUEST_ID_PATTERN)
    ] = None,
    x_session_id: Annotated[
        str | None,
        Header(min_length=1, max_length=SESSION_ID_MAX, pattern=SESSION_HEADER_PATTERN),
    ] = None,
    x_tenant: TenantHeader = None,
) -> Response:
    """Run an inference and answer its result; with ``Prefer: respond-async``, answer 202
    at once with its ``Location``. A ``request_id`` in the body (or an ``Idempotency-Key``
    header) makes a retry safe: while that id waits, runs or is retained, nothing runs
    again and the same answer comes back (``Idempotent-Replayed: true`` when retained).
    A ``session_id`` (or an ``X-Session-Id`` header) keeps a conversation's turns on the
    model server that ran its last one."""
    return await serve_inference(
        bridge,
        body,
        caller,
        prefer=prefer,
        idempotency_key=idempotency_key,
        session_id=x_session_id,
        tenant_header=x_tenant,
    )


async def serve_inference(
    bridge: Bridge,
    body: InferenceRequest,
    caller: Caller | None,
    *,
    prefer: str | None = None,
    idempotency_key: str | None = None,
    session_id: str | None = None,
    tenant_header: str | None = None,
) -> Response:
    """What ``POST /api/v1/inference`` answers, once its body and headers are valid (the
    route's, and ``fast_path``'s for a plain request)."""
    if body.session_id is None:
        body.session_id = session_id
    body.priority = default_priority(caller, body.priority, "priority" in body.model_fields_set)
    require_priority(caller, body.priority)  # 403 above the key's ceiling
    budget = bridge.budgets.verdict(caller)
    if budget is not None and budget.over:
        return JSONResponse({"detail": budget.message}, status_code=429, headers=budget.headers)
    tenant = tenant_of(caller, tenant_header)
    limit = bridge.settings.request_timeout_seconds
    if body.timeout_seconds is not None and body.timeout_seconds > limit:
        return _error(
            422,
            f"timeout_seconds={body.timeout_seconds:g} is above this bridge's limit of "
            f"{limit:g} s (INFERENCE_REQUEST_TIMEOUT_SECONDS)",
        )
    if idempotency_key is not None:  # its form is checked with the request (the schema's)
        if body.request_id not in (None, idempotency_key):
            return _error(
                422,
                f"Idempotency-Key {idempotency_key!r} and request_id {body.request_id!r} "
                "differ; send one",
            )
        body.request_id = idempotency_key
    if body.request_id is not None and bridge.taken(body.request_id, tenant):
        return _error(
            409,
            f"request id {body.request_id!r} was used by another API key; choose another",
            request_id=body.request_id,
        )
    try:
        if prefer is not None and _respond_async(prefer):
            state = await bridge.submit(body, tenant)
            if state.status in ("queued", "running"):
                return _accepted(state)
            # Answered already (a retry of an id): nothing to wait for, so the answer itself,
            # as without the preference, replayed.
        response, replayed = await bridge.infer(body, tenant)
    except (QueueFull, BrokerUnavailable) as exc:
        return _unavailable(exc, getattr(exc, "retry_after", bridge.settings.retry_after_seconds))
    except RequestTimedOut as exc:
        return _error(504, str(exc), request_id=exc.request_id)
    except ModelNotServed as exc:
        return _error(404, str(exc))
    except RequestIdReused as exc:
        return _error(422, str(exc), request_id=body.request_id)
    answer = _answer(response, body.model_id)
    if replayed:
        answer.headers["Idempotent-Replayed"] = "true"
    if budget is not None:
        answer.headers.update(budget.headers)
    return answer


def _answer(response: ResponseRecord, model_id: str) -> Response:
    """The HTTP answer to a request, from its response record."""
    if response.status == "ok":
        return _json(InferenceResult.of(response, model_id))
    if response.status == "expired":
        return _error(504, response.error or "deadline passed", request_id=response.request_id)
    if response.status == "cancelled":
        return _error(CANCELLED, response.error or "cancelled", request_id=response.request_id)
    return _error(500, response.error or response.status, request_id=response.request_id)


def _accepted(state: RequestState) -> Response:
    location = f"{router.prefix}/inference/{state.request_id}"
    return Response(
        state.model_dump_json(exclude_none=True),
        status_code=202,
        media_type="application/json",
        headers={"Location": location, "Preference-Applied": "respond-async"},
    )


def _respond_async(prefer: str) -> bool:
    """Whether a ``Prefer`` header (RFC 7240) asks for ``respond-async``."""
    return any(part.split(";")[0].strip().lower() == "respond-async" for part in prefer.split(","))


@router.get(
    "/inference/{request_id}",
    operation_id="request_state",
    response_model=RequestState,
    responses={
        404: {
            "description": "nothing of that id waits, runs or was answered within the "
            "retention (INFERENCE_RESULT_RETENTION_SECONDS)"
        },  # fmt: skip
        503: {"description": "broker unreachable"},
    },
)
async def request_state(request_id: str, bridge: BridgeDep, caller: CallerDep) -> Response:
    """Where a request is, from any bridge: ``queued``, ``running``, or its answer's status
    (``ok`` with its ``result``; ``error``, ``expired``, ``cancelled`` with the ``error``),
    kept for INFERENCE_RESULT_RETENTION_SECONDS and read back from Kafka on restart. While
    it is not answered, ``Retry-After`` says when to ask again."""
    state = await bridge.find(request_id, caller.name if caller else None)
    if state is None:
        if not bridge.reader.reachability.up:
            return _unavailable(bridge.reader.reachability.error(), 1)
        retention = bridge.settings.result_retention_seconds
        return _error(
            404,
            f"no request {request_id!r} waits, runs, or was answered in the last {retention:g} s "
            "(INFERENCE_RESULT_RETENTION_SECONDS)",
            request_id=request_id,
        )
    answer = _json(state)
    if state.status in ("queued", "running"):
        answer.headers["Retry-After"] = "1"
    return answer


@router.delete(
    "/inference/{request_id}",
    operation_id="cancel",
    responses={
        200: {"description": "cancelled: it will never run, or its run was stopped"},
        202: {
            "description": "cancelling: sent; a POST waiting for it gets 499, and a worker "
            "that fetches it later answers it cancelled"
        },  # fmt: skip
        404: {"description": "nothing of that id waits, runs or was answered lately"},
        409: {"description": "it finished before the cancellation reached it"},
        503: {"description": "broker unreachable"},
    },
)
async def cancel(request_id: str, bridge: BridgeDep, caller: CallerDep) -> Response:
    """Cancel a waiting or running request, from any bridge (the same as a record on
    ``<prefix>.cancellations``): the worker holding it never runs it, or stops its backend
    call and frees the slot; the answer is ``cancelled``."""
    try:
        answer = await bridge.cancel(request_id, tenant=caller.name if caller else None)
    except BrokerUnavailable as exc:
        return _unavailable(exc, bridge.settings.retry_after_seconds)
    if answer == "cancelling":
        return JSONResponse({"request_id": request_id, "status": "cancelling"}, 202)
    if answer == "unknown":
        return _error(
            404,
            f"no request {request_id!r} waits, runs, or was answered in the last "
            f"{bridge.settings.result_retention_seconds:g} s",
            request_id=request_id,
        )
    assert isinstance(answer, ResponseRecord)
    if answer.status == "cancelled":
        return JSONResponse({"request_id": request_id, "status": "cancelled"})
    return _error(
        409,
        f"request {request_id!r} finished ({answer.status}) before the cancellation reached it",
        request_id=request_id,
        status=answer.status,
    )


@router.get("/status", response_model=SystemStatus)
async def status(bridge: BridgeDep) -> Response:
    return _json(await bridge.reader.fresh_status())


@router.get("/models", response_model=ModelList)
async def models(bridge: BridgeDep) -> Response:
    """The models the fleet serves, with their pools and free/busy slots (from the slot
    table, so every bridge knows)."""
    return _json(bridge.reader.models())
