"""Messages on the wire: HTTP bodies and the JSON values of every Kafka topic.

Kafka messages ignore fields they do not know, so producers can add fields before every
consumer has been upgraded; every field added later must have a default.
"""

from __future__ import annotations

import enum
import hashlib
import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictStr


def now_ms() -> int:
    """Wall-clock milliseconds since the epoch: the time unit of every message."""
    return time.time_ns() // 1_000_000


class Priority(enum.StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        """0 for the most urgent level."""
        return _RANK[self]


_RANK = {Priority.HIGH: 0, Priority.MEDIUM: 1, Priority.LOW: 2}
PRIORITIES: tuple[Priority, ...] = (Priority.HIGH, Priority.MEDIUM, Priority.LOW)


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", use_enum_values=False)


# --- HTTP -------------------------------------------------------------------------------

#: what a client-chosen request id (or ``Idempotency-Key``) may be: safe in a URL path
REQUEST_ID_PATTERN = r"^[A-Za-z0-9._:~-]+$"
REQUEST_ID_MAX = 200
SESSION_ID_MAX = 256
#: an ``X-Session-Id`` or ``X-Tenant`` header's value: visible ASCII, as a header carries it
SESSION_HEADER_PATTERN = r"^[!-~]+$"
TENANT_MAX = 128


class InferenceRequest(BaseModel):
    """Body of ``POST /api/v1/inference``."""

    model_config = ConfigDict(extra="ignore")

    model_id: StrictStr = Field(min_length=1, max_length=256)
    prompt: StrictStr = Field(min_length=1)
    priority: Priority = Priority.MEDIUM
    params: dict[str, Any] | None = Field(
        None,
        description="generation parameters passed to the model server as they are "
        "(max_tokens, temperature, top_p, stop, seed, ...)",
    )
    timeout_seconds: float | None = Field(
        None,
        ge=0.001,
        description="this request's deadline, from 1 ms to INFERENCE_REQUEST_TIMEOUT_SECONDS "
        "(the default): no worker starts it later, and the bridge answers 504 then",
    )
    request_id: StrictStr | None = Field(
        None,
        min_length=1,
        max_length=REQUEST_ID_MAX,
        pattern=REQUEST_ID_PATTERN,
        description="your own id (or the Idempotency-Key header): a retry with the same id "
        "while it waits, runs or is retained gets the same answer, and runs nothing again; "
        "the same id with another model_id, prompt or params is refused (422)",
    )
    session_id: StrictStr | None = Field(
        None,
        min_length=1,
        max_length=SESSION_ID_MAX,
        description="a conversation's key (or the X-Session-Id header): its turns go to the "
        "model server that ran its last one while that server has a free slot, where its "
        "context is likely still cached",
    )

    def fingerprint(self) -> str:
        """What makes a retry the same request: its model, prompt and parameters (not its
        priority or deadline, which a retry may change)."""
        content = json.dumps(
            [self.model_id, self.prompt, self.params], sort_keys=True, separators=(",", ":")
        )
        return hashlib.sha256(content.encode()).hexdigest()[:32]


class InferenceResult(BaseModel):
    """200 body of ``POST /api/v1/inference``."""

    request_id: str
    model_id: str
    output: str
    gpu_id: int
    inference_time_ms: float
    queue_time_ms: float | None = None
    worker_id: str | None = None
    priority: Priority | None = None
    pool: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    preemptions: int | None = Field(
        None, description="how often its run was cut short for a more urgent request"
    )

    @classmethod
    def of(cls, response: ResponseRecord, model_id: str | None = None) -> InferenceResult:
        """The result of an ``ok`` answer."""
        return cls(
            request_id=response.request_id,
            model_id=response.model_id or model_id or "",
            output=response.output or "",
            gpu_id=response.gpu_id if response.gpu_id is not None else -1,
            inference_time_ms=response.inference_time_ms or 0.0,
            queue_time_ms=response.queue_time_ms,
            worker_id=response.worker_id,
            priority=response.priority,
            pool=response.pool,
            finish_reason=response.finish_reason,
            usage=response.usage,
            preemptions=response.preemptions,
        )


RequestStatus = Literal["queued", "running", "ok", "error", "expired", "cancelled"]


class RequestState(BaseModel):
    """Body of ``GET /api/v1/inference/{request_id}``, and of a 202 to ``Prefer:
    respond-async``: where a request is, and once answered, its answer."""

    request_id: str
    status: str  # RequestStatus (an answer's status, which newer workers may extend)
    priority: Priority | None = None
    model_id: str | None = None
    worker_id: str | None = None
    gpu_id: int | None = None
    pool: str | None = None
    started_at_ms: int | None = None
    completed_at_ms: int | None = None
    result: InferenceResult | None = Field(None, description="once status is ok")
    error: str | None = Field(None, description="once status is error, expired or cancelled")

    @classmethod
    def answered(cls, response: ResponseRecord) -> RequestState:
        return cls(
            request_id=response.request_id,
            status=response.status,
            priority=response.priority,
            model_id=response.model_id,
            worker_id=response.worker_id,
            gpu_id=response.gpu_id,
            pool=response.pool,
            started_at_ms=response.started_at_ms,
            completed_at_ms=response.completed_at_ms,
            result=InferenceResult.of(response) if response.status == "ok" else None,
            error=response.error,
        )


class WorkerStatus(BaseModel):
    worker_id: str
    gpus_total: int
    gpus_busy: int


class PoolStatus(BaseModel):
    """One pool of the fleet, across every worker that runs it."""

    name: str
    endpoint: str | None = None
    models: list[str]
    slots: int
    free: int
    busy: int
    down: int
    up: bool


#: the tenant of a request that names none
DEFAULT_TENANT = "default"


class TenantStatus(BaseModel):
    """One tenant at one level: the slots it holds now and its share of the tokens served
    there in the latest closed statistics window (when the statistics agent runs)."""

    tenant: str
    priority: Priority
    running: int
    #: prompt and completion tokens of its answers in that window, summed over models
    tokens: int | None = None
    #: ``tokens`` over every tenant's at that level in that window
    share: float | None = None
    #: that window's length, e.g. ``10s``, and when it ended
    window: str | None = None
    window_end_ms: int | None = None


class SystemStatus(BaseModel):
    """Body of ``GET /api/v1/status``."""

    queue_size: int
    gpus_available: int
    gpus_busy: int
    gpus_expired: int = 0
    queue_depth: dict[Priority, int]
    workers: list[WorkerStatus]
    pools: list[PoolStatus] = []
    tenants: list[TenantStatus] = []
    #: false while the bridge's requests to the broker go unanswered (the rest is then the
    #: last known state)
    broker_reachable: bool = True
    broker_error: str | None = None


class ModelStatus(BaseModel):
    model: str
    pools: list[str]
    free: int
    busy: int


class ModelList(BaseModel):
    """Body of ``GET /api/v1/models``."""

    models: list[ModelStatus]


# --- Kafka ------------------------------------------------------------------------------


class RequestRecord(_Wire):
    """Value on ``<prefix>.requests.{high,medium,low}``; key is ``request_id``.

    Hand-written records may leave out ``request_id`` (the key or the record's position
    stands in), ``priority`` (the topic decides) and the timestamps.
    """

    request_id: str | None = Field(None, min_length=1)
    model_id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    priority: Priority | None = None
    deadline_ms: int | None = None
    submitted_at_ms: int | None = None
    params: dict[str, Any] | None = None
    tenant: str | None = None  # the name of the API key it came with (audit, metrics)
    #: chat messages for the model server (OpenAI's format); ``prompt`` then renders them
    messages: list[dict[str, Any]] | None = None
    #: the model server API to call: ``chat`` (the default: the messages, or the prompt as
    #: one user message) or ``completions`` (the prompt as it is)
    api: Literal["chat", "completions"] | None = None
    #: stream the text as it is generated, as chunk records on ``<prefix>.chunks``
    stream: bool | None = None
    #: of the body, for a request sent with the client's own id (``InferenceRequest.
    #: fingerprint``): a later request of that id with another fingerprint is refused
    fingerprint: str | None = None
    #: a conversation's key (``X-Session-Id``, or the OpenAI body's ``user``): its turns go
    #: to the server that ran its last one while that server has room (prefix routing)
    session: str | None = None
    #: work that fills idle slots (a batch's line): a request of its level or above that
    #: finds no free slot may preempt its run, as it preempts runs of a lower level
    background: bool | None = None


#: the record header that carries a request record's ``fingerprint``
FINGERPRINT_HEADER = "fingerprint"

ResponseStatus = Literal["ok", "error", "expired", "cancelled"]


class ResponseRecord(_Wire):
    """Value on ``<prefix>.responses``; key is ``request_id``."""

    request_id: str
    model_id: str | None = None
    status: str  # ResponseStatus, kept open so newer workers may add statuses
    output: str | None = None
    gpu_id: int | None = None
    worker_id: str | None = None
    priority: Priority | None = None
    inference_time_ms: float | None = None
    queue_time_ms: float | None = None
    started_at_ms: int | None = None
    completed_at_ms: int | None = None
    error: str | None = None
    pool: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    tenant: str | None = None  # the request's, copied
    fingerprint: str | None = None  # the request's, copied
    #: how often its run was preempted for a more urgent request before this one
    preemptions: int | None = None
    #: the request record answered, ``topic:partition:offset`` (a retry of the same id is
    #: another record; a redelivery after a crash or a rebalance is the same one)
    origin: str | None = None


class ChunkRecord(_Wire):
    """Value on ``<prefix>.chunks``; key is ``request_id``. The text of a streamed request
    as it is generated, in order (``seq`` from 0), ending with a record that has ``done``
    (with the answer's ``status``, and ``finish_reason``/``usage`` or ``error``), written
    before the answer goes to ``<prefix>.responses``. A run that starts again (its worker
    died) has another ``attempt`` and starts again at ``seq`` 0."""

    request_id: str
    attempt: str
    seq: int
    text: str = ""
    done: bool = False
    status: str | None = None
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    error: str | None = None
    worker_id: str | None = None


class CancelRecord(_Wire):
    """Value on ``<prefix>.cancellations``; key is the ``request_id`` to cancel."""

    request_id: str = Field(min_length=1)
    requested_at_ms: int | None = None
    tenant: str | None = None


class SlotRecord(_Wire):
    """Value on the compacted ``<prefix>.gpu-slots``; key is ``slot_id``.

    ``expires_at_ms`` is renewed by the owning worker's heartbeat; past it, the slot (free
    or leased) belongs to a worker that stopped answering. A tombstone (null value) means
    the slot no longer exists (its worker stopped cleanly).
    """

    slot_id: str
    worker_id: str
    gpu_id: int
    state: Literal["free", "leased", "down"]  # down: its pool's server does not answer
    pool: str | None = None
    endpoint: str | None = None
    models: list[str] | None = None  # what the pool serves; "*" for any model
    model: str | None = None  # the model the slot ran last (loaded, for warm affinity)
    request_id: str | None = None
    priority: Priority | None = None
    tenant: str | None = None  # the leased request's
    leased_at_ms: int | None = None
    expires_at_ms: int | None = None
    updated_at_ms: int


class DeadLetter(_Wire):
    """Value on ``<prefix>.dlq``: a record that could not be decoded, and why."""

    reason: str
    topic: str
    partition: int
    offset: int
    key: str | None = None
    value: str | None = None
    request_id: str | None = None
    worker_id: str | None = None
    failed_at_ms: int
