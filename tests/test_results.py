"""Submit now, fetch later, retry safely: results by id from any bridge, read from Kafka.

Through HTTP (``Prefer: respond-async``, ``GET /api/v1/inference/{id}``, ``request_id`` and
``Idempotency-Key``) and through a plain Kafka client (a record with an id that was already
sent, waits, runs or was answered), on the real broker.
"""

from __future__ import annotations

import asyncio
import json

from inference_allocator.schemas import Priority
from inference_allocator.streams.worker import Worker
from inference_allocator.topics import Topics

from .helpers import answers_of, leases, wait_for

BODY = {"model_id": "m", "prompt": "later", "priority": "high"}
ASYNC = {"Prefer": "respond-async"}


async def _answered(settings, request_id: str, times: int) -> bool:
    return len(await answers_of(settings, request_id)) >= times


async def _state(http, request_id: str) -> dict:
    answer = await http.get(f"/api/v1/inference/{request_id}")
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_submit_now_and_fetch_later_from_another_bridge(
    make_settings, start_worker, start_bridge
):
    settings = make_settings(gpu_count=1, mock_latency_ms=800)
    await start_worker(settings)
    first, other = await start_bridge(settings), await start_bridge(settings)
    accepted = [await first.post("/api/v1/inference", json=BODY, headers=ASYNC) for _ in range(2)]
    for answer in accepted:
        assert answer.status_code == 202, answer.text
        assert answer.headers["Preference-Applied"] == "respond-async"
        assert answer.headers["Location"] == f"/api/v1/inference/{answer.json()['request_id']}"
        assert answer.json()["status"] == "queued"
    # One slot: one runs while the other waits; the other bridge sees both, by id.
    seen: dict[str, set[str]] = {a.json()["request_id"]: set() for a in accepted}

    async def both_done() -> bool:
        for request_id, states in seen.items():
            state = await _state(other, request_id)
            states.add(state["status"])
            if state["status"] not in ("queued", "running"):
                assert state["status"] == "ok", state
                assert state["result"]["output"].endswith("for: later")
                assert state["result"]["request_id"] == request_id
        return all("ok" in states for states in seen.values())

    await wait_for(both_done, "both answers", timeout=20, interval=0.05)
    assert all({"running", "ok"} <= states for states in seen.values()), seen
    assert any("queued" in states for states in seen.values()), seen
    waiting = await other.get(f"/api/v1/inference/{accepted[0].json()['request_id']}")
    assert "Retry-After" not in waiting.headers  # answered: nothing to wait for
    # Each ran once, and the bridge that took them sees the same.
    for answer in accepted:
        request_id = answer.json()["request_id"]
        assert await leases(settings, request_id) == 1
        assert (await _state(first, request_id))["status"] == "ok"


async def test_results_are_read_back_by_a_bridge_that_starts_later(
    make_settings, start_worker, start_bridge
):
    settings = make_settings(gpu_count=1, mock_latency_ms=300)
    await start_worker(settings)
    http = await start_bridge(settings)
    done = await http.post("/api/v1/inference", json=BODY)
    assert done.status_code == 200
    # The one slot busy, so that the next request's 1 ms deadline surely passes before a
    # slot is free (a fetch can bring a record to an idle worker within the millisecond).
    busy = asyncio.create_task(http.post("/api/v1/inference", json={**BODY, "request_id": "busy"}))
    await wait_for(lambda: leases(settings, "busy"), "the slot to be busy")
    cancelled = {**BODY, "request_id": "never-ran", "timeout_seconds": 0.001}
    expired = await http.post("/api/v1/inference", json=cancelled)
    assert expired.status_code == 504
    assert (await busy).status_code == 200
    await wait_for(lambda: answers_of(settings, "never-ran"), "the expired answer")
    # A bridge started now (or this one restarted) reads the answers back from Kafka.
    later = await start_bridge(settings)
    state = await _state(later, done.json()["request_id"])
    assert state["status"] == "ok" and state["result"] == done.json()
    state = await _state(later, "never-ran")
    assert state["status"] == "expired" and "deadline" in state["error"]
    unknown = await later.get("/api/v1/inference/no-such-request")
    assert unknown.status_code == 404 and "INFERENCE_RESULT_RETENTION_SECONDS" in unknown.text


