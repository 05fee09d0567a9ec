"""Every answer record a worker writes, built here: a run's answer, the answer to a request
that never got a slot (expired, cancelled), and the error answer to a record refused to the
dead-letter queue (so that a caller waiting on its id is not left to time out)."""

from __future__ import annotations

from ..fleet.backends import Completion
from ..schemas import Priority, ResponseRecord
from .waiting import Pending


def ran(
    pending: Pending,
    *,
    status: str,
    completion: Completion,
    error: str | None,
    gpu_id: int,
    pool: str,
    worker_id: str,
    leased_at_ms: int,
    inference_ms: float,
    completed_at_ms: int,
) -> ResponseRecord:
    """The answer of a run on slot ``gpu_id`` (ok, error, or cancelled while it ran)."""
    request = pending.request
    return ResponseRecord(
        request_id=pending.request_id,
        model_id=request.model_id,
        status=status,
        output=completion.text if status == "ok" else None,
        gpu_id=gpu_id,
        worker_id=worker_id,
        priority=pending.priority,
        pool=pool,
        finish_reason=completion.finish_reason,
        usage=completion.usage,
        tenant=request.tenant,
        fingerprint=request.fingerprint,
        preemptions=pending.preemptions or None,
        inference_time_ms=round(inference_ms, 3),
        queue_time_ms=queue_time(pending, leased_at_ms),
        started_at_ms=leased_at_ms,
        completed_at_ms=completed_at_ms,
        error=error,
        origin=pending.origin,
    )


def not_run(
    pending: Pending, *, status: str, error: str, worker_id: str, now: int
) -> ResponseRecord:
    """The answer to a request that never got a slot."""
    return ResponseRecord(
        request_id=pending.request_id,
        model_id=pending.request.model_id,
        status=status,
        worker_id=worker_id,
        priority=pending.priority,
        queue_time_ms=queue_time(pending, now),
        completed_at_ms=now,
        tenant=pending.request.tenant,
        fingerprint=pending.request.fingerprint,
        error=error,
        origin=pending.origin,
    )


def refused(
    request_id: str, *, priority: Priority, worker_id: str, reason: str, now: int
) -> ResponseRecord:
    """The error answer to a record that went to the dead-letter queue (it never ran, so it
    names no origin: a valid record of the same id may still run)."""
    return ResponseRecord(
        request_id=request_id,
        status="error",
        worker_id=worker_id,
        priority=priority,
        completed_at_ms=now,
        error=reason,
    )


def queue_time(pending: Pending, until_ms: int) -> float:
    """Milliseconds from the request's submission (or its record's time) to ``until_ms``."""
    since = pending.request.submitted_at_ms or pending.timestamp_ms
    return float(max(0, until_ms - since))
