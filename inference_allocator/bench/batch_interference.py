"""A large batch beside interactive traffic: 4 mock slots (``LATENCY_MS`` a request),
interactive requests at high and at low at a steady rate, first alone, then with a batch
of ``LINES`` lines submitted through the bridge's Batch API (its lines at low, as the
batch's own tenant, at most INFERENCE_BATCH_MAX_IN_FLIGHT sent and unanswered).

Reported: the interactive requests' waits (their answers' ``queue_time_ms``) per level,
alone and while the batch runs; the slots' busy share while the batch runs (every run's
time inside the window from the batch's first line's start to its last line's end, over
4 slots times that window); and the batch's completion time against what the idle
capacity it had (the slots' time the interactive requests left) would take at best.

The step runs with ``INFERENCE_PREEMPT_AFTER_MS=0`` in both phases: a high request that
finds every slot busy takes one from a low run at once (the deployment choice that keeps
high latency where it was while batches fill the fleet); within low, the fair shares keep
interactive requests from queueing behind the batch's lines.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import openai
from aiokafka import AIOKafkaConsumer

from ..clients import topic_partitions
from ..ports import free_port
from ..producers.client import InferenceClient
from ..schemas import ResponseRecord
from ..topics import Topics
from .priority_hold import _wait_ready
from .stack import BenchBroker, Scenario
from .stats import Progress, summary_ms

SLOTS = 4
LATENCY_MS = 50
LINES, QUICK_LINES = 5000, 300
#: interactive requests a second, per level
RATE = 6
ALONE_S, QUICK_ALONE_S = 20.0, 5.0
#: its progress steps
STEPS = 2
#: INFERENCE_PREEMPT_AFTER_MS of the step (see above)
PREEMPT_AFTER_MS = 0


async def batch_interference(
    broker: BenchBroker, progress: Progress, *, quick: bool
) -> dict[str, Any]:
    lines = QUICK_LINES if quick else LINES
    results: dict[str, Any] = {
        "slots": SLOTS, "latency_ms": LATENCY_MS, "lines": lines, "rate_per_level": RATE,
        "preempt_after_ms": PREEMPT_AFTER_MS,
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        fleet = Path(tmp) / "fleet.toml"
        fleet.write_text(
            f'[[pools]]\nname = "sim"\nbackend = "mock"\nmodels = ["m"]\nslots = {SLOTS}\n'
            f"latency_ms = {LATENCY_MS}\n"
        )
        progress.step("batch beside interactive traffic: alone")
        results["alone"] = await _run(broker, fleet, None, QUICK_ALONE_S if quick else ALONE_S)
        progress.step(f"batch beside interactive traffic: with a {lines}-line batch")
        results["with_batch"] = await _run(broker, fleet, lines, 0.0)
    alone, shared = results["alone"]["waits"], results["with_batch"]["waits"]
    for level in ("high", "low"):
        results[f"{level}_p99_ratio"] = round(shared[level]["p99"] / alone[level]["p99"], 2)
    return results


def _lines(count: int) -> bytes:
    return "".join(
        json.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/completions",
                    "body": {"model": "m", "prompt": f"Label item {i}."}}) + "\n"
        for i in range(count)
    ).encode()  # fmt: skip


async def _run(
    broker: BenchBroker, fleet: Path, lines: int | None, alone_s: float
) -> dict[str, Any]:
    """Interactive traffic for ``alone_s``, or (``lines``) while a batch of them runs."""
    scenario = Scenario(
        broker, gpu_count=SLOTS, latency_ms=0, fleet_file=str(fleet),
        extra={"preempt_after_ms": PREEMPT_AFTER_MS, "max_preemptions": 2},
    )  # fmt: skip
    port = free_port()
    answers: list[ResponseRecord] = []
    figures: dict[str, Any] = {}
    with scenario.processes(bridge_port=port):
        await _wait_ready(port)
        settings = scenario.settings()
        async with InferenceClient(settings) as client:
            stop = asyncio.Event()
            offered = asyncio.create_task(_offer(client, answers, stop))
            if lines is None:
                await asyncio.sleep(alone_s)
            else:
                figures = await _batch(port, lines)
            stop.set()
            await offered
        if lines is not None:
            runs = await _runs(settings, figures.pop("id"))
            figures.update(_busy(runs + answers, runs))
    started = figures.get("window", (0, float("inf")))
    during = [a for a in answers if started[0] <= (a.started_at_ms or 0) <= started[1]]
    measured = during if lines is not None else answers
    ok = [a for a in measured if a.status == "ok"]
    figures["waits"] = {
        level: summary_ms((a.queue_time_ms or 0) / 1000 for a in ok if a.priority == level)
        for level in ("high", "low")
    }
    figures.pop("window", None)
    return figures


async def _offer(
    client: InferenceClient, answers: list[ResponseRecord], stop: asyncio.Event
) -> None:
    """High and low requests at ``RATE`` a second each, until ``stop``."""
    calls: list[asyncio.Task[ResponseRecord]] = []
    sent = 0
    began = time.monotonic()
    while not stop.is_set():
        for level in ("high", "low"):
            calls.append(asyncio.create_task(client.infer("m", f"{level} {sent}", level)))
        sent += 1
        next_at = began + sent / RATE
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    answers.extend(await asyncio.gather(*calls))


async def _batch(port: int, lines: int) -> dict[str, Any]:
    """Submit the batch and wait for it; its id and times."""
    client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x")
    try:
        uploaded = await client.files.create(file=("b.jsonl", _lines(lines)), purpose="batch")
        submitted = time.time()
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="24h"
        )
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            await asyncio.sleep(0.5)
            batch = await client.batches.retrieve(batch.id)
        counts = batch.request_counts
        return {
            "id": batch.id,
            "status": batch.status,
            "completed": counts.completed if counts else 0,
            "completion_s": round(time.time() - submitted, 1),
        }
    finally:
        await client.close()


async def _runs(settings: Any, batch_id: str) -> list[ResponseRecord]:
    """The batch's answers, from the responses topic."""
    topic = Topics.from_settings(settings).responses
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.bootstrap_servers)
    await consumer.start()
    try:
        tps = (await topic_partitions(consumer, [topic], settings))[topic]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: list[ResponseRecord] = []
        prefix = f"{batch_id}.".encode()
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            batch = await consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                found += [
                    ResponseRecord.model_validate_json(r.value)
                    for r in records
                    if r.key and r.key.startswith(prefix) and r.value
                ]
        return found
    finally:
        await consumer.stop()


def _busy(everything: list[ResponseRecord], runs: list[ResponseRecord]) -> dict[str, Any]:
    """The slots' busy share over the batch's window, and its use of the idle capacity."""
    ran = [r for r in runs if r.started_at_ms and r.completed_at_ms]
    start = min(r.started_at_ms or 0 for r in ran)
    end = max(r.completed_at_ms or 0 for r in ran)
    window = max(end - start, 1)

    def inside(r: ResponseRecord) -> float:
        if not r.started_at_ms or not r.completed_at_ms:
            return 0.0
        return max(0, min(r.completed_at_ms, end) - max(r.started_at_ms, start))

    busy = sum(inside(r) for r in everything)
    interactive = busy - sum(inside(r) for r in ran)
    idle_ms = SLOTS * window - interactive  # what the interactive requests left
    best_s = len(ran) * LATENCY_MS / (idle_ms / window) / 1000
    return {
        "window": (start, end),
        "window_s": round(window / 1000, 1),
        "busy_share": round(busy / (SLOTS * window), 3),
        "best_s": round(best_s, 1),
        "idle_capacity_use": round(best_s / (window / 1000), 3),
    }
