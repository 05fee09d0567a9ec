"""Retained results, the queued-request index, shared waiters, duplicate ids waiting."""

import asyncio
import time

import pytest
from aiokafka import TopicPartition

from inference_allocator.bridge.routes import _respond_async
from inference_allocator.consumers.correlator import ResponseCorrelator, wait
from inference_allocator.consumers.queued import QueuedRequests
from inference_allocator.consumers.results import RetainedResults
from inference_allocator.schemas import ResponseRecord, now_ms


def _answer(request_id: str, output: str) -> bytes:
    return (
        ResponseRecord(request_id=request_id, status="ok", output=output)
        .model_dump_json(exclude_none=True)
        .encode()
    )


def test_the_first_answer_to_an_id_is_kept_until_the_retention_passes():
    results = RetainedResults(retention_ms=200)
    results.add("a", _answer("a", "first"), now_ms())
    results.add("a", _answer("a", "second"), now_ms())
    found = results.get("a")
    assert found is not None and found.output == "first"
    assert "a" in results and results.get("b") is None
    time.sleep(0.25)
    assert results.get("a") is None and "a" not in results
    assert results.evict() == 1 and len(results) == 0


def test_answers_read_back_from_before_the_window_are_not_kept():
    results = RetainedResults(retention_ms=1000)
    results.add("old", _answer("old", "x"), now_ms() - 5000)
    results.add("bad", b"not json", now_ms())
    assert len(results) == 1 and results.get("bad") is None
    nothing = RetainedResults(retention_ms=0)
    nothing.add("a", _answer("a", "x"), now_ms())
    assert len(nothing) == 0


def test_queued_ids_leave_when_the_group_commits_past_their_latest_record():
    queued = QueuedRequests()
    high, low = TopicPartition("r.high", 0), TopicPartition("r.low", 0)
    queued.note(high, 5, "mine")  # produced here, not fetched yet
    assert queued.get("mine") == high
    for offset, request_id in ((4, "x"), (5, "mine"), (6, "x")):
        queued.add(high, offset, request_id)
    queued.add(low, 0, "y")
    queued.prune({high: 6})  # 4 and 5 answered; x's latest record (6) still waits
    assert queued.get("mine") is None and queued.get("x") == high and queued.get("y") == low
    queued.prune({high: 7, low: 1})
    assert len(queued) == 0


async def test_waiters_of_one_id_share_its_answer_and_one_giving_up_leaves_the_others():
    correlator = ResponseCorrelator()
    first, second = correlator.register("a"), correlator.register("a")
    assert first is second
    with pytest.raises(TimeoutError):
        await wait(first, 0.01)
    correlator.discard("a")  # the first waiter gave up
    assert correlator.awaits("a") and not second.cancelled()
    later = asyncio.create_task(wait(second, 1))
    await asyncio.sleep(0)
    assert correlator.resolve(ResponseRecord(request_id="a", status="ok"))
    assert (await later).status == "ok"
    correlator.discard("a")
    assert not correlator.awaits("a")


def test_prefer_respond_async_is_found_among_other_preferences():
    assert _respond_async("respond-async")
    assert _respond_async("return=minimal, respond-async; wait=10")
    assert not _respond_async("return=representation")