async def test_results_past_their_retention_are_gone(make_settings, start_worker, start_bridge):
    settings = make_settings(mock_latency_ms=5, result_retention_seconds=1)
    await start_worker(settings)
    http = await start_bridge(settings)
    done = await http.post("/api/v1/inference", json=BODY)
    request_id = done.json()["request_id"]
    assert (await _state(http, request_id))["status"] == "ok"
    await asyncio.sleep(1.5)  # past it on the bridge and on the worker (which kept it later)
    assert (await http.get(f"/api/v1/inference/{request_id}")).status_code == 404
    # Past the retention a retry is a new request, and runs.
    again = await http.post("/api/v1/inference", json={**BODY, "request_id": request_id})
    assert again.status_code == 200 and "Idempotent-Replayed" not in again.headers

    async def ran_twice() -> bool:  # slot-table writes linger a little
        return await leases(settings, request_id) == 2

    await wait_for(ran_twice, "a second lease", timeout=5)


async def test_a_retry_with_the_same_id_runs_once_and_gets_the_same_answer(
    make_settings, start_worker, start_bridge
):
    settings = make_settings(gpu_count=1, mock_latency_ms=600)
    await start_worker(settings)
    first, other = await start_bridge(settings), await start_bridge(settings)
    key = {"Idempotency-Key": "order-42"}
    # Retries while it runs, on this bridge and another, and one with the id in the body.
    calls = [
        first.post("/api/v1/inference", json=BODY, headers=key),
        first.post("/api/v1/inference", json=BODY, headers=key),
        other.post("/api/v1/inference", json={**BODY, "request_id": "order-42"}),
    ]
    answers = [asyncio.create_task(calls[0])]
    await wait_for(lambda: leases(settings, "order-42"), "order-42 to run")
    answers += [asyncio.create_task(c) for c in calls[1:]]
    results = [await a for a in answers]
    assert [r.status_code for r in results] == [200, 200, 200], [r.text for r in results]
    assert len({r.json()["output"] for r in results}) == 1
    assert all(r.json()["request_id"] == "order-42" for r in results)
    # Once answered, a retry gets the retained answer, marked as such.
    retry = await other.post("/api/v1/inference", json=BODY, headers=key)
    assert retry.status_code == 200 and retry.headers["Idempotent-Replayed"] == "true"
    assert retry.json() == results[0].json()
    assert await leases(settings, "order-42") == 1
    assert len(await answers_of(settings, "order-42")) == 1


async def test_an_id_reused_with_another_body_is_refused_and_runs_nothing(
    make_settings, start_worker, start_bridge
):
    settings = make_settings(gpu_count=1, mock_latency_ms=600)
    await start_worker(settings)
    first, other = await start_bridge(settings), await start_bridge(settings)
    key = {"Idempotency-Key": "reused-1"}
    running = asyncio.create_task(first.post("/api/v1/inference", json=BODY, headers=key))
    await wait_for(lambda: leases(settings, "reused-1"), "reused-1 to run")

    async def other_knows() -> bool:
        return (await other.get("/api/v1/inference/reused-1")).status_code == 200

    await wait_for(other_knows, "the other bridge to know reused-1")
    # While it runs, on the other bridge (which knows it from the request topic's header):
    # another prompt under the same key is refused, and says why.
    changed = {**BODY, "prompt": "something else"}
    refused = await other.post("/api/v1/inference", json=changed, headers=key)
    assert refused.status_code == 422, refused.text
    assert "another model_id, prompt or params" in refused.json()["detail"]
    assert (await running).status_code == 200
    # Once answered too, on either bridge, with or without Prefer: respond-async.
    for http, extra in ((first, {}), (other, ASYNC)):
        again = await http.post(
            "/api/v1/inference", json={**BODY, "params": {"seed": 1}}, headers={**key, **extra}
        )
        assert again.status_code == 422, again.text
    # The same body at another priority is the same request: its answer, replayed.
    same = await other.post("/api/v1/inference", json={**BODY, "priority": "low"}, headers=key)
    assert same.status_code == 200 and same.headers["Idempotent-Replayed"] == "true"
    assert await leases(settings, "reused-1") == 1
    assert len(await answers_of(settings, "reused-1")) == 1


async def test_request_ids_are_checked(make_settings, start_bridge):
    http = await start_bridge(make_settings())
    differ = await http.post(
        "/api/v1/inference",
        json={**BODY, "request_id": "a"},
        headers={"Idempotency-Key": "b"},
    )
    assert differ.status_code == 422 and "differ" in differ.text
    bad = await http.post("/api/v1/inference", json=BODY, headers={"Idempotency-Key": "a b"})
    # The header is validated with the request (its pattern is in the OpenAPI schema),
    # and the answer names it.
    assert bad.status_code == 422 and "idempotency-key" in bad.text.lower()
    body = await http.post("/api/v1/inference", json={**BODY, "request_id": "x/../y"})
    assert body.status_code == 422


