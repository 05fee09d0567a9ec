"""The HTTP bridge against a real broker and a real uvicorn server."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from inference_allocator.fleet.backends import mock_output
from inference_allocator.producers.request_producer import RequestProducer
from inference_allocator.schemas import SlotRecord
from inference_allocator.topics import Topics

from .helpers import read_responses, read_topic, wait_for

pytestmark = pytest.mark.broker

BODY = {"model_id": "llama-3-70b", "prompt": "Hello", "priority": "high"}


async def test_inference_returns_the_prototypes_fields(make_settings, start_worker, start_bridge):
    settings = make_settings(mock_latency_ms=25)
    await start_worker(settings)
    http = await start_bridge(settings)
    response = await http.post("/api/v1/inference", json=BODY)
    assert response.status_code == 200, response.text
    body = response.json()
    assert {"request_id", "model_id", "output", "gpu_id", "inference_time_ms"} <= body.keys()
    assert body["model_id"] == "llama-3-70b"
    assert body["output"] == mock_output("llama-3-70b", "Hello")
    assert 0 <= body["gpu_id"] < settings.gpu_count
    assert body["inference_time_ms"] >= 24
    assert body["priority"] == "high" and body["worker_id"]


async def test_priority_defaults_to_medium(make_settings, start_worker, start_bridge):
    settings = make_settings()
    await start_worker(settings)
    http = await start_bridge(settings)
    response = await http.post("/api/v1/inference", json={"model_id": "m", "prompt": "p"})
    assert response.status_code == 200 and response.json()["priority"] == "medium"


async def test_each_request_gets_its_own_answer(make_settings, start_worker, start_bridge):
    settings = make_settings(gpu_count=4, mock_latency_ms=10)
    await start_worker(settings)
    http = await start_bridge(settings)
    bodies = [
        {"model_id": f"m{i % 3}", "prompt": f"prompt {i}", "priority": p}
        for i, p in enumerate(["high", "medium", "low"] * 10)
    ]
    responses = await asyncio.gather(*(http.post("/api/v1/inference", json=b) for b in bodies))
    assert [r.status_code for r in responses] == [200] * 30
    for body, response in zip(bodies, responses, strict=True):
        assert response.json()["output"] == mock_output(body["model_id"], body["prompt"])
    assert len({r.json()["request_id"] for r in responses}) == 30


@pytest.mark.parametrize(
    "body, field",
    [
        ({"prompt": "p", "priority": "high"}, "model_id"),
        ({"model_id": "m", "priority": "high"}, "prompt"),
        ({"model_id": "m", "prompt": "p", "priority": "urgent"}, "priority"),
        ({"model_id": "m", "prompt": "", "priority": "low"}, "prompt"),
        ({"model_id": "", "prompt": "p"}, "model_id"),
        ({"model_id": 42, "prompt": "p"}, "model_id"),
        ({"model_id": "m", "prompt": ["p"]}, "prompt"),
        ({"model_id": "m", "prompt": "p", "priority": 1}, "priority"),
    ],
    ids=[
        "missing-model",
        "missing-prompt",
        "bad-priority",
        "empty-prompt",
        "empty-model",
        "int-model",
        "list-prompt",
        "int-priority",
    ],
)
async def test_invalid_bodies_get_422_naming_the_field(settings, start_bridge, body, field):
    http = await start_bridge(settings)
    response = await http.post("/api/v1/inference", json=body)
    assert response.status_code == 422
    assert field in {err["loc"][-1] for err in response.json()["detail"]}


async def test_malformed_json_gets_422(settings, start_bridge):
    http = await start_bridge(settings)
    response = await http.post(
        "/api/v1/inference", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422


async def test_oversized_body_gets_413(make_settings, start_bridge):
    settings = make_settings(max_request_bytes=2048)
    http = await start_bridge(settings)
    response = await http.post("/api/v1/inference", json={**BODY, "prompt": "x" * 5000})
    assert response.status_code == 413
    assert "INFERENCE_MAX_REQUEST_BYTES" in response.json()["detail"]


async def test_full_queue_gets_503_with_retry_after(make_settings, start_bridge):
    settings = make_settings(queue_max_size=3, request_timeout_seconds=8)
    http = await start_bridge(settings)  # no worker: nothing leaves the queue
    waiting = [asyncio.create_task(http.post("/api/v1/inference", json=BODY)) for _ in range(3)]

    async def queue_size() -> int:
        return (await http.get("/api/v1/status")).json()["queue_size"]

    for _ in range(500):
        if await queue_size() >= 3:
            break
        await asyncio.sleep(0.02)
    response = await http.post("/api/v1/inference", json=BODY)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert "queue full" in response.json()["detail"]
    for task in waiting:
        task.cancel()


async def test_retry_after_comes_from_the_backlog_and_the_answer_rate(
    make_settings, start_bridge, start_worker
):
    """Before anything is answered there is no rate: the fallback setting. Once the fleet
    answers, Retry-After is the time it needs to make room: far below the fallback here."""
    settings = make_settings(
        queue_max_size=20, retry_after_seconds=60, gpu_count=4, mock_latency_ms=50
    )
    http = await start_bridge(settings)
    async with RequestProducer(settings) as producer:
        await producer.send_many([producer.build("m", f"b{i}", "low") for i in range(400)])

    async def refused() -> httpx.Response:
        response = await http.post("/api/v1/inference", json=BODY)
        assert response.status_code == 503, response.text
        return response

    await wait_for(lambda: _queue_at_least(http, 400), "the backlog to be counted", timeout=10)
    assert (await refused()).headers["retry-after"] == "60"  # nothing answered yet
    await start_worker(settings)  # 80 answers a second: 380 to go takes ~5 s
    await asyncio.sleep(1.5)
    estimate = int((await refused()).headers["retry-after"])
    assert 1 <= estimate < 30, estimate


async def test_a_full_queue_refuses_before_parsing_but_answers_a_known_id(
    make_settings, start_bridge, start_worker
):
    """While any request would be refused, the refusal comes before the body is parsed
    (in each API's error shape); a retry naming an answered id still gets its answer."""
    settings = make_settings(queue_max_size=3, gpu_count=1, mock_latency_ms=200)
    await start_worker(settings)
    http = await start_bridge(settings)
    key = {"Idempotency-Key": "kept-1"}
    first = await http.post("/api/v1/inference", json=BODY, headers=key)
    assert first.status_code == 200, first.text
    async with RequestProducer(settings) as producer:  # 80 s of work for the one slot
        await producer.send_many(
            [producer.build(BODY["model_id"], f"b{i}", "low") for i in range(400)]
        )
    await wait_for(lambda: _queue_at_least(http, 3), "the backlog to be counted", timeout=10)

    refused = await http.post("/api/v1/inference", json=BODY)
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert "queue full" in refused.json()["detail"]
    openai = await http.post(
        "/v1/chat/completions",
        json={"model": BODY["model_id"], "messages": [{"role": "user", "content": "hi"}]},
    )
    assert openai.status_code == 503 and "queue full" in openai.json()["error"]["message"]
    # Refused before it is read: a bad body gets the 503 too.
    assert (await http.post("/api/v1/inference", content=b"{")).status_code == 503

    for retry in (
        await http.post("/api/v1/inference", json=BODY, headers=key),
        await http.post("/api/v1/inference", json={**BODY, "request_id": "kept-1"}),
    ):
        assert retry.status_code == 200, retry.text
        assert retry.headers["Idempotent-Replayed"] == "true"
        assert retry.json() == first.json()
    metrics = (await http.get("/metrics")).text
    assert 'inference_allocator_rejected_total{reason="queue_full"} 3.0' in metrics


async def _queue_at_least(http: httpx.AsyncClient, count: int) -> bool:
    return (await http.get("/api/v1/status")).json()["queue_size"] >= count


async def test_a_requests_own_timeout_is_its_deadline(make_settings, start_bridge, start_worker):
    settings = make_settings(gpu_count=1, mock_latency_ms=1500, request_timeout_seconds=20)
    await start_worker(settings)
    http = await start_bridge(settings)
    too_long = await http.post("/api/v1/inference", json={**BODY, "timeout_seconds": 21})
    assert too_long.status_code == 422
    assert "INFERENCE_REQUEST_TIMEOUT_SECONDS" in too_long.json()["detail"]

    busy = asyncio.create_task(http.post("/api/v1/inference", json=BODY))  # holds the slot
    await asyncio.sleep(0.3)
    short = await http.post("/api/v1/inference", json={**BODY, "timeout_seconds": 0.5})
    assert short.status_code == 504, short.text
    assert "0.5 s" in short.json()["detail"]
    assert (await busy).status_code == 200
    # The worker never started it: it answered 'expired' once the slot was free.
    responses = {r.request_id: r for r in await read_responses(settings, 2)}
    assert responses[short.json()["request_id"]].status == "expired"
    # The slot, handed on by the run that ended to a request that did not run, is free.
    slots = await read_topic(settings, Topics.from_settings(settings).gpu_slots, 2)
    assert SlotRecord.model_validate_json(slots[-1].value).state == "free"


async def test_no_result_in_time_gets_504_and_is_never_executed(
    make_settings, start_bridge, start_worker
):
    settings = make_settings(request_timeout_seconds=1)
    http = await start_bridge(settings)
    response = await http.post("/api/v1/inference", json=BODY)  # no worker yet
    assert response.status_code == 504
    assert "1 s" in response.json()["detail"]
    # A worker that comes up later must not run it: it answers 'expired' without a slot.
    await start_worker(settings)
    [late] = await read_responses(settings, 1)
    assert late.status == "expired" and late.gpu_id is None
    records = await read_topic(settings, Topics.from_settings(settings).gpu_slots)
    assert len(records) == 4  # the four slots announced free, and no lease since
    assert all(SlotRecord.model_validate_json(r.value).state == "free" for r in records)


async def test_status_when_idle(make_settings, start_worker, start_bridge):
    settings = make_settings(gpu_count=3)
    worker = await start_worker(settings)
    http = await start_bridge(settings)
    status = (await http.get("/api/v1/status")).json()
    assert status["queue_size"] == 0
    assert (status["gpus_available"], status["gpus_busy"]) == (3, 0)
    assert status["queue_depth"] == {"high": 0, "medium": 0, "low": 0}
    assert status["workers"] == [{"worker_id": worker.worker_id, "gpus_total": 3, "gpus_busy": 0}]


async def test_status_while_work_is_in_flight(make_settings, start_worker, start_bridge):
    settings = make_settings(gpu_count=2, mock_latency_ms=1500)
    await start_worker(settings)
    http = await start_bridge(settings)
    calls = [
        asyncio.create_task(http.post("/api/v1/inference", json={**BODY, "priority": p}))
        for p in ("low", "low", "low", "medium", "medium")
    ]
    seen: list[dict] = []

    async def poll() -> bool:
        seen.append((await http.get("/api/v1/status")).json())
        s = seen[-1]
        return s["gpus_busy"] == 2 and s["queue_size"] == 3

    await wait_for(poll, "2 busy GPUs and 3 waiting requests")
    s = seen[-1]
    assert s["gpus_available"] == 0
    assert sum(s["queue_depth"].values()) == 3
    assert [r.status_code for r in await asyncio.gather(*calls)] == [200] * 5

    async def idle() -> bool:
        seen.append((await http.get("/api/v1/status")).json())
        return seen[-1]["queue_size"] == 0 and seen[-1]["gpus_available"] == 2

    await wait_for(idle, "the queue to drain")
    assert seen[-1]["gpus_busy"] == 0


async def test_several_bridges_each_get_their_own_answers(
    make_settings, start_worker, start_bridge
):
    settings = make_settings(gpu_count=4, mock_latency_ms=5)
    await start_worker(settings)
    bridges = [await start_bridge(settings) for _ in range(3)]
    calls = [
        bridges[i % 3].post("/api/v1/inference", json={**BODY, "prompt": f"via bridge {i}"})
        for i in range(24)
    ]
    responses = await asyncio.gather(*calls)
    assert [r.status_code for r in responses] == [200] * 24
    for i, response in enumerate(responses):
        assert response.json()["output"] == mock_output("llama-3-70b", f"via bridge {i}")


async def test_bodies_that_are_not_json_get_422_saying_what_is_wrong(settings, start_bridge):
    http = await start_bridge(settings)
    # Not UTF-8: FastAPI alone answered 400 "There was an error parsing the body".
    not_text = await http.post(
        "/api/v1/inference", content=b"\xff\xfe{", headers={"content-type": "application/json"}
    )
    assert not_text.status_code == 422, not_text.text
    assert not_text.json()["detail"][0]["loc"] == ["body"]
    # JSON sent as a form (curl -d without -H): the answer names the missing header.
    form = await http.post(
        "/api/v1/inference",
        content=b'{"model_id": "m", "prompt": "p"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 422
    assert "Content-Type: application/json" in form.json()["detail"][0]["msg"]


@pytest.mark.parametrize("timeout", [5e-324, 0.0009, 0, -1])
async def test_a_deadline_below_a_millisecond_is_a_bad_body(settings, start_bridge, timeout):
    http = await start_bridge(settings)
    response = await http.post("/api/v1/inference", json={**BODY, "timeout_seconds": timeout})
    assert response.status_code == 422, response.text
    assert "timeout_seconds" in {err["loc"][-1] for err in response.json()["detail"]}


async def test_a_plain_request_is_answered_as_the_route_answers_it(
    make_settings, start_worker, start_bridge
):
    """A plain POST (JSON, no optional header) is served without FastAPI's machinery
    (``bridge/fast_path.py``); a ``Prefer`` the route ignores sends the same request through
    the route. Both give the same answer, for every outcome the body or the key decides."""
    key, capped = "plain-key-0123456789", "capped-key-0123456789"
    settings = make_settings(
        api_keys=f"{key}:plain, {capped}:capped:low", request_timeout_seconds=20
    )
    await start_worker(settings)
    http = await start_bridge(settings)
    cases = {
        "ok": (key, {"model_id": "m", "prompt": "same", "priority": "high"}),
        "above the key's ceiling": (capped, {"model_id": "m", "prompt": "p", "priority": "high"}),
        "the key's ceiling as default": (capped, {"model_id": "m", "prompt": "p"}),
        "a deadline above the limit": (
            key,
            {"model_id": "m", "prompt": "p", "timeout_seconds": 99},
        ),
        "a bad body": (key, {"model_id": "", "prompt": 3}),
        "no key": (None, {"model_id": "m", "prompt": "p"}),
        "not json": (key, "model_id=m"),
    }

    async def post(who: str | None, body: object, through_route: bool) -> httpx.Response:
        headers = {"Authorization": f"Bearer {who}"} if who else {}
        if through_route:
            headers["Prefer"] = "handling=lenient"  # read by the route, meaning nothing to it
        if isinstance(body, str):
            headers["Content-Type"] = "application/json"
            return await http.post("/api/v1/inference", content=body, headers=headers)
        return await http.post("/api/v1/inference", json=body, headers=headers)

    def comparable(response: httpx.Response) -> tuple:
        body = response.json()
        if isinstance(body, dict):  # ids and times differ between two runs
            body = {k: v for k, v in body.items() if not k.endswith(("_id", "_ms"))}
        header = response.headers.get("www-authenticate")
        return response.status_code, body, header

    for case, (who, body) in cases.items():
        fast, routed = await post(who, body, False), await post(who, body, True)
        assert comparable(fast) == comparable(routed), case
    statuses = {case: (await post(w, b, False)).status_code for case, (w, b) in cases.items()}
    assert statuses == {
        "ok": 200, "above the key's ceiling": 403, "the key's ceiling as default": 200,
        "a deadline above the limit": 422, "a bad body": 422, "no key": 401, "not json": 422,
    }  # fmt: skip
