"""The scheduling decision: which waiting request a free GPU slot takes.

One place decides, with no I/O and no waiting, so the decision can be tested on its own and
grow here (as vLLM's ``v1/core/sched/`` and the Gateway API inference extension's
``scheduling/`` keep theirs apart); the worker's runs act on what it returns.

* **Which level**: ageing first (a level's oldest request past its ``max_wait_ms`` goes
  before every other level), else the policy (strict or weighted) among the levels that
  have a request the slot can run. Within the level, the oldest such request (FIFO); with
  ``fair`` and several tenants waiting there, the oldest of the tenant served least so far
  (``fair_share.py``). An ageing bound is a promise: the aged request goes, whoever's.
* **Fast path** (every slot runs every model, no pool can go down, no slot loads models):
  any free slot takes that request, and a slot whose run just ended takes its next one at
  once (``next_for``).
* **Routed path**: the longest-free slot of an up pool that has a runnable request takes
  the most urgent request its pool serves (``match``). In a pool whose slots load models,
  a slot that has the request's model loaded is preferred, and a request of the same level
  whose model a free slot has loaded may pass the oldest one, at most ``affinity_window``
  times in a row (warm affinity).
* **Which server** (``match``, with ``affinity``): a request whose pool routes by prefix may
  go to another such pool with a free slot that serves its model and nothing its pool
  does not (so no more urgent request of that pool's could have taken the slot): the one
  whose cache likely holds its session or the longest prefix of its prompt
  (``cache_affinity.py``). Which request goes next does not change.
* **Preemption** (``preemption``): a request that has waited ``preempt_after_ms`` while no
  free slot can run it takes the slot of a run of a lower level in an up pool that serves
  it: the lowest level first, then the run that started last (the least work lost). Only a
  run that started before the request began to wait: one that started later was chosen
  over it on purpose (a weighted share, an ageing bound), and stays. Which runs may be cut
  short (how often each was, whether it streamed text already) the runs say; what is cut
  short waits again at the head of its level.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from aiokafka import TopicPartition

from ..fleet.pools import Fleet, Pool
from ..schemas import Priority, now_ms
from .cache_affinity import CacheAffinity, Option
from .fair_share import FairShare
from .policies import DispatchPolicy, StrictPolicy
from .slots import SlotTable
from .waiting import Candidate, Pending, Serves, WaitingRequests

#: how many of a level's oldest requests a preemption looks at for one it can help
_PREEMPT_SCAN = 16


@dataclass(frozen=True, slots=True)
class Running:
    """A run that may be preempted: its slot, its level, when it started, and whether
    it is background work (a batch's line: below every other request of its level)."""

    gpu_id: int
    priority: Priority
    started_at_ms: int
    background: bool = False

    @property
    def rank(self) -> float:
        """Its level's rank, half a level lower for background work."""
        return self.priority.rank + (0.5 if self.background else 0.0)


class Scheduler:
    """Decides for the free slots of ``slots`` (laid out as ``fleet``'s pools) among the
    requests in ``waiting``, and takes what it chose out of ``waiting``."""

    def __init__(
        self,
        fleet: Fleet,
        slots: SlotTable,
        *,
        policy: DispatchPolicy | None = None,
        max_wait_ms: Mapping[Priority, int] | None = None,
        affinity_window: int = 0,
        preempt_after_ms: int | None = None,
        affinity: CacheAffinity | None = None,
        fair: FairShare | None = None,
        clock: Callable[[], int] = now_ms,
    ):
        self.fleet = fleet
        self.slots = slots
        self.waiting = WaitingRequests()
        self.policy = policy or StrictPolicy()
        # Ageing: no starvation under strict priority, with the bound as the promise.
        self.max_wait_ms = dict(max_wait_ms or {})
        self.affinity_window = affinity_window
        self.preempt_after_ms = preempt_after_ms  # None: never preempt
        self.affinity = affinity  # None: no prefix routing
        self.fair = fair  # None: FIFO within a level, whoever's
        if fair is not None:
            self.waiting.on_backlogged = self._backlogged
            self.waiting.on_idle = fair.idle
        self._clock = clock
        self._skipped: tuple[TopicPartition, int] | None = None  # the oldest passed over
        self._skips = 0
        #: whether slots must be matched to requests by pool (see the module's docstring)
        self.routed = (
            fleet.routed
            or affinity is not None
            or any(pool.can_go_down or pool.loads_models for pool in fleet.pools)
        )

    def pick(self, serves: Serves = None) -> Pending | None:
        """Take the request a slot that runs what ``serves`` allows (None: anything) runs
        next; None when it can run nothing that waits."""
        chosen = self._choose(serves)
        return None if chosen is None else self.waiting.take(chosen)

    def next_for(self, gpu_id: int) -> Pending | None:
        """The request a slot whose run just ended takes at once, keeping its lease's
        place (on the routed path the dispatch loop matches it instead: None)."""
        if self.routed or not len(self.waiting) or self.slots.parking(gpu_id):
            return None
        return self.pick()

    def match(self) -> tuple[int, Pending] | None:
        """Take the next request for the longest-free slot of an up pool that can run one,
        with that slot; None when no free slot can run anything that waits."""
        tried: set[str] = set()
        free = self.slots.free_ids()
        for gpu_id in free:
            pool = self.fleet.pool_of(gpu_id)
            if pool.name in tried or not pool.up:
                continue
            tried.add(pool.name)
            serves = None if pool.any_model else pool.serves
            if pool.loads_models:
                mine = [(g, self.slots.model_of(g)) for g in free if g in pool.gpu_ids]
                match = self.pick_warm(serves, mine)
                if match is not None:
                    return match
                continue
            pending = self.pick(serves)
            if pending is not None:
                if self.affinity is not None and self.affinity.routes(pool.name):
                    gpu_id = self._placed(pending, pool, gpu_id, free)
                return gpu_id, pending
        return None

    def _placed(self, pending: Pending, pool: Pool, gpu_id: int, free: list[int]) -> int:
        """The slot ``pending``, the most urgent request ``pool`` serves, takes: its free
        slot ``gpu_id``, or one of another pool that routes by prefix (see the module's
        docstring) whose server's cache is likelier to hold its context."""
        assert self.affinity is not None
        model = pending.request.model_id
        options = [Option(pool.name, gpu_id, self.slots.leased_in(pool.gpu_ids))]
        seen = {pool.name}
        for other_id in free:
            other = self.fleet.pool_of(other_id)
            if other.name in seen:
                continue
            seen.add(other.name)
            if (
                other.up
                and self.affinity.routes(other.name)
                and other.serves(model)
                and (pool.any_model or set(other.spec.models) <= set(pool.spec.models))
            ):
                options.append(Option(other.name, other_id, self.slots.leased_in(other.gpu_ids)))
        if len(options) == 1:
            self.affinity.record(pool.name, pending.request)
            return gpu_id
        return self.affinity.place(pending.request, options).gpu_id

    def pick_warm(
        self, serves: Serves, free: list[tuple[int, str | None]]
    ) -> tuple[int, Pending] | None:
        """Warm affinity for a pool whose slots load models: ``free`` is its free slots
        (longest free first) with the model each has loaded.

        The level is chosen as ``pick`` chooses it; its oldest runnable request goes to a
        free slot that has its model loaded if there is one. Otherwise a request among the
        next ``affinity_window`` of the *same* level (never another level) whose model a
        free slot has loaded may go first, so a warm slot runs a warm request instead of
        loading; the oldest is passed over at most ``affinity_window`` times in a row.
        Else the oldest goes cold to the longest-free slot.
        """
        chosen = self._choose(serves)
        if chosen is None:
            return None
        warm: dict[str, int] = {}
        for gpu_id, model in free:
            if model is not None:
                warm.setdefault(model, gpu_id)
        model = chosen.pending.request.model_id
        if model in warm:
            return warm[model], self.waiting.take(chosen)
        key = (chosen.tp, chosen.pending.offset)
        if self._skipped != key:
            self._skipped, self._skips = key, 0
        if self._skips < self.affinity_window:
            window = self.waiting.in_order(
                chosen.pending.priority, serves, self.affinity_window + 1
            )
            for later in window[1:]:
                if later.pending.request.model_id in warm:
                    self._skips += 1
                    return warm[later.pending.request.model_id], self.waiting.take(later)
        self._skipped, self._skips = None, 0
        return free[0][0], self.waiting.take(chosen)

    def preemption(self, running: Iterable[Running]) -> tuple[int, Pending] | None:
        """The slot of the run to preempt, with the request that takes it (taken out of
        the waiting ones); None when no request is owed a preemption by a run of
        ``running`` (the runs that may be cut short)."""
        if self.preempt_after_ms is None:
            return None
        runs = list(running)
        if not runs:
            return None
        lowest = max(run.rank for run in runs)
        due = self._clock() - self.preempt_after_ms
        free = [self.fleet.pool_of(g) for g in self.slots.free_ids()]
        free_pools = {pool.name: pool for pool in free if pool.up}.values()
        for level in self.waiting.levels():
            if level.rank >= lowest:
                break  # nothing of a lower level runs
            for candidate in self.waiting.in_order(level, None, _PREEMPT_SCAN):
                if candidate.timestamp_ms > due:
                    break  # oldest first: the rest have waited less
                if candidate.pending.request.background:
                    continue  # background work never preempts
                model = candidate.pending.request.model_id
                if any(pool.serves(model) for pool in free_pools):
                    continue  # a free slot takes it without cutting anything short
                since = candidate.pending.waiting_since_ms
                victims = [
                    run
                    for run in runs
                    if run.rank > level.rank
                    and run.started_at_ms < since
                    and self.fleet.pool_of(run.gpu_id).up
                    and self.fleet.pool_of(run.gpu_id).serves(model)
                ]
                if victims:
                    victim = max(victims, key=lambda run: (run.rank, run.started_at_ms))
                    if self.affinity is not None:
                        pool_name = self.fleet.pool_of(victim.gpu_id).name
                        self.affinity.record(pool_name, candidate.pending.request)
                    return victim.gpu_id, self.waiting.take(candidate)
        return None

    def preemption_due_in_ms(self, running: Iterable[Running]) -> int | None:
        """How long until a waiting request that may preempt one of ``running`` (the runs
        that may be cut short: of a lower level, or background work of its own) has waited
        long enough (0: one has); None when preemption is off or none waits."""
        if self.preempt_after_ms is None:
            return None
        lowest = max((run.rank for run in running), default=None)
        if lowest is None:
            return None
        oldest = [
            candidate.timestamp_ms
            for level in self.waiting.levels()
            if level.rank < lowest and (candidate := self._may_preempt(level)) is not None
        ]
        if not oldest:
            return None
        return max(0, min(oldest) + self.preempt_after_ms - self._clock())

    def _may_preempt(self, level: Priority) -> Candidate | None:
        """The oldest request of ``level`` that may preempt a run (background work never
        does), among the first few."""
        for candidate in self.waiting.in_order(level, None, _PREEMPT_SCAN):
            if not candidate.pending.request.background:
                return candidate
        return None

    def _choose(self, serves: Serves) -> Candidate | None:
        """The runnable request that goes next: of the level that goes next, the oldest (of
        the tenant served least, with fair shares)."""
        if serves is None and not self.max_wait_ms:  # every level that waits can run
            levels = self.waiting.levels()
            if not levels:
                return None
            level = self.policy.choose(levels)
            return self._fairest(level, None) or self.waiting.oldest(level)
        candidates = {}
        for level in self.waiting.levels():
            oldest = self.waiting.oldest(level, serves)
            if oldest is not None:
                candidates[level] = oldest
        if not candidates:
            return None
        aged = self._aged(candidates) if self.max_wait_ms else None
        if aged is not None:
            return candidates[aged]
        level = self.policy.choose(list(candidates))  # most urgent first, as levels() gives
        return self._fairest(level, serves) or candidates[level]

    def _fairest(self, level: Priority, serves: Serves) -> Candidate | None:
        """With fair shares and several tenants with a runnable request at ``level``: the
        oldest of the one with the smallest counter; else None (the oldest goes)."""
        if self.fair is None or len(self.waiting.tenants(level)) < 2:
            return None
        tenants = self.waiting.runnable_tenants(level, serves)
        if len(tenants) < 2:
            return None
        return self.waiting.oldest(level, serves, self.fair.choose(level, tenants))

    def _backlogged(self, level: Priority, tenant: str) -> None:
        assert self.fair is not None
        self.fair.backlogged(level, tenant, self.waiting.tenants(level))

    def _aged(self, candidates: dict[Priority, Candidate]) -> Priority | None:
        """The level with an ageing bound whose oldest request is past it and has waited
        longest; None when none is."""
        now = self._clock()
        overdue = [
            (candidate.timestamp_ms, level.rank, level)
            for level, candidate in candidates.items()
            if level in self.max_wait_ms and now - candidate.timestamp_ms >= self.max_wait_ms[level]
        ]
        return min(overdue)[2] if overdue else None
