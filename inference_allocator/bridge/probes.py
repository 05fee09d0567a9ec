"""Kubernetes-style probes: ``/healthz`` (the process serves) and ``/readyz`` (it can do
its job: the broker answers, the topics exist, a worker is alive); and ``/metrics`` for
Prometheus. None of them needs an API key."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from ..metrics import CONTENT_TYPE_LATEST
from ..schemas import now_ms
from .deps import BridgeDep

router = APIRouter()


@router.get("/healthz", include_in_schema=True)
async def healthz() -> JSONResponse:
    """Liveness: 200 while the process serves HTTP; a failing broker does not fail it
    (restarting the bridge would not bring the broker back)."""
    return JSONResponse({"status": "ok"})


@router.get(
    "/readyz",
    responses={503: {"description": "not ready; `reasons` says why"}},
)
async def readyz(bridge: BridgeDep) -> JSONResponse:
    """Readiness: 200 when the broker answers (the topics were found at start and are
    re-read every refresh) and at least one worker announces live slots; else 503 with the
    reasons, so a load balancer sends requests elsewhere meanwhile."""
    reader = bridge.reader
    reasons = []
    if not reader.reachability.up:
        reasons.append(str(reader.reachability.error()))
    if not reader.slot_view.live(now_ms()):
        reasons.append(
            "no worker is alive: no live GPU slot in the slot table (start `inference-allocator "
            "worker`)"
        )
    if reasons:
        return JSONResponse({"status": "unavailable", "reasons": reasons}, status_code=503)
    return JSONResponse({"status": "ready"})


@router.get(
    "/metrics",
    include_in_schema=True,
    responses={
        200: {
            "description": "Prometheus's text exposition format",
            "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
        }
    },
)
async def metrics(bridge: BridgeDep) -> Response:
    """Prometheus metrics (never needs a key, like the probes: restrict it by network)."""
    return Response(bridge.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
