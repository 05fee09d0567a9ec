"""Prometheus metrics, scraped after real traffic: a worker's own listener and a bridge's
/metrics, parsed with prometheus-client's own parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from inference_allocator.brokers import free_port
from inference_allocator.schemas import Priority
from inference_allocator.topics import Topics

from .helpers import wait_for


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_real_traffic(
    make_settings, start_worker, start_bridge, kafka_producer
):
    port = free_port()
    settings = make_settings(gpu_count=2, mock_latency_ms=20, worker_metrics_port=port)
    await start_worker(settings)
    http = await start_bridge(settings)
    body = {"model_id": "m", "prompt": "count me", "priority": "high"}
    for _ in range(5):
        assert (await http.post("/api/v1/inference", json=body)).status_code == 200
    late = await http.post("/api/v1/inference", json={**body, "timeout_seconds": 0.001})
    assert late.status_code == 504
    topic = Topics.from_settings(settings).request(Priority.LOW)
    await kafka_producer.send_and_wait(topic, b"not json", key=b"bad-1")

    async with httpx.AsyncClient() as client:

        async def scraped() -> dict:
            reply = await client.get(f"http://127.0.0.1:{port}/metrics")
            return _samples(reply.text)

        async def counted() -> bool:
            worker = await scraped()
            return (
                _value(worker, "inference_allocator_dead_letters_total") == 1
                and _value(worker, "inference_allocator_worker_slots", state="free") == 2
            )

        await wait_for(counted, "the worker's counts")
        worker = await scraped()
    assert _value(worker, "inference_allocator_dispatches_total", priority="high") == 5
    assert _value(worker, "inference_allocator_answers_total", status="ok", priority="high") == 5
    assert (
        _value(worker, "inference_allocator_answers_total", status="expired", priority="high") == 1
    )
    assert (
        _value(worker, "inference_allocator_inference_seconds_count", priority="high", model="m")
        == 5
    )
    assert _value(worker, "inference_allocator_consumer_lag", priority="high") == 0

    reply = await http.get("/metrics")
    assert reply.headers["content-type"].startswith("text/plain")

    async def settled() -> bool:  # the slot table's last release reaches the bridge
        found = _samples((await http.get("/metrics")).text)
        return (
            _value(found, "inference_allocator_gpus", state="available") == 2
            and _value(found, "inference_allocator_backlog", priority="high") == 0
        )

    await wait_for(settled, "the bridge to see both slots free and every answer committed")
    bridge = _samples((await http.get("/metrics")).text)
    assert (
        _value(
            bridge,
            "inference_allocator_request_seconds_count",
            priority="high",
            model="m",
            status="ok",
        )
        == 5
    )
    assert _value(bridge, "inference_allocator_broker_reachable") == 1
    assert _value(bridge, "inference_allocator_gpus", state="available") == 2
    assert _value(bridge, "inference_allocator_queue_depth", priority="high") == 0
    assert _value(bridge, "inference_allocator_retained_results") >= 6


def test_a_tally_exposes_what_prometheus_client_s_own_metrics_expose():
    """``Tally`` (counted in plain Python) against prometheus-client's Counter and
    Histogram fed the same counts: the same samples, ``_created`` aside. Amounts on a
    bucket's bound fall in that bucket (``le``), past the last in +Inf."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from inference_allocator.metrics import BUCKETS, Tally

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    counter = Tally(ours, "things", "things counted", ["kind"])
    histogram = Tally(ours, "took_seconds", "how long", ["kind", "model"], buckets=BUCKETS)
    bare = Tally(ours, "bare", "never counted", [])
    their_counter = Counter("inference_allocator_things", "things counted", ["kind"],
                            registry=theirs)  # fmt: skip
    their_histogram = Histogram("inference_allocator_took_seconds", "how long",
                                ["kind", "model"], buckets=BUCKETS, registry=theirs)  # fmt: skip
    Counter("inference_allocator_bare", "never counted", registry=theirs)
    amounts = [0.0, 0.005, 0.0051, 0.1, 1, 2.5, 299.9, 300, 300.1, 1e9]
    for i, amount in enumerate(amounts):
        kind = (Priority.HIGH, "b")[i % 2]
        counter.inc(kind)
        histogram.observe(amount, kind, "m")
        their_counter.labels(str(kind)).inc()
        their_histogram.labels(str(kind), "m").observe(amount)
    assert bare.name == "inference_allocator_bare"

    def samples(registry):
        found = _samples(generate_latest(registry).decode())
        return {key: value for key, value in found.items() if not key[0].endswith("_created")}

    expected = samples(theirs)
    assert samples(ours) == expected
    at_first_bound = [  # 0.0 (high) and 0.005 (b), on the bound
        _value(expected, "inference_allocator_took_seconds_bucket", kind=kind, model="m",
               le="0.005") for kind in ("high", "b")
    ]  # fmt: skip
    assert at_first_bound == [1, 1]
    assert _value(expected, "inference_allocator_bare_total") == 0
    assert ("inference_allocator_bare_total", ()) in expected
