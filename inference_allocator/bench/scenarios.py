"""The benchmark's workloads, each run on the real stack and on the reference allocator."""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from ..brokers import free_port
from ..producers.client import InferenceClient
from ..producers.request_producer import RequestProducer
from ..schemas import Priority
from ..streams.slots import SlotUsage
from ..streams.worker import Worker
from .cpu import CpuWindow
from .httpclient import HttpConnection
from .reference import ReferenceAllocator
from .stack import BenchBroker, Scenario
from .stats import Progress, summary_ms

# A send returns (end-to-end seconds, inference milliseconds reported by the allocator).
Send = Callable[[int], Awaitable[tuple[float, float]]]

HIGH, LOW = Priority.HIGH, Priority.LOW


@dataclass
class BenchPlan:
    quick: bool
    overhead_requests: int
    overhead_rate: float = 100.0
    throughput_seconds: float = 5.0
    kafka_concurrency: int = 128
    http_concurrency: int = 32
    one_client_requests: int = 500
    efficiency_grid: tuple[tuple[int, float], ...] = ()
    efficiency_window_s: float = 2.0
    flood_gpus: int = 4
    flood_latency_ms: float = 20.0
    flood_highs: int = 60
    flood_rate: float = 10.0
    costs: bool = False
    idle_quiet_s: float = 60.0
    idle_lulls: int = 4
    overload_s: float = 10.0

    @classmethod
    def make(cls, quick: bool) -> BenchPlan:
        grid = tuple((n, t) for n in (1, 4, 16, 64) for t in (5.0, 20.0, 100.0))
        if quick:
            return cls(
                quick=True,
                overhead_requests=300,
                one_client_requests=200,
                throughput_seconds=2.0,
                efficiency_grid=((1, 20.0), (16, 20.0), (64, 5.0)),
                efficiency_window_s=0.6,
                flood_highs=20,
                idle_quiet_s=15.0,
                idle_lulls=1,
                overload_s=4.0,
            )
        return cls(quick=False, overhead_requests=1000, efficiency_grid=grid)

    def warm_up(self) -> BenchPlan:
        """A short plan of the same shape, to warm a broker up."""
        return dataclasses.replace(
            self, overhead_requests=100, one_client_requests=100, throughput_seconds=2.0
        )

    def costs_only(self) -> None:
        """Only the cost scenarios (``bench --costs``), the efficiency where it is costly."""
        self.costs = True
        self.efficiency_grid = ((16, 20.0), (64, 20.0), (64, 5.0))

    @property
    def steps(self) -> int:
        """Progress steps on one broker."""
        if self.costs:  # http and thin, the openai path, efficiency, idle, refusing
            return 6 + 2 + len(self.efficiency_grid) + 2 + 3
        return 9 + 2 + 3 + len(self.efficiency_grid) + 1 + 1 + 6 + 2 + 1 + 1 + 2 + 2 + 3


# --- load shapes ------------------------------------------------------------------------


async def open_loop(send: Send, count: int, rate: float) -> tuple[list[float], list[float]]:
    """Start request i at i/rate whatever the earlier ones are doing (a steady offered load).

    Returns the end-to-end latencies and the latency minus reported inference time.
    """
    start = time.perf_counter()
    tasks = []
    for i in range(count):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(i)))
    results = await asyncio.gather(*tasks)
    return [e2e for e2e, _ in results], [e2e - inf / 1000 for e2e, inf in results]


async def one_at_a_time(send: Send, count: int) -> list[float]:
    """One client sending back to back: the latency a lone caller sees."""
    return [(await send(i))[0] for i in range(count)]


