"""HTTP routes: the prototype's contract, served over Kafka."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from ..errors import BrokerUnavailable, ModelNotServed, QueueFull, RequestTimedOut
from ..schemas import InferenceRequest, InferenceResult, ModelList, SystemStatus
from .auth import CallerDep, authenticate, require_priority
from .deps import BridgeDep

# Every route needs a valid API key when keys are configured (401 otherwise).
#: the status a POST gets when its request was cancelled (nginx's "client closed request")
CANCELLED = 499

router = APIRouter(prefix="/api/v1", dependencies=[Depends(authenticate)])


def _json(model: BaseModel) -> Response:
    # Serialized once by pydantic-core; FastAPI passes a Response through without
    # validating it against the response model a second time.
    return Response(model.model_dump_json(exclude_none=True), media_type="application/json")


def _error(status: int, detail: str, **extra: object) -> JSONResponse:
    return JSONResponse({"detail": detail, **extra}, status_code=status)


def _unavailable(exc: Exception, retry_after: int) -> JSONResponse:
    """503: a full queue or a silent broker, and when to try again."""
    return JSONResponse(
        {"detail": str(exc)}, status_code=503, headers={"Retry-After": str(retry_after)}
    )


@router.post(
    "/inference",
    response_model=InferenceResult,
    responses={
        401: {"description": "API keys are configured and none valid was sent"},
        403: {"description": "the priority is above the API key's ceiling"},
        404: {"description": "no pool of the fleet serves the model; the served ones named"},
        413: {"description": "body larger than INFERENCE_MAX_REQUEST_BYTES"},
        499: {"description": "the request was cancelled (DELETE or a cancellation record)"},
        500: {"description": "the inference backend failed"},
        503: {"description": "queue full or broker unreachable; see Retry-After"},
        504: {"description": "no result within timeout_seconds (default: the setting)"},
    },
)
async def infer(body: InferenceRequest, bridge: BridgeDep, caller: CallerDep) -> Response:
    require_priority(caller, body.priority)  # 403 above the key's ceiling
    limit = bridge.settings.request_timeout_seconds
    if body.timeout_seconds is not None and body.timeout_seconds > limit:
        return _error(
            422,
            f"timeout_seconds={body.timeout_seconds:g} is above this bridge's limit of "
            f"{limit:g} s (INFERENCE_REQUEST_TIMEOUT_SECONDS)",
        )
    try:
        response = await bridge.infer(body, tenant=caller.name if caller else None)
    except (QueueFull, BrokerUnavailable) as exc:
        return _unavailable(exc, getattr(exc, "retry_after", bridge.settings.retry_after_seconds))
    except RequestTimedOut as exc:
        return _error(504, str(exc), request_id=exc.request_id)
    except ModelNotServed as exc:
        return _error(404, str(exc))
    if response.status == "ok":
        return _json(
            InferenceResult(
                request_id=response.request_id,
                model_id=response.model_id or body.model_id,
                output=response.output or "",
                gpu_id=response.gpu_id if response.gpu_id is not None else -1,
                inference_time_ms=response.inference_time_ms or 0.0,
                queue_time_ms=response.queue_time_ms,
                worker_id=response.worker_id,
                priority=response.priority,
                pool=response.pool,
                finish_reason=response.finish_reason,
                usage=response.usage,
            )
        )
    if response.status == "expired":
        return _error(504, response.error or "deadline passed", request_id=response.request_id)
    if response.status == "cancelled":
        return _error(CANCELLED, response.error or "cancelled", request_id=response.request_id)
    return _error(500, response.error or response.status, request_id=response.request_id)


@router.delete(
    "/inference/{request_id}",
    responses={
        200: {"description": "cancelled: it will never run, or its run was stopped"},
        202: {"description": "cancelling: a POST on this bridge waits for it and gets 499"},
        404: {"description": "no such request waiting or running (or not answered in time)"},
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
    if answer is None:
        if bridge.reader.correlator.awaits(request_id):
            return JSONResponse({"request_id": request_id, "status": "cancelling"}, 202)
        return _error(
            404,
            f"no request {request_id!r} is waiting or running (unknown, finished earlier, or "
            "not yet fetched by a worker; a worker that fetches it later answers it "
            "'cancelled')",
            request_id=request_id,
        )
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
