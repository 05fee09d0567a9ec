"""Pools with ``slots = "auto"`` through the real broker: the worker keeps in flight what the
server runs without queueing, found from what the server says (the batching mock's queue,
as vLLM's /metrics say it) or, for a server that says nothing, from the time per token."""

from __future__ import annotations

import asyncio

import pytest

from .helpers import wait_for

pytestmark = pytest.mark.broker


def fleet(tmp_path, **mock: object) -> str:
    options = "\n".join(f"{k} = {str(v).lower() if isinstance(v, bool) else v}"
                        for k, v in mock.items())  # fmt: skip
    path = tmp_path / "fleet.toml"
    path.write_text(
        f"""
[[pools]]
name = "batch"
backend = "mock"
models = ["m"]
slots = "auto"
max_slots = 8
{options}
"""
    )
    return str(path)


async def _slots(http) -> int:
    [pool] = (await http.get("/api/v1/status")).json()["pools"]
    return pool["slots"]


async def test_auto_finds_the_servers_capacity_from_its_queue(
    make_settings, start_worker, start_bridge, tmp_path
):
    path = fleet(tmp_path, capacity=3, token_ms=5, tokens=40)
    settings = make_settings(fleet_file=path, preempt_after_ms="off", queue_max_size=1000)
    worker = await start_worker(settings)
    http = await start_bridge(settings)
    assert await _slots(http) == 1  # it starts with one and learns
    body = {"model_id": "m", "prompt": "p", "priority": "low"}
    flood = [asyncio.create_task(http.post("/api/v1/inference", json=body)) for _ in range(60)]
    await wait_for(lambda: _equals(_slots(http), 3), "the limit to reach the capacity")
    answers = await asyncio.gather(*flood)
    assert all(a.status_code == 200 for a in answers)
    capacity = worker.pool_limits.capacity["batch"]
    # 3, or 4 when a probe above it was under way as the flood ended
    assert capacity.limit in (3, 4) and capacity.source == "the server's queue"
    assert worker.metrics.pool_limit.labels("batch")._value.get() == capacity.limit


async def test_a_server_that_says_nothing_is_judged_by_its_time_per_token(
    make_settings, start_worker, start_bridge, tmp_path
):
    path = fleet(tmp_path, capacity=3, token_ms=5, tokens=40, says_load=False)
    settings = make_settings(fleet_file=path, preempt_after_ms="off", queue_max_size=1000)
    worker = await start_worker(settings)
    http = await start_bridge(settings)
    body = {"model_id": "m", "prompt": "p", "priority": "low"}
    flood = [asyncio.create_task(http.post("/api/v1/inference", json=body)) for _ in range(60)]
    await wait_for(lambda: _above(_slots(http), 1), "the limit to grow while tokens hold")
    answers = await asyncio.gather(*flood)
    assert all(a.status_code == 200 for a in answers)
    assert worker.pool_limits.capacity["batch"].source == "latency"


async def _equals(value, expected) -> bool:
    return await value == expected


async def _above(value, floor) -> bool:
    return await value > floor
