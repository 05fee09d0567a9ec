"""Cancellation from any bridge (DELETE) or any Kafka client (a record on
``<prefix>.cancellations``): a waiting request never runs, a running one stops and frees
its slot at once, and the answer is ``cancelled``."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from inference_allocator.schemas import Priority, SlotRecord
from inference_allocator.topics import Topics, ensure_topics

from .helpers import read_responses, read_topic, wait_for

pytestmark = pytest.mark.broker

BODY = {"model_id": "m", "prompt": "cancel me", "priority": "medium"}


async def _busy(http) -> int:
    return (await http.get("/api/v1/status")).json()["gpus_busy"]


async def test_a_waiting_request_cancelled_from_another_bridge_never_runs(
    make_settings, start_worker, start_bridge
):
    settings = make_settings(gpu_count=1, mock_latency_ms=1500)
    await start_worker(settings)
    first, other = await start_bridge(settings), await start_bridge(settings)
    running = asyncio.create_task(first.post("/api/v1/inference", json=BODY))
    await wait_for(lambda: _busy(first), "the slot to be taken")
    waiting = asyncio.create_task(first.post("/api/v1/inference", json=BODY))
    topics = Topics.from_settings(settings)
    records = await read_topic(settings, topics.request(Priority.MEDIUM), 2)
    leased = (await first.get("/api/v1/status")).json()
    assert leased["gpus_busy"] == 1
    ids = [r.key.decode() for r in records]

    # The waiting one is whichever of the two does not hold the slot.
    slots = await read_topic(settings, topics.gpu_slots)
    holding = {
        SlotRecord.model_validate_json(r.value).request_id for r in slots if r.value is not None
    }
    [victim] = [i for i in ids if i not in holding]
    cancelled = await other.delete(f"/api/v1/inference/{victim}")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json() == {"request_id": victim, "status": "cancelled"}

    answer = await waiting
    assert answer.status_code == 499 and answer.json()["request_id"] == victim
    assert (await running).status_code == 200
    # Never run: no lease for it in the slot table.
    slots = await read_topic(settings, topics.gpu_slots)
    assert victim not in {
        SlotRecord.model_validate_json(r.value).request_id for r in slots if r.value is not None
    }


async def test_a_running_request_stops_and_frees_its_slot_at_once(
    make_settings, start_worker, start_bridge
):
    settings = make_settings(gpu_count=1, mock_latency_ms=10_000)
    await start_worker(settings)
    http = await start_bridge(settings)
    started = time.monotonic()
    call = asyncio.create_task(http.post("/api/v1/inference", json=BODY))
    await wait_for(lambda: _busy(http), "the request to run")
    [record] = await read_topic(
        settings, Topics.from_settings(settings).request(Priority.MEDIUM), 1
    )
    request_id = record.key.decode()
    # The POST waits on this bridge: the DELETE says "cancelling", the POST gets the answer.
    cancelling = await http.delete(f"/api/v1/inference/{request_id}")
    assert cancelling.status_code == 202 and cancelling.json()["status"] == "cancelling"
    answer = await call
    took = time.monotonic() - started
    assert answer.status_code == 499, answer.text
    assert "freed" in answer.json()["detail"]
    assert took < 9, "the 10 s inference was not stopped"
    await wait_for(lambda: _no_busy(http), "the slot to be free", timeout=5)
    print(f"\na running 10 s request cancelled: answered 499 {took:.1f} s after it was sent")


async def _no_busy(http) -> bool:
    return await _busy(http) == 0


async def test_a_kafka_client_cancels_with_a_record(make_settings, start_worker, kafka_producer):
    settings = make_settings(gpu_count=1, mock_latency_ms=10_000)
    await start_worker(settings)
    topics = Topics.from_settings(settings)
    for job in ("job-running", "job-waiting"):
        value = json.dumps({"model_id": "m", "prompt": job}).encode()
        await kafka_producer.send_and_wait(topics.request(Priority.LOW), value, key=job.encode())
    # One runs (whichever the worker fetched first), the other waits: cancel the waiting one
    # first, or the slot the running one frees would start it before its cancellation.
    running = await _running_request(settings, topics)
    waiting = ({"job-running", "job-waiting"} - {running}).pop()
    for job in (waiting, running):
        await kafka_producer.send_and_wait(topics.cancellations, b"", key=job.encode())
    answers = await read_responses(settings, 2, timeout=8)
    assert {r.request_id for r in answers} == {"job-running", "job-waiting"}
    assert all(r.status == "cancelled" for r in answers)
    by_id = {r.request_id: r for r in answers}
    assert by_id[waiting].gpu_id is None  # never ran
    assert by_id[running].gpu_id is not None  # stopped while running


async def _running_request(settings, topics: Topics) -> str:
    """The request id the one slot is leased to, from the slot table."""
    found: list[str] = []

    async def leased() -> bool:
        for record in await read_topic(settings, topics.gpu_slots):
            if record.value is not None:
                slot = SlotRecord.model_validate_json(record.value)
                if slot.state == "leased" and slot.request_id:
                    found.append(slot.request_id)
        return bool(found)

    await wait_for(leased, "a request to run")
    return found[-1]


async def test_cancelling_an_unknown_or_finished_request_says_so(
    make_settings, start_worker, start_bridge
):
    settings = make_settings(mock_latency_ms=5)
    await start_worker(settings)
    http = await start_bridge(settings)
    unknown = await http.delete("/api/v1/inference/no-such-request")
    assert unknown.status_code == 404 and "no request 'no-such-request'" in unknown.text
    done = await http.post("/api/v1/inference", json=BODY)
    finished = await http.delete(f"/api/v1/inference/{done.json()['request_id']}")
    assert finished.status_code == 409, finished.text
    assert finished.json()["status"] == "ok" and "finished (ok)" in finished.json()["detail"]


async def test_a_cancellation_sent_while_no_worker_runs_is_seen_by_the_next_one(
    make_settings, start_worker, kafka_producer
):
    settings = make_settings(gpu_count=1, mock_latency_ms=10)
    await ensure_topics(settings)
    topics = Topics.from_settings(settings)
    value = json.dumps({"model_id": "m", "prompt": "cancelled before any worker"}).encode()
    await kafka_producer.send_and_wait(topics.request(Priority.LOW), value, key=b"job-early")
    await kafka_producer.send_and_wait(topics.cancellations, b"", key=b"job-early")
    await start_worker(settings)
    [answer] = await read_responses(settings, 1, timeout=8)
    assert (answer.request_id, answer.status) == ("job-early", "cancelled")
    assert answer.gpu_id is None  # never ran
