"""Preemption across the fleet, through the real broker: a request that has waited
``INFERENCE_PREEMPT_AFTER_MS`` with no free slot cuts short a run of a lower level, which
waits again at the head of its level and runs once more, at most
``INFERENCE_MAX_PREEMPTIONS`` times; nothing is lost or answered twice. The assertions are
about order and counts, never about how long anything took."""

from __future__ import annotations

import asyncio

import pytest

from inference_allocator.schemas import Priority

from .helpers import answers_of, leases, wait_for

pytestmark = pytest.mark.broker


def body(name: str, priority: str) -> dict:
    return {"model_id": "m", "prompt": name, "priority": priority, "request_id": name}


async def _post(http, name: str, priority: str) -> asyncio.Task:
    return asyncio.create_task(http.post("/api/v1/inference", json=body(name, priority)))


async def _running(settings, name: str, times: int = 1) -> None:
    await wait_for(lambda: _at_least(leases(settings, name), times), f"{name} to run")


async def _at_least(count, times: int) -> bool:
    return await count >= times


async def test_a_high_preempts_the_low_that_started_last_and_each_is_answered_once(
    make_settings, start_worker, start_bridge
):
    settings = make_settings(gpu_count=2, mock_latency_ms=2500, preempt_after_ms=200)
    worker = await start_worker(settings)
    http = await start_bridge(settings)
    first = await _post(http, "low-first", "low")
    await _running(settings, "low-first")
    last = await _post(http, "low-last", "low")
    await _running(settings, "low-last")
    high = await _post(http, "high", "high")
    answers = {name: await task for name, task in
               (("high", high), ("low-first", first), ("low-last", last))}  # fmt: skip
    assert all(a.status_code == 200 for a in answers.values()), [a.text for a in answers.values()]
    assert await leases(settings, "low-last") == 2  # cut short once, then run to its end
    assert await leases(settings, "low-first") == 1
    for name in answers:
        [answer] = await answers_of(settings, name)  # one answer each on the topic
        assert answer.status == "ok"
    [preempted] = await answers_of(settings, "low-last")
    assert preempted.preemptions == 1
    [high_answer] = await answers_of(settings, "high")
    [low_first] = await answers_of(settings, "low-first")
    # The high took the slot of the low that started last, and ran before that low's rerun.
    assert high_answer.preemptions is None and low_first.preemptions is None
    assert high_answer.started_at_ms <= preempted.started_at_ms
    assert worker.metrics.preemptions._counts == {("mock", Priority.LOW): 1}


async def test_a_request_is_preempted_at_most_max_preemptions_times(
    make_settings, start_worker, start_bridge
):
    settings = make_settings(
        gpu_count=1, mock_latency_ms=1500, preempt_after_ms=100, max_preemptions=1
    )
    await start_worker(settings)
    http = await start_bridge(settings)
    low = await _post(http, "low", "low")
    await _running(settings, "low")
    first_high = await _post(http, "high-1", "high")
    await _running(settings, "low", times=2)  # preempted, then back on the slot
    second_high = await _post(http, "high-2", "high")
    for task in (low, first_high, second_high):
        assert (await task).status_code == 200
    [low_answer] = await answers_of(settings, "low")
    [second] = await answers_of(settings, "high-2")
    assert low_answer.preemptions == 1
    # Its one preemption used, the low ran to its end before the second high started.
    assert second.started_at_ms >= low_answer.completed_at_ms
    assert await leases(settings, "low") == 2


async def test_with_preemption_off_a_high_waits_for_the_low(
    make_settings, start_worker, start_bridge
):
    settings = make_settings(gpu_count=1, mock_latency_ms=1000, preempt_after_ms="off")
    await start_worker(settings)
    http = await start_bridge(settings)
    low = await _post(http, "low", "low")
    await _running(settings, "low")
    high = await _post(http, "high", "high")
    assert (await low).status_code == 200 and (await high).status_code == 200
    [low_answer] = await answers_of(settings, "low")
    [high_answer] = await answers_of(settings, "high")
    assert low_answer.preemptions is None
    assert high_answer.started_at_ms >= low_answer.completed_at_ms
    assert await leases(settings, "low") == 1