async def closed_loop(send: Send, concurrency: int, seconds: float) -> float:
    """``concurrency`` clients each sending back to back for ``seconds`` (each at least one
    request: a loop held up past the deadline before they start still measures);
    requests/second."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def client(c: int) -> None:
        nonlocal done
        i = c
        while True:
            await send(i)
            done += 1
            i += concurrency
            if time.perf_counter() >= deadline:
                return

    started = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(concurrency)))
    return done / (time.perf_counter() - started)


def kafka_send(client: InferenceClient, priority: Priority = HIGH) -> Send:
    async def send(i: int) -> tuple[float, float]:
        started = time.perf_counter()
        response = await client.infer("bench-model", f"prompt {i}", priority)
        elapsed = time.perf_counter() - started
        if response.status != "ok":
            raise RuntimeError(f"request {i}: {response.status} {response.error}")
        return elapsed, response.inference_time_ms or 0.0

    return send


def reference_send(allocator: ReferenceAllocator, priority: Priority = HIGH) -> Send:
    async def send(i: int) -> tuple[float, float]:
        started = time.perf_counter()
        _, inference_ms = await allocator.infer("bench-model", f"prompt {i}", priority)
        return time.perf_counter() - started, inference_ms

    return send


class HttpPool:
    """Keep-alive connections to a bridge, handed out one request at a time."""

    def __init__(self, port: int, size: int):
        self._idle: asyncio.Queue[HttpConnection] = asyncio.Queue()
        self._all = [HttpConnection("127.0.0.1", port) for _ in range(size)]
        for conn in self._all:
            self._idle.put_nowait(conn)

    def send(self, priority: Priority = HIGH) -> Send:
        body = {"model_id": "bench-model", "priority": priority.value}

        async def send(i: int) -> tuple[float, float]:
            conn = await self._idle.get()
            try:
                started = time.perf_counter()
                status, reply = await conn.post_json(
                    "/api/v1/inference", {**body, "prompt": f"prompt {i}"}
                )
                elapsed = time.perf_counter() - started
            except BaseException:
                await conn.close()  # an unanswered request: the next one reconnects
                raise
            finally:
                self._idle.put_nowait(conn)
            if status != 200:
                raise RuntimeError(f"request {i}: HTTP {status} {reply}")
            return elapsed, reply["inference_time_ms"]

        return send

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()


#: what a stack that is still starting may answer a request with
STARTING: tuple[type[BaseException], ...] = (OSError, RuntimeError, TimeoutError)


async def until_answered(
    call: Callable[[], Awaitable[object]],
    give_up_after: float = 60.0,
    try_s: float = 5.0,
    starting: tuple[type[BaseException], ...] = STARTING,
) -> None:
    """Until ``call`` returns. Each try waits at most ``try_s``; a failure in ``starting``
    is tried again 0.2 s later, until ``give_up_after``, then raised."""
    deadline = time.monotonic() + give_up_after
    while True:
        try:
            await asyncio.wait_for(call(), min(try_s, max(1.0, deadline - time.monotonic())))
            return
        except starting:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def warm_up(send: Send, requests: int = 20, give_up_after: float = 60.0) -> None:
    """Until the stack answers (the worker's group join takes seconds), then a few more.

    Each try waits at most 5 s: a request produced before a consumer that starts from the
    end (the thin pipeline's) was positioned is never answered, and must not use up the
    whole budget."""
    await until_answered(lambda: send(-1), give_up_after)
    for i in range(requests):
        await send(-2 - i)


# --- scenarios ----------------------------------------------------------------------------


async def _overhead_and_ceiling(
    send: Send,
    plan: BenchPlan,
    concurrency: int,
    progress: Progress | None,
    label: str,
    pids: dict[str, int] | None = None,
) -> dict:
    """Scenarios 1 and 2 on one stack: latency at a steady load, one client's latency,
    then the ceiling with ``concurrency`` clients; with ``pids`` (the stack's processes by
    name), the CPU each spent per request under that ceiling, and this process's (the
    load generator's)."""
    await warm_up(send)
    if progress:
        progress.step(f"{label}: overhead at a steady load")
    e2e, overhead = await open_loop(send, plan.overhead_requests, plan.overhead_rate)
    if progress:
        progress.step(f"{label}: one client")
    lone = await one_at_a_time(send, plan.one_client_requests)
    if progress:
        progress.step(f"{label}: throughput ceiling")
    window = CpuWindow(pids or {}).start()
    generator_started = time.process_time()
    rps = await closed_loop(send, concurrency, plan.throughput_seconds)
    generator_s = time.process_time() - generator_started
    window.stop()
    result = {
        "overhead_ms": summary_ms(overhead),
        "end_to_end_ms": summary_ms(e2e),
        "one_client_ms": summary_ms(lone),
        "concurrency": concurrency,
        "throughput_rps": round(rps, 1),
    }
    if pids is not None:
        requests = max(rps * window.wall_s, 1.0)
        used = {**window.seconds, "load generator": generator_s}
        result["cpu_per_request_ms"] = {
            name: round(seconds * 1000 / requests, 4) for name, seconds in used.items()
        }
    return result


def _stack_pids(broker: BenchBroker, processes: dict[str, int]) -> dict[str, int]:
    """The processes whose CPU a scenario counts: the broker (where this run started it)
    and the stack's."""
    found = {name: pid for name, pid in processes.items() if name in ("worker", "bridge")}
    if broker.pid is not None:
        found["broker"] = broker.pid
    return found


async def kafka_direct(broker: BenchBroker, plan: BenchPlan, progress: Progress) -> dict:
    scenario = Scenario(broker, gpu_count=64, latency_ms=0)
    with scenario.processes() as pids:
        async with InferenceClient(scenario.settings()) as client:
            return await _overhead_and_ceiling(
                kafka_send(client), plan, plan.kafka_concurrency, progress, "kafka-direct",
                _stack_pids(broker, pids),
            )  # fmt: skip


async def http(
    broker: BenchBroker,
    plan: BenchPlan,
    progress: Progress | None,
    *,
    thin: bool = False,
    exactly_once: bool = False,
) -> dict:
    """The HTTP path of the real stack, or with ``thin`` of the thinnest pipeline; with
    ``exactly_once``, the real stack answering in Kafka transactions."""
    extra: dict[str, object] = {"exactly_once": True} if exactly_once else {}
    scenario = Scenario(broker, gpu_count=64, latency_ms=0, extra=extra)
    port = free_port()
    with scenario.processes(bridge_port=port, thin=thin) as pids:
        pool = HttpPool(port, plan.http_concurrency)
        try:
            return await _overhead_and_ceiling(
                pool.send(),
                plan,
                plan.http_concurrency,
                progress,
                "thin" if thin else "http exactly-once" if exactly_once else "http",
                _stack_pids(broker, pids),
            )
        finally:
            await pool.close()


async def reference(plan: BenchPlan) -> dict:
    async with ReferenceAllocator(64, 0) as allocator:
        return await _overhead_and_ceiling(
            reference_send(allocator), plan, plan.kafka_concurrency, None, "in-process"
        )


def _efficiency(usage: SlotUsage, count: int, gpus: int, latency_ms: float) -> dict:
    """Throughput under the backlog against the physical limit N/T.

    ``efficiency`` is the steady state: completions between the 10th and the 90th
    percentile of the run, leaving out the ramp (the first fetch) and the drain (slots
    falling idle one by one as the backlog runs out). ``efficiency_whole_run`` counts
    everything from the first lease to the last release.
    """
    assert usage.first_lease_at is not None and usage.last_release_at is not None
    limit = gpus / (latency_ms / 1000)
    window = usage.last_release_at - usage.first_lease_at
    done = list(usage.release_times)[-count:]
    first, last = len(done) // 10, len(done) * 9 // 10
    steady = (last - first) / (done[last] - done[first])
    return {
        "gpus": gpus,
        "latency_ms": latency_ms,
        "requests": count,
        "limit_rps": round(limit, 1),
        "achieved_rps": round(steady, 1),
        "efficiency": round(steady / limit, 4),
        "efficiency_whole_run": round(count / window / limit, 4),
        "utilisation": round(usage.busy_s / (window * gpus), 4),
        "idle_gap_ms": summary_ms(usage.idle_gaps_s),
    }


def _backlog_size(gpus: int, latency_ms: float, window_s: float) -> int:
    # A whole number of rounds of the slots, so the ideal finish has no partial round.
    rounds = max(4, round(window_s / (latency_ms / 1000)))
    return gpus * rounds


async def efficiency_kafka(broker: BenchBroker, gpus: int, latency_ms: float, window_s: float):
    """A backlog produced before the worker starts; the worker runs in this process so its
    slot table can be read, the load generator having nothing left to do."""
    scenario = Scenario(broker, gpu_count=gpus, latency_ms=latency_ms)
    settings = scenario.settings()
    count = _backlog_size(gpus, latency_ms, window_s)
    async with RequestProducer(settings) as producer:
        for start in range(0, count, 5000):
            batch = [
                producer.build("bench-model", f"p{i}", LOW, timeout_seconds=600)
                for i in range(start, min(count, start + 5000))
            ]
            await producer.send_many(batch)
    worker = Worker(settings)
    async with worker:
        deadline = time.monotonic() + 300
        usage = worker.slots.usage  # (it has no event for its first lease)
        while usage.first_lease_at is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        # This process runs the worker alone now: its CPU is the worker's.
        cpu_started = time.process_time()
        while worker.slots.usage.releases < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {worker.slots.usage.releases} of {count} done")
            await asyncio.sleep(0.02)
        cpu_s = time.process_time() - cpu_started
    result = _efficiency(worker.slots.usage, count, gpus, latency_ms)
    result["worker_cpu_per_request_ms"] = round(cpu_s * 1000 / count, 4)
    return result


async def affinity(broker: BenchBroker, window: int, requests: int = 100) -> dict:
    """Two models interleaved on a slot that loads a model (20 ms) when it switches, 10 ms
    inferences: model loads and throughput with look-ahead ``window``. (With two slots the
    warm-slot preference alone keeps one model on each: the window matters when slots are
    fewer than the models in the backlog.)"""
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Path(tmp) / "fleet.toml"
        fleet.write_text(
            '[[pools]]\nname = "loader"\nbackend = "mock"\nmodels = ["model-a", "model-b"]\n'
            "slots = 1\nlatency_ms = 10\nmodel_load_ms = 20\n"
        )
        scenario = Scenario(broker, gpu_count=1, latency_ms=10, fleet_file=str(fleet))
        settings = scenario.settings().model_copy(
            update={"affinity_window": window, "request_partitions": 1}
        )
        async with RequestProducer(settings) as producer:
            await producer.send_many(
                [
                    producer.build(f"model-{'ab'[i % 2]}", f"p{i}", LOW, timeout_seconds=600)
                    for i in range(requests)
                ]
            )
        worker = Worker(settings)
        async with worker:
            started = time.monotonic()
            while worker.slots.usage.releases < requests:
                if time.monotonic() - started > 120:
                    raise RuntimeError(f"only {worker.slots.usage.releases} of {requests} done")
                await asyncio.sleep(0.02)
            usage = worker.slots.usage
            seconds = (usage.last_release_at or 0) - (usage.first_lease_at or 0)
        loads = worker.fleet.pools[0].backend.model_loads  # type: ignore[attr-defined]
    return {"window": window, "requests": requests, "model_loads": loads,
            "throughput_rps": round(requests / seconds, 1)}  # fmt: skip


async def efficiency_reference(gpus: int, latency_ms: float, window_s: float) -> dict:
    count = _backlog_size(gpus, latency_ms, window_s)
    async with ReferenceAllocator(gpus, latency_ms) as allocator:
        await asyncio.gather(*(allocator.infer("bench-model", f"p{i}", LOW) for i in range(count)))
    return _efficiency(allocator.usage, count, gpus, latency_ms)


async def _flood(
    send_high: Send, flood: Callable[[int], Awaitable[object]], plan: BenchPlan
) -> dict:
    """High waits on an idle system, then with lows saturating every slot."""
    _, idle = await open_loop(send_high, plan.flood_highs, plan.flood_rate)
    lows = round(
        plan.flood_gpus
        / (plan.flood_latency_ms / 1000)
        * (plan.flood_highs / plan.flood_rate + 2)
        * 1.5
    )
    await flood(lows)
    await asyncio.sleep(0.3)  # every slot busy with lows before the highs come
    _, flooded = await open_loop(send_high, plan.flood_highs, plan.flood_rate)
    return {
        "gpus": plan.flood_gpus,
        "latency_ms": plan.flood_latency_ms,
        "lows": lows,
        "high_wait_idle_ms": summary_ms(idle),
        "high_wait_flood_ms": summary_ms(flooded),
    }


async def priority_flood_kafka(broker: BenchBroker, plan: BenchPlan) -> dict:
    scenario = Scenario(broker, gpu_count=plan.flood_gpus, latency_ms=plan.flood_latency_ms)
    with scenario.processes():
        async with InferenceClient(scenario.settings()) as client:
            send = kafka_send(client, HIGH)
            await warm_up(send, requests=5)

            async def flood(count: int) -> None:
                build = client.producer.build
                await client.producer.send_many(
                    [
                        build("bench-model", f"low{i}", LOW, timeout_seconds=600)
                        for i in range(count)
                    ]
                )

            return await _flood(send, flood, plan)


async def priority_flood_reference(plan: BenchPlan) -> dict:
    async with ReferenceAllocator(plan.flood_gpus, plan.flood_latency_ms) as allocator:
        lows: list[asyncio.Task[object]] = []

        async def flood(count: int) -> None:
            lows.extend(
                asyncio.create_task(allocator.infer("bench-model", f"low{i}", LOW))
                for i in range(count)
            )

        result = await _flood(reference_send(allocator, HIGH), flood, plan)
        for task in lows:
            task.cancel()
        await asyncio.gather(*lows, return_exceptions=True)
        return result
