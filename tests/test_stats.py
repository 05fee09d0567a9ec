"""The faust-streaming statistics agent, as a user runs it (``inference-allocator stats``),
on the real broker: answers counted per model and priority in tumbling windows, each closed
window published to ``<prefix>.stats``; its start-up time is printed."""

from __future__ import annotations

import asyncio
import json
import re
import time

from inference_allocator.producers.client import InferenceClient
from inference_allocator.topics import Topics

from .helpers import read_topic, stats_agent, wait_for


async def test_stats_publishes_closed_windows_per_model_and_priority(
    make_settings, start_worker, tmp_path
):
    settings = make_settings(gpu_count=2, mock_latency_ms=30)
    await start_worker(settings)
    log_path = tmp_path / "stats.log"
    started = time.monotonic()
    async with stats_agent(settings, log_path):
        ready_after = time.monotonic() - started
        sent = {("m", "high"): 6, ("n", "low"): 3}
        async with InferenceClient(settings) as client:
            answers = await asyncio.gather(
                *[
                    client.infer(model, "count me", priority)
                    for (model, priority), times in sent.items()
                    for _ in range(times)
                ]
            )
        assert all(a.status == "ok" for a in answers)
        topic = Topics.from_settings(settings).stats
        counted: dict[tuple[str, str], int] = {}

        async def published() -> bool:
            counted.clear()
            for record in await read_topic(settings, topic):
                window = json.loads(record.value)
                if window["window"] == "2s":
                    key = (window["model"], window["priority"])
                    counted[key] = counted.get(key, 0) + window["answers"]
            return counted == sent

        await wait_for(published, "the 2 s windows to close and be published", timeout=60)
        records = [json.loads(r.value) for r in await read_topic(settings, topic)]
        window = next(w for w in records if w["model"] == "m" and w["window"] == "2s")
        assert window["ok"] == window["answers"] and window["error"] == 0
        assert window["end_ms"] - window["start_ms"] == 2000
        assert window["inference_ms"]["p50"] >= 30 and window["wait_ms"]["p99"] is not None
        keys = {r.key.decode() for r in await read_topic(settings, topic)}
        assert "m/high/2s" in keys and "n/low/2s" in keys
        said = re.search(r"ready ([\d.]+) s after start", log_path.read_text())
        assert said, log_path.read_text()
        print(f"\nstats agent ready {float(said.group(1)):.1f} s after start "
              f"({ready_after:.1f} s for the test, with the interpreter's start)")  # fmt: skip
