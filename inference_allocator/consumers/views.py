"""Read models of the cluster: the slot table and the request backlog."""

from __future__ import annotations

from collections import Counter, OrderedDict, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition

from ..schemas import (
    DEFAULT_TENANT,
    PRIORITIES,
    ModelList,
    ModelStatus,
    PoolStatus,
    Priority,
    SlotRecord,
    SystemStatus,
    TenantStatus,
    WorkerStatus,
    now_ms,
)
from ..topics import Topics

#: later than any record expires
_NEVER = 2**63


def _expired(slot: SlotRecord, now: int) -> bool:
    return slot.expires_at_ms is not None and slot.expires_at_ms <= now


class SlotTableView:
    """The latest state of every GPU slot, folded from the compacted slot-table topic.

    A slot whose record expired belongs to a worker that stopped renewing it: it counts
    neither as available nor as busy, but as expired. The ids of requests whose lease ended
    lately are kept (``ran``): one that has run but whose answer is not read yet is
    finishing, not queued.
    """

    RAN_REMEMBERED = 10_000

    def __init__(self) -> None:
        self.slots: dict[str, SlotRecord] = {}
        self.ran: OrderedDict[str, SlotRecord] = OrderedDict()
        # ``live`` and ``leased`` are asked for on every request a bridge admits; they
        # change only when a record is applied or a live slot's record expires.
        self._live: list[SlotRecord] | None = None
        self._live_until = 0
        self._leased: list[SlotRecord] | None = None

    def apply(self, slot_id: str, record: SlotRecord | None) -> None:
        self._live = self._leased = None
        before = self.slots.get(slot_id)
        if record is None:
            self.slots.pop(slot_id, None)
        else:
            self.slots[slot_id] = record
        if (
            before is not None
            and before.request_id
            and (record is None or record.request_id != before.request_id)
        ):
            self.ran[before.request_id] = before
            if len(self.ran) > self.RAN_REMEMBERED:
                self.ran.popitem(last=False)

    def lease_of(self, request_id: str, now: int) -> SlotRecord | None:
        """The live lease running ``request_id``, or None."""
        for slot in self.leased(now):
            if slot.request_id == request_id:
                return slot
        return None

    def live(self, now: int) -> list[SlotRecord]:
        """The slots whose record has not expired (the same list until the table changes:
        read it, do not change it)."""
        if self._live is None or now >= self._live_until:
            self._live = [s for s in self.slots.values() if not _expired(s, now)]
            self._live_until = min(
                (s.expires_at_ms for s in self._live if s.expires_at_ms is not None),
                default=_NEVER,
            )
            self._leased = None
        return self._live

    def leased(self, now: int) -> list[SlotRecord]:
        """Live leases (read it, do not change it)."""
        live = self.live(now)
        if self._leased is None:
            self._leased = [s for s in live if s.state == "leased"]
        return self._leased


def workers(live: list[SlotRecord]) -> list[WorkerStatus]:
    """The workers owning ``live`` slots, with their totals."""
    total: dict[str, int] = defaultdict(int)
    busy: dict[str, int] = defaultdict(int)
    for slot in live:
        total[slot.worker_id] += 1
        busy[slot.worker_id] += slot.state == "leased"
    return [
        WorkerStatus(worker_id=w, gpus_total=total[w], gpus_busy=busy[w]) for w in sorted(total)
    ]


@dataclass
class BacklogView:
    """Requests on the request topics that the worker group has not answered yet.

    ``highwater`` comes from ListOffsets, or on Tansu from fetch responses (its ListOffsets
    is wrong after batched produces), and ``committed`` from the worker group's commits.
    """

    topics: Topics
    highwater: dict[TopicPartition, int] = field(default_factory=dict)
    committed: dict[TopicPartition, int] = field(default_factory=dict)
    log_start: dict[TopicPartition, int] = field(default_factory=dict)

    def unanswered(self) -> dict[Priority, int]:
        depth = {p: 0 for p in PRIORITIES}
        for tp, high in self.highwater.items():
            start = self.committed.get(tp, self.log_start.get(tp, 0))
            depth[self.topics.priority_of(tp.topic)] += max(0, high - start)
        return depth


def waiting(backlog: BacklogView, leased: list[SlotRecord]) -> dict[Priority, int]:
    """Requests not yet started, per level: unanswered ones minus those holding a slot."""
    depth = backlog.unanswered()
    for lease in leased:
        if lease.priority is not None:
            depth[lease.priority] = max(0, depth[lease.priority] - 1)
    return depth


