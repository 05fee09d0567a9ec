"""What refusing costs: the bridge's CPU per refused request against its CPU per admitted
one, and how fast a refusal comes, at ten times the slots' capacity."""

from __future__ import annotations

import asyncio
import time

from ..brokers import free_port
from .cpu import CpuWindow
from .httpclient import HttpConnection
from .scenarios import BenchPlan, HttpPool, open_loop, warm_up
from .stack import BenchBroker, Scenario
from .stats import Progress, summary_ms

GPUS, LATENCY_MS = 8, 100.0  # 80 requests/s of slots
CAPACITY_RPS = GPUS * 1000 / LATENCY_MS
QUEUE_MAX = 64
CONNECTIONS = 400


class _Offered:
    """An open-loop load over keep-alive connections, with each answer's status and time."""

    def __init__(self, port: int):
        # The last used first: a slow phase keeps few connections busy, none idling out.
        self._idle: asyncio.Queue[HttpConnection] = asyncio.LifoQueue()
        self._all = [HttpConnection("127.0.0.1", port) for _ in range(CONNECTIONS)]
        for conn in self._all:
            self._idle.put_nowait(conn)
        #: seconds each answer took, by status (or by the error a connection ended with)
        self.times: dict[int | str, list[float]] = {}

    async def send(self, i: int) -> tuple[float, float]:
        conn = await self._idle.get()
        started = time.perf_counter()
        outcome: int | str
        try:
            outcome, _ = await conn.post_json(
                "/api/v1/inference", {"model_id": "bench-model", "prompt": f"p {i}"}
            )
        except (OSError, asyncio.IncompleteReadError) as exc:
            # A connection the bridge reset or closed mid-answer: counted under "other"
            # (the run goes on), the connection opened anew for the next request.
            outcome = type(exc).__name__
            await conn.close()
        except BaseException:
            await conn.close()
            raise
        finally:
            self._idle.put_nowait(conn)
        elapsed = time.perf_counter() - started
        self.times.setdefault(outcome, []).append(elapsed)
        return elapsed, 0.0

    async def close(self) -> None:
        for conn in self._all:
            await conn.close()


async def _phase(port: int, bridge_pid: int, rate: float, seconds: float) -> dict:
    offered = _Offered(port)
    window = CpuWindow({"bridge": bridge_pid}).start()
    try:
        await open_loop(offered.send, int(rate * seconds), rate)
    finally:
        window.stop()
        await offered.close()
    admitted, refused = offered.times.get(200, []), offered.times.get(503, [])
    return {
        "offered_rps": rate,
        "seconds": round(window.wall_s, 2),
        "admitted": len(admitted),
        "refused": len(refused),
        "other": {str(k): len(v) for k, v in offered.times.items() if k not in (200, 503)},
        "bridge_cpu_s": round(window.seconds["bridge"], 3),
        "admitted_ms": summary_ms(admitted),
        "refused_ms": summary_ms(refused),
    }


async def refusal_cost(broker: BenchBroker, plan: BenchPlan, progress: Progress) -> dict:
    """The bridge at a quarter and at three quarters of its slots' capacity (every request
    admitted), then at ten times it (most refused with 503: ``INFERENCE_QUEUE_MAX_SIZE``
    is small). The bridge's CPU per second is taken as a base (its consumers' polls) plus
    a cost per admitted and a cost per refused request: the two admitted phases give the
    base and the admitted cost, the flood then the refused one."""
    scenario = Scenario(broker, gpu_count=GPUS, latency_ms=LATENCY_MS)
    scenario.extra = {"queue_max_size": QUEUE_MAX}
    port = free_port()
    with scenario.processes(bridge_port=port) as pids:
        pool = HttpPool(port, 1)
        try:
            await warm_up(pool.send())
        finally:
            await pool.close()
        phases = []
        for share in (0.25, 0.75, 10.0):
            progress.step(f"refusing: offered {share:g}x the capacity")
            phases.append(await _phase(port, pids["bridge"], CAPACITY_RPS * share, plan.overload_s))
            await asyncio.sleep(1.0)
    low, high, flood = phases

    def per_s(phase: dict, key: str) -> float:
        return phase[key] / phase["seconds"]

    per_admitted = (per_s(high, "bridge_cpu_s") - per_s(low, "bridge_cpu_s")) / max(
        per_s(high, "admitted") - per_s(low, "admitted"), 1e-9
    )
    base = per_s(low, "bridge_cpu_s") - per_admitted * per_s(low, "admitted")
    beyond = per_s(flood, "bridge_cpu_s") - base - per_admitted * per_s(flood, "admitted")
    per_refused = beyond / max(per_s(flood, "refused"), 1e-9)
    return {
        "gpus": GPUS,
        "latency_ms": LATENCY_MS,
        "queue_max_size": QUEUE_MAX,
        "phases": phases,
        "bridge_base_cpu_percent": round(base * 100, 2),
        "cpu_per_admitted_ms": round(per_admitted * 1000, 4),
        "cpu_per_refused_ms": round(per_refused * 1000, 4),
    }
