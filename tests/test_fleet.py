"""Fleets of pools on a real broker: routing by model, refusals of unknown models, the
slot table's pool view. Mock pools only; the real model server is in test_model_server.py."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from inference_allocator.brokers import free_port
from inference_allocator.producers.client import InferenceClient
from inference_allocator.producers.request_producer import RequestProducer
from inference_allocator.schemas import DeadLetter, Priority
from inference_allocator.topics import Topics

from .helpers import read_responses, read_topic

pytestmark = pytest.mark.broker

TWO_POOLS = """
[[pools]]
name = "pool-a"
backend = "mock"
models = ["model-a"]
slots = 1
latency_ms = 30

[[pools]]
name = "pool-b"
backend = "mock"
models = ["model-b", "model-c"]
slots = 1
latency_ms = 30
"""


@pytest.fixture
def fleet_settings(make_settings, tmp_path):
    path = tmp_path / "fleet.toml"
    path.write_text(TWO_POOLS)
    # One partition per level: FIFO within a level is then the partition's order.
    return make_settings(fleet_file=str(path), request_partitions=1)


async def test_each_slot_runs_the_most_urgent_request_its_pool_serves(fleet_settings, start_worker):
    """Highs for model-a wait for pool-a's one slot; pool-b's slot does not wait behind
    them, it runs the lows for model-b that only it can run, in FIFO order."""
    async with RequestProducer(fleet_settings) as producer:
        sent = [
            producer.build("model-b", f"b-low-{i}", Priority.LOW, request_id=f"b-low-{i}")
            for i in range(3)
        ] + [
            producer.build("model-a", f"a-high-{i}", Priority.HIGH, request_id=f"a-high-{i}")
            for i in range(3)
        ]
        await producer.send_many(sent)
    worker = await start_worker(fleet_settings)
    responses = await read_responses(fleet_settings, 6)
    by_id = {r.request_id: r for r in responses}
    assert all(r.status == "ok" for r in responses)
    assert {by_id[f"a-high-{i}"].pool for i in range(3)} == {"pool-a"}
    assert {by_id[f"b-low-{i}"].pool for i in range(3)} == {"pool-b"}
    # The two pools ran side by side: the first low finished before the last high.
    assert by_id["b-low-0"].completed_at_ms < by_id["a-high-2"].completed_at_ms
    lows = sorted(range(3), key=lambda i: by_id[f"b-low-{i}"].started_at_ms or 0)
    assert lows == [0, 1, 2]  # FIFO within a level and pool
    assert worker.fleet.total_slots == 2


async def test_a_model_no_pool_serves_gets_an_error_and_a_dead_letter(
    fleet_settings, start_worker, kafka_producer
):
    await start_worker(fleet_settings)
    topics = Topics.from_settings(fleet_settings)
    value = b'{"model_id": "gpt-9", "prompt": "hello"}'
    await kafka_producer.send_and_wait(topics.request(Priority.HIGH), value, key=b"unknown-1")
    [letter] = [
        DeadLetter.model_validate_json(r.value)
        for r in await read_topic(fleet_settings, topics.dlq, 1)
    ]
    assert "model 'gpt-9' is served by no pool" in letter.reason
    assert "model-a" in letter.reason and "model-b" in letter.reason
    [answer] = await read_responses(fleet_settings, 1)
    assert answer.request_id == "unknown-1" and answer.status == "error"
    assert "gpt-9" in (answer.error or "")


async def test_the_bridge_refuses_unknown_models_and_lists_the_served_ones(
    fleet_settings, start_worker, start_bridge
):
    await start_worker(fleet_settings)
    http = await start_bridge(fleet_settings)
    refused = await http.post("/api/v1/inference", json={"model_id": "gpt-9", "prompt": "x"})
    assert refused.status_code == 404
    assert refused.json()["detail"] == (
        "model 'gpt-9' is not served by this fleet; served models: model-a, model-b, model-c"
    )
    ok = await http.post(
        "/api/v1/inference", json={"model_id": "model-c", "prompt": "x", "priority": "high"}
    )
    assert ok.status_code == 200 and ok.json()["pool"] == "pool-b"

    models = (await http.get("/api/v1/models")).json()["models"]
    assert [(m["model"], m["pools"]) for m in models] == [
        ("model-a", ["pool-a"]),
        ("model-b", ["pool-b"]),
        ("model-c", ["pool-b"]),
    ]
    status = (await http.get("/api/v1/status")).json()
    assert {"queue_size", "gpus_available", "gpus_busy", "queue_depth", "workers"} <= set(status)
    pools = {p["name"]: p for p in status["pools"]}
    assert pools["pool-a"]["slots"] == 1 and pools["pool-a"]["up"] is True
    assert pools["pool-b"]["models"] == ["model-b", "model-c"]


async def test_without_a_fleet_file_every_model_is_served(settings, start_worker):
    await start_worker(settings.model_copy(update={"gpu_count": 2}))
    async with InferenceClient(settings) as client:
        answers = await asyncio.gather(
            client.infer("any-model", "x", "high"), client.infer("another", "y", "low")
        )
    assert [a.status for a in answers] == ["ok", "ok"]
    assert {a.pool for a in answers} == {"mock"}


LOADING_POOL = """
[[pools]]
name = "loader"
backend = "mock"
models = ["model-a", "model-b"]
slots = 1
latency_ms = 2
model_load_ms = 20
"""


async def test_warm_affinity_loads_fewer_models_than_strict_age_order(
    make_settings, start_worker, tmp_path
):
    """Two models interleaved on one slot that loads a model when it switches: without a
    look-ahead every request loads; with the default window most run warm."""
    path = tmp_path / "loader.toml"
    path.write_text(LOADING_POOL)
    loads = {}
    for window in (0, 4):
        settings = make_settings(
            fleet_file=str(path),
            affinity_window=window,
            request_partitions=1,
            topic_prefix=f"aff{window}{uuid.uuid4().hex[:8]}",
        )
        async with RequestProducer(settings) as producer:
            await producer.send_many(
                [producer.build(f"model-{'ab'[i % 2]}", f"p{i}", "low") for i in range(40)]
            )
        worker = await start_worker(settings)
        responses = await read_responses(settings, 40)
        assert all(r.status == "ok" for r in responses)
        loads[window] = worker.fleet.pools[0].backend.model_loads  # type: ignore[attr-defined]
    print(f"\nmodel loads for 40 interleaved requests: window 0 -> {loads[0]}, 4 -> {loads[4]}")
    assert loads[0] == 40
    assert loads[4] <= 40 // 4  # a switch at most every window + 1 requests


async def test_a_model_whose_every_pool_is_down_gets_503_at_once(
    tmp_path, make_settings, start_worker, start_bridge
):
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f"""
[[pools]]
name = "gone"
backend = "openai"
base_url = "http://127.0.0.1:{free_port()}/v1"
models = ["remote"]
slots = 1
health_interval_seconds = 0.5

[[pools]]
name = "sim"
backend = "mock"
models = ["local"]
slots = 1
latency_ms = 5
"""
    )
    settings = make_settings(fleet_file=str(fleet), request_timeout_seconds=30)
    await start_worker(settings)
    http = await start_bridge(settings)
    started = asyncio.get_running_loop().time()
    refused = await http.post("/api/v1/inference", json={"model_id": "remote", "prompt": "hi"})
    took = asyncio.get_running_loop().time() - started
    assert refused.status_code == 503, refused.text
    assert "gone" in refused.json()["detail"] and "down" in refused.json()["detail"]
    assert "Retry-After" in refused.headers and took < 5
    served = await http.post("/api/v1/inference", json={"model_id": "local", "prompt": "hi"})
    assert served.status_code == 200, served.text
