"""The in-process reference allocator the benchmark compares Kafka against.

It is the prototype's shape: an asyncio heap priority queue, a condition-guarded slot pool
and the same mock backend, all in one process, with no broker in between.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from dataclasses import dataclass, field

from ..fleet.backends import MockBackend
from ..schemas import Priority
from ..streams.slots import SlotUsage


@dataclass(order=True)
class _Job:
    rank: int
    seq: int
    model_id: str = field(compare=False)
    prompt: str = field(compare=False)
    future: asyncio.Future[tuple[int, float]] = field(compare=False)


class ReferenceAllocator:
    """``await allocator.infer(...)`` returns ``(gpu_id, inference_ms)``."""

    def __init__(self, gpu_count: int, latency_ms: float):
        self.gpu_count = gpu_count
        self.backend = MockBackend(latency_ms)
        self.usage = SlotUsage()
        self._heap: list[_Job] = []
        self._seq = itertools.count()
        self._free = list(range(gpu_count))
        self._cond = asyncio.Condition()
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> ReferenceAllocator:
        self._dispatcher = asyncio.create_task(self._dispatch())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._dispatcher is not None
        self._dispatcher.cancel()
        await asyncio.gather(self._dispatcher, return_exceptions=True)

    async def infer(self, model_id: str, prompt: str, priority: Priority) -> tuple[int, float]:
        future = asyncio.get_running_loop().create_future()
        async with self._cond:
            heapq.heappush(
                self._heap, _Job(priority.rank, next(self._seq), model_id, prompt, future)
            )
            self._cond.notify_all()
        return await future

    async def _dispatch(self) -> None:
        while True:
            async with self._cond:
                await self._cond.wait_for(lambda: bool(self._heap and self._free))
                job = heapq.heappop(self._heap)
                gpu = self._free.pop()
            task = asyncio.create_task(self._run(gpu, job, self.usage.leased(gpu)))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run(self, gpu: int, job: _Job, leased_at: float) -> None:
        await self.backend.infer(job.model_id, job.prompt, gpu)
        clock = self.usage.released(gpu)
        async with self._cond:
            self._free.append(gpu)
            self._cond.notify_all()
        if not job.future.done():
            job.future.set_result((gpu, (clock - leased_at) * 1000))