def system_status(
    slots: SlotTableView, backlog: BacklogView, windows: Iterable[dict[str, Any]] = ()
) -> SystemStatus:
    """What ``GET /api/v1/status`` reports. A slot of a pool whose server does not answer
    (``down``) is neither available nor busy. ``windows``: the latest closed statistics
    windows, for the tenants' shares."""
    live = slots.live(now_ms())
    leased = [s for s in live if s.state == "leased"]
    depth = waiting(backlog, leased)
    return SystemStatus(
        queue_size=sum(depth.values()),
        gpus_available=sum(s.state == "free" for s in live),
        gpus_busy=len(leased),
        gpus_expired=len(slots.slots) - len(live),
        queue_depth=depth,
        workers=workers(live),
        pools=pools(live),
        tenants=tenants(leased, windows),
    )


def tenants(leased: list[SlotRecord], windows: Iterable[dict[str, Any]]) -> list[TenantStatus]:
    """Each tenant's running requests per level (from the leases), and its tokens and
    share at that level in the latest closed window of the shortest length (summed over
    the models; a level without answers in that window shows none)."""
    running = Counter(
        (slot.tenant or DEFAULT_TENANT, slot.priority) for slot in leased if slot.priority
    )
    closed = [w for w in windows if _length(w) is not None]
    shortest = min((_length(w) for w in closed), default=None)
    latest = [w for w in closed if _length(w) == shortest]
    newest = max((w["end_ms"] for w in latest), default=None)
    tokens: dict[tuple[str, Priority], int] = Counter()
    for window in latest:
        if window["end_ms"] != newest or window.get("priority") not in _LEVELS:
            continue
        for tenant, served in (window.get("tenants") or {}).items():
            if isinstance(served, int):
                tokens[(tenant, _LEVELS[window["priority"]])] += served
    by_level: Counter[Priority] = Counter()
    for (_, level), served in tokens.items():
        by_level[level] += served
    found = []
    for tenant, level in sorted(set(running) | set(tokens), key=lambda k: (k[1].rank, k[0])):
        served = tokens.get((tenant, level))
        found.append(
            TenantStatus(
                tenant=tenant,
                priority=level,
                running=running.get((tenant, level), 0),
                tokens=served,
                share=round(served / by_level[level], 3) if served and by_level[level] else None,
                window=latest[0].get("window") if served is not None else None,
                window_end_ms=newest if served is not None else None,
            )
        )
    return found


def _length(window: dict[str, Any]) -> int | None:
    try:
        return int(window["end_ms"]) - int(window["start_ms"])
    except (KeyError, TypeError, ValueError):
        return None


_LEVELS = {p.value: p for p in PRIORITIES}


def pools(live: list[SlotRecord]) -> list[PoolStatus]:
    """Every pool with live slots, summed over the workers that run it."""
    by_name: dict[str, list[SlotRecord]] = defaultdict(list)
    for slot in live:
        by_name[slot.pool or "mock"].append(slot)
    found = []
    for name in sorted(by_name):
        members = by_name[name]
        down = sum(s.state == "down" for s in members)
        found.append(
            PoolStatus(
                name=name,
                endpoint=members[0].endpoint,
                models=sorted({m for s in members for m in (s.models or ["*"])}),
                slots=len(members),
                free=sum(s.state == "free" for s in members),
                busy=sum(s.state == "leased" for s in members),
                down=down,
                up=down == 0,
            )
        )
    return found


def model_list(live: list[SlotRecord]) -> ModelList:
    """What ``GET /api/v1/models`` reports: each served model, its pools, its slots."""
    found: dict[str, list[SlotRecord]] = defaultdict(list)
    for slot in live:
        for model in slot.models or ["*"]:
            found[model].append(slot)
    return ModelList(
        models=[
            ModelStatus(
                model=model,
                pools=sorted({s.pool or "mock" for s in members}),
                free=sum(s.state == "free" for s in members),
                busy=sum(s.state == "leased" for s in members),
            )
            for model, members in sorted(found.items())
        ]
    )


def down_pools(live: list[SlotRecord], model: str) -> list[str]:
    """The pools that serve ``model`` when every one of them is down (its slots say so);
    empty while one of them can run it, or when none is known."""
    serving = [s for s in live if model in (s.models or ["*"]) or "*" in (s.models or ["*"])]
    if not serving or any(s.state != "down" for s in serving):
        return []
    return sorted({s.pool or "mock" for s in serving})


def served_models(live: list[SlotRecord]) -> set[str] | None:
    """The models the live fleet serves, or None when it cannot refuse any: no slot is
    known yet, or some pool takes any model (``*``)."""
    models = {m for slot in live for m in (slot.models or ["*"])}
    if not models or "*" in models:
        return None
    return models