async def test_a_kafka_client_retry_runs_once_and_is_answered_again(
    make_settings, start_worker, start_bridge, kafka_producer
):
    # A run long enough that both sends and the look at its state surely come while it
    # waits or runs (on a fresh Apache Kafka topic a send can wait for its leader).
    settings = make_settings(gpu_count=1, mock_latency_ms=3000)
    await start_worker(settings)
    http = await start_bridge(settings)
    topic = Topics.from_settings(settings).request(Priority.LOW)
    value = json.dumps({"model_id": "m", "prompt": "job"}).encode()
    # Sent twice while the first waits or runs: one run, one answer.
    await kafka_producer.send_and_wait(topic, value, key=b"job-7")
    await kafka_producer.send_and_wait(topic, value, key=b"job-7")
    assert (await _state(http, "job-7"))["status"] in ("queued", "running")
    await wait_for(lambda: answers_of(settings, "job-7"), "job-7's answer")
    await asyncio.sleep(1)  # time enough for a second run, if there were one
    [answer] = await answers_of(settings, "job-7")
    # Sent again once answered: the same answer again, and still one run.
    await kafka_producer.send_and_wait(topic, value, key=b"job-7")
    await wait_for(lambda: _answered(settings, "job-7", 2), "the answer again")
    first, again = await answers_of(settings, "job-7")
    assert again == first == answer  # the very answer, with its origin
    assert await leases(settings, "job-7") == 1
    state = await _state(http, "job-7")
    assert state["status"] == "ok" and state["result"]["output"] == answer.output


async def test_a_worker_that_starts_later_answers_a_retry_from_kafka(
    make_settings, start_worker, kafka_producer
):
    settings = make_settings(mock_latency_ms=5)
    topic = Topics.from_settings(settings).request(Priority.HIGH)
    value = json.dumps({"model_id": "m", "prompt": "once"}).encode()
    async with Worker(settings):
        await kafka_producer.send_and_wait(topic, value, key=b"job-8")
        await wait_for(lambda: answers_of(settings, "job-8"), "job-8's answer")
    await start_worker(settings)  # knows nothing of job-8 but what it reads back
    await kafka_producer.send_and_wait(topic, value, key=b"job-8")
    await wait_for(lambda: _answered(settings, "job-8", 2), "job-8 answered again")
    first_answer, again = await answers_of(settings, "job-8")
    assert again == first_answer
    assert await leases(settings, "job-8") == 1


async def test_an_id_whose_record_was_refused_may_be_sent_again(
    make_settings, start_worker, start_bridge, kafka_producer
):
    settings = make_settings(mock_latency_ms=5)
    await start_worker(settings)
    http = await start_bridge(settings)
    topic = Topics.from_settings(settings).request(Priority.MEDIUM)
    await kafka_producer.send_and_wait(topic, b'{"model_id": "m"}', key=b"job-9")  # no prompt
    await wait_for(lambda: answers_of(settings, "job-9"), "job-9's error")

    async def bridge_read_it() -> bool:  # the bridge follows the answers on its own fetches
        return (await _state(http, "job-9"))["status"] != "queued"

    await wait_for(bridge_read_it, "the bridge to read job-9's error")
    state = await _state(http, "job-9")
    assert state["status"] == "error" and "prompt" in state["error"]
    # It never ran: the same id with a valid request runs, through HTTP as through Kafka.
    again = await http.post("/api/v1/inference", json={**BODY, "request_id": "job-9"})
    assert again.status_code == 200, again.text
    assert "Idempotent-Replayed" not in again.headers


async def test_respond_async_for_an_answered_id_gets_the_answer_replayed(
    make_settings, start_worker, start_bridge
):
    settings = make_settings()
    await start_worker(settings)
    http = await start_bridge(settings)
    headers = {"Idempotency-Key": "async-again", "Prefer": "respond-async"}
    accepted = await http.post("/api/v1/inference", json=BODY, headers=headers)
    assert accepted.status_code == 202, accepted.text

    async def answered() -> bool:
        state = await http.get("/api/v1/inference/async-again")
        assert state.status_code == 200, state.text  # a CI run once got another answer
        return state.json()["status"] == "ok"

    await wait_for(answered, "async-again to be answered")
    again = await http.post("/api/v1/inference", json=BODY, headers=headers)
    assert again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Preference-Applied" not in again.headers
    assert again.json()["request_id"] == "async-again" and again.json()["output"]
