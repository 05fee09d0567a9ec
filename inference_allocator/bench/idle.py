"""What an idle stack costs (CPU of each process over a quiet minute), and what the first
request after a quiet period pays for it (see ``pacing``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from ..brokers import free_port
from ..config import Settings
from .cpu import CpuWindow
from .scenarios import BenchPlan, HttpPool, Send, warm_up
from .stack import BenchBroker, Scenario
from .stats import Progress, percentile, summary_ms

#: quiet periods before a lone request, after the quiet minute (each pays the pace's wait)
LULL_S = 10.0
#: the ``dev`` stack's group timings: its heartbeats are part of what it costs idle (the
#: other scenarios' shorter ones only make their joins quicker)
DEV_GROUP_TIMINGS = {
    name: Settings.model_fields[name].default
    for name in ("session_timeout_ms", "heartbeat_interval_ms")
}


async def idle_cost(broker: BenchBroker, plan: BenchPlan, progress: Progress) -> dict:
    """The whole ``dev`` stack (worker, bridge, statistics agent, and the broker when the
    run started it) left alone for ``plan.idle_quiet_s``; then lone requests, each after a
    quiet period, against lone requests sent back to back."""
    scenario = Scenario(broker, gpu_count=4, latency_ms=0, extra=dict(DEV_GROUP_TIMINGS))
    port = free_port()
    with scenario.processes(bridge_port=port, stats=True) as pids:
        if broker.pid is not None:
            pids = {"broker": broker.pid, **pids}
        await _lone(port, warm_up)
        # the statistics agent's group join (on Tansu it waits half the session timeout)
        await asyncio.sleep(DEV_GROUP_TIMINGS["session_timeout_ms"] / 2000 + 2.0)
        progress.step(f"idle: a quiet {plan.idle_quiet_s:g} s")
        window = CpuWindow(pids).start()
        await asyncio.sleep(plan.idle_quiet_s)
        window.stop()
        progress.step("idle: the first request after a quiet period")
        # Each on a new connection: the server closes an idle keep-alive one after 5 s.
        first = [await _lone(port)]
        for _ in range(plan.idle_lulls):
            await asyncio.sleep(LULL_S)
            first.append(await _lone(port))
        warm = [await _lone(port) for _ in range(30)]
    return {
        "quiet_s": plan.idle_quiet_s,
        "cpu_percent": window.percent(),
        "first_after_quiet_ms": [round(s * 1000, 2) for s in first],
        "first_after_quiet_p50_ms": round(percentile(first, 50) * 1000, 2),
        "warm_ms": summary_ms(warm),
        "lull_s": LULL_S,
    }


async def _lone(port: int, then: Callable[[Send], Awaitable[None]] | None = None) -> float:
    """One request on a new connection (or ``then`` with it); the seconds it took."""
    pool = HttpPool(port, 1)
    try:
        started = time.perf_counter()
        if then is not None:
            await then(pool.send())
        else:
            await pool.send()(0)
        return time.perf_counter() - started
    finally:
        await pool.close()
