"""Preemption across the fleet, through the real broker: a request that has waited
``INFERENCE_PREEMPT_AFTER_MS`` with no free slot cuts short a run of a lower level, which
waits again at the head of its level and runs once more, at most
``INFERENCE_MAX_PREEMPTIONS`` times; nothing is lost or answered twice. The assertions are
about order and counts, never about how long anything took."""

from __future__ import annotations

import asyncio
import os

import pytest

from inference_allocator.schemas import Priority

from .helpers import CLI, answers_of, deployment_env, leases, ready, wait_for

pytestmark = pytest.mark.broker


def body(name: str, priority: str) -> dict:
    return {"model_id": "m", "prompt": name, "priority": priority, "request_id": name}


async def _post(http, name: str, priority: str) -> asyncio.Task:
    return asyncio.create_task(http.post("/api/v1/inference", json=body(name, priority)))


async def _running(settings, name: str, times: int = 1) -> None:
    await wait_for(lambda: _at_least(leases(settings, name), times), f"{name} to run")


async def _at_least(count, times: int) -> bool:
    return await count >= times


def _run_ended_ms(answer) -> int:
    """When its (last) run ended, to the millisecond: its slot may take the next request
    before the answer is written (``completed_at_ms`` is later), so that is the bound."""
    return int(answer.started_at_ms + answer.inference_time_ms) - 1  # ms rounding


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
    assert second.started_at_ms >= _run_ended_ms(low_answer)
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
    assert high_answer.started_at_ms >= _run_ended_ms(low_answer)
    assert await leases(settings, "low") == 1


async def test_a_stream_that_sent_text_is_not_preempted(make_settings, start_worker, start_bridge):
    settings = make_settings(gpu_count=1, mock_latency_ms=2000, preempt_after_ms=100)
    await start_worker(settings)
    http = await start_bridge(settings)
    chat = {"model": "m", "messages": [{"role": "user", "content": "a b c d e f g h"}],
            "stream": True}  # fmt: skip
    async with http.stream(
        "POST", "/v1/chat/completions", json=chat, headers={"X-Priority": "low"}
    ) as stream:
        assert stream.status_code == 200
        low_id = stream.headers["X-Request-Id"]
        lines = stream.aiter_lines()
        async for line in lines:
            if '"content":"' in line and '"content":""' not in line:
                break  # text reached the client
        high = await _post(http, "high", "high")
        rest = [line async for line in lines if line]
    assert rest[-1] == "data: [DONE]" and not any('"error"' in line for line in rest)
    assert (await high).status_code == 200
    [low] = await answers_of(settings, low_id)
    [high_answer] = await answers_of(settings, "high")
    assert low.preemptions is None and await leases(settings, low_id) == 1
    assert high_answer.started_at_ms >= _run_ended_ms(low)


async def test_a_worker_killed_after_a_preemption_loses_nothing(
    make_settings, start_worker, start_bridge
):
    """SIGKILL the leader once it has preempted a low for a high (the low waiting again in
    its memory, neither record committed): the worker that takes over runs both, and each
    is answered once."""
    settings = make_settings(
        gpu_count=1, mock_latency_ms=3000, preempt_after_ms=100, request_partitions=1
    )
    env = {**os.environ, **deployment_env(settings)}
    doomed = await asyncio.create_subprocess_exec(
        *CLI, "worker", env=env, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        http = await start_bridge(settings)
        await wait_for(lambda: ready(http), "the doomed worker to announce its slot")
        low = await _post(http, "low", "low")
        await _running(settings, "low")
        high = await _post(http, "high", "high")
        await _running(settings, "high")  # on the low's slot: the low was preempted
        doomed.kill()
        await doomed.wait()
        survivor = await start_worker(settings.model_copy(update={"mock_latency_ms": 50}))
        answers = await asyncio.wait_for(asyncio.gather(low, high), 60)
    finally:
        if doomed.returncode is None:
            doomed.kill()
            await doomed.wait()
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]
    for name in ("low", "high"):
        [answer] = await answers_of(settings, name)
        assert answer.worker_id == survivor.worker_id
