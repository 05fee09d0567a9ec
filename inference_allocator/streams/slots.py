"""The worker's GPU slots: blocking acquire, release that wakes the next waiter, leases."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from json.encoder import encode_basestring

from ..schemas import Priority, SlotRecord, now_ms

_HISTORY = 100_000


@dataclass
class SlotUsage:
    """How well slots are kept busy: counts, busy time, release times, and each slot's idle
    gap between a release and its next lease (the allocator's own overhead under a backlog).

    Times are ``time.perf_counter()`` seconds; the histories keep the latest 100,000.
    """

    leases: int = 0
    releases: int = 0
    busy_s: float = 0.0
    first_lease_at: float | None = None
    last_release_at: float | None = None
    idle_gaps_s: deque[float] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    release_times: deque[float] = field(default_factory=lambda: deque(maxlen=_HISTORY))
    _leased_at: dict[int, float] = field(default_factory=dict)
    _released_at: dict[int, float] = field(default_factory=dict)

    def leased(self, gpu_id: int) -> float:
        """Count a lease of ``gpu_id`` now; returns the clock reading."""
        clock = time.perf_counter()
        self.leases += 1
        if self.first_lease_at is None:
            self.first_lease_at = clock
        released = self._released_at.pop(gpu_id, None)
        if released is not None:
            self.idle_gaps_s.append(clock - released)
        self._leased_at[gpu_id] = clock
        return clock

    def released(self, gpu_id: int) -> float:
        """Count the release of a leased ``gpu_id`` now; returns the clock reading."""
        clock = time.perf_counter()
        self.releases += 1
        self.busy_s += clock - self._leased_at.pop(gpu_id, clock)
        self.last_release_at = clock
        self.release_times.append(clock)
        self._released_at[gpu_id] = clock
        return clock


@dataclass(slots=True)
class Lease:
    """A slot granted to one request until ``expires_at_ms``."""

    slot_id: str
    gpu_id: int
    request_id: str
    priority: Priority
    leased_at_ms: int
    expires_at_ms: int
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class SlotState:
    """One state of a slot as it goes to the slot table: its key, its state, and the value
    (a ``SlotRecord``'s JSON, encoded by ``SlotTable`` without building one)."""

    slot_id: str
    state: str  # free, leased, down, or parked (value None: the slot leaves the table)
    value: bytes | None

    def record(self) -> SlotRecord:
        assert self.value is not None, "a parked slot has no record"
        return SlotRecord.model_validate_json(self.value)


@dataclass(frozen=True, slots=True)
class SlotInfo:
    """What a slot's records say of its pool."""

    pool: str = "mock"
    endpoint: str | None = None
    models: tuple[str, ...] = ("*",)


class SlotTable:
    """``gpu_count`` slots of one worker.

    Every record carries ``expires_at_ms``: a lease's expiry, or for a free slot how long
    the announcement holds. The worker renews both with ``snapshot()`` (its heartbeat).

    ``acquire()`` waits on a future (no polling) when every slot is taken; ``release()``
    hands the slot straight to the longest-waiting caller. Each change of a slot's state is
    returned as a ``SlotState`` that the worker writes to the slot-table topic.
    """

    def __init__(
        self,
        worker_id: str,
        gpu_count: int,
        lease_ttl_ms: int,
        layout: list[SlotInfo] | None = None,
    ):
        self.worker_id = worker_id
        self.gpu_count = gpu_count
        self.lease_ttl_ms = lease_ttl_ms
        self.layout = layout or [SlotInfo()] * gpu_count
        assert len(self.layout) == gpu_count
        self._free: deque[int] = deque(range(gpu_count))
        self._waiters: deque[asyncio.Future[int]] = deque()
        self._leases: dict[int, Lease] = {}
        self._down: set[int] = set()
        self._model: dict[int, str] = {}
        #: slots above a pool's current limit (``slots = "auto"``): out of the table, never
        #: free; and leased ones that park once their run ends
        self._parked: set[int] = set()
        self._to_park: set[int] = set()
        self.usage = SlotUsage()
        # What never changes in a slot's records, encoded once (by pydantic, so the JSON
        # is the schema's): the object without its closing brace.
        self._slot_ids = [f"{worker_id}/{self.layout[g].pool}/{g}" for g in range(gpu_count)]
        self._heads = [self._head(g) for g in range(gpu_count)]

    def slot_id(self, gpu_id: int) -> str:
        return self._slot_ids[gpu_id]

    def model_of(self, gpu_id: int) -> str | None:
        """The model the slot ran last (loaded, where loading is a cost)."""
        return self._model.get(gpu_id)

    def free_ids(self) -> list[int]:
        """Free slots, the longest free first."""
        return list(self._free)

    def take(self, gpu_id: int) -> None:
        """Take one particular free slot (dispatch by pool)."""
        self._free.remove(gpu_id)

    def set_down(self, gpu_ids: range, down: bool) -> list[SlotState]:
        """Mark a pool's slots down (its server does not answer) or up; their records."""
        if down:
            self._down.update(gpu_ids)
        else:
            self._down.difference_update(gpu_ids)
        now = now_ms()
        return [self._record(g, self._leases.get(g), now) for g in gpu_ids if g not in self._parked]

    def active(self, gpu_ids: range) -> int:
        """How many of ``gpu_ids`` are in use or may be (not parked, nor parking)."""
        return sum(1 for g in gpu_ids if g not in self._parked and g not in self._to_park)

    def leased_in(self, gpu_ids: range) -> int:
        """How many of ``gpu_ids`` are leased."""
        return sum(1 for g in gpu_ids if g in self._leases)

    def parked_or_parking(self, gpu_id: int) -> bool:
        return gpu_id in self._parked or gpu_id in self._to_park

    def parking(self, gpu_id: int) -> bool:
        """Whether the slot parks once its run ends (it takes no next request)."""
        return gpu_id in self._to_park

    def park(self, gpu_ids: list[int]) -> list[SlotState]:
        """Take slots out of use (a pool's limit went down): a free one at once (its
        tombstone returned), a leased one once its run ends."""
        parked = []
        for gpu_id in gpu_ids:
            if gpu_id in self._parked or gpu_id in self._to_park:
                continue
            if gpu_id in self._free:
                self._free.remove(gpu_id)
                self._parked.add(gpu_id)
                parked.append(SlotState(self._slot_ids[gpu_id], "parked", None))
            else:
                self._to_park.add(gpu_id)
        return parked

    def unpark(self, gpu_ids: list[int]) -> list[SlotState]:
        """Put slots back in use (a pool's limit went up); the records of those that were
        out of the table."""
        records = []
        now = now_ms()
        for gpu_id in gpu_ids:
            if gpu_id in self._to_park:
                self._to_park.discard(gpu_id)
            elif gpu_id in self._parked:
                self._parked.discard(gpu_id)
                self._give_back(gpu_id)
                records.append(self._record(gpu_id, None, now))
        return records

    @property
    def available(self) -> int:
        return len(self._free)

    @property
    def busy(self) -> int:
        return self.gpu_count - len(self._free)

    async def acquire(self) -> int:
        """Wait for a free slot and take it; returns its ``gpu_id``."""
        if self._free and not self._waiters:
            return self._free.popleft()
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._give_back(waiter.result())  # granted as we were cancelled
            else:
                self._waiters.remove(waiter)
            raise

    def lease(
        self,
        gpu_id: int,
        request_id: str,
        priority: Priority,
        model_id: str | None = None,
        tenant: str | None = None,
    ) -> tuple[Lease, SlotState]:
        """Bind an acquired slot to a request (for ``model_id``, of ``tenant``)."""
        now = now_ms()
        if model_id is not None:
            self._model[gpu_id] = model_id
        lease = Lease(
            self.slot_id(gpu_id),
            gpu_id,
            request_id,
            priority,
            now,
            now + self.lease_ttl_ms,
            tenant,
        )
        self._leases[gpu_id] = lease
        self.usage.leased(gpu_id)
        return lease, self._record(gpu_id, lease, now)

    def end_lease(self, gpu_id: int) -> None:
        """End a slot's lease and keep the slot: its next lease follows at once (the free
        state in between is never written)."""
        if self._leases.pop(gpu_id, None) is not None:
            self.usage.released(gpu_id)

    def release(self, gpu_id: int) -> SlotState:
        """Free a slot (leased or only acquired) and wake the next waiter; or park it, if
        its pool's limit went down meanwhile."""
        self.end_lease(gpu_id)
        if gpu_id in self._to_park:
            self._to_park.discard(gpu_id)
            self._parked.add(gpu_id)
            return SlotState(self._slot_ids[gpu_id], "parked", None)
        self._give_back(gpu_id)
        return self._record(gpu_id, None, now_ms())

    def _give_back(self, gpu_id: int) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(gpu_id)
                return
        self._free.append(gpu_id)

    def counts(self) -> dict[str, int]:
        """How many slots are free, leased and down (the worker's gauges): read only, where
        ``snapshot`` renews every expiry."""
        leased = len(self._leases)
        down = sum(1 for g in self._down if g not in self._leases and g not in self._parked)
        parked = len(self._parked)
        return {
            "free": self.gpu_count - leased - down - parked,
            "leased": leased,
            "down": down,
            "parked": parked,
        }

    def snapshot(self) -> list[SlotState]:
        """Every slot's state with its expiry renewed: the worker's heartbeat.

        A live worker republishes this well within the TTL, so a long inference keeps its
        lease; a worker that died stops, and all its slots show as expired.
        """
        now = now_ms()
        for lease in self._leases.values():
            lease.expires_at_ms = now + self.lease_ttl_ms
        return [
            self._record(g, self._leases.get(g), now)
            for g in range(self.gpu_count)
            if g not in self._parked
        ]

    def _head(self, gpu_id: int) -> str:
        info = self.layout[gpu_id]
        static = SlotRecord(
            slot_id=self.slot_id(gpu_id),
            worker_id=self.worker_id,
            gpu_id=gpu_id,
            state="free",
            pool=info.pool,
            endpoint=info.endpoint,
            models=list(info.models),
            updated_at_ms=0,
        )
        fields = {"slot_id", "worker_id", "gpu_id", "pool", "endpoint", "models"}
        return static.model_dump_json(include=fields, exclude_none=True)[:-1]

    def _record(self, gpu_id: int, lease: Lease | None, now: int) -> SlotState:
        """The slot's state as a ``SlotRecord``'s JSON, written by hand from the encoded
        head (building the model and dumping it, twice per request, cost several times
        more)."""
        model = self._model.get(gpu_id)
        loaded = "" if model is None else f',"model":{encode_basestring(model)}'
        if lease is None:
            state = "down" if gpu_id in self._down else "free"
            value = (
                f'{self._heads[gpu_id]},"state":"{state}"{loaded},'
                f'"expires_at_ms":{now + self.lease_ttl_ms},"updated_at_ms":{now}}}'
            )
        else:
            state = "leased"
            tenant = "" if lease.tenant is None else f',"tenant":{encode_basestring(lease.tenant)}'
            value = (
                f'{self._heads[gpu_id]},"state":"leased"{loaded},'
                f'"request_id":{encode_basestring(lease.request_id)},'
                f'"priority":"{lease.priority.value}"{tenant},"leased_at_ms":{lease.leased_at_ms},'
                f'"expires_at_ms":{lease.expires_at_ms},"updated_at_ms":{now}}}'
            )
        return SlotState(self._slot_ids[gpu_id], state, value.encode())
