"""One window's statistics: counts by status, percentiles from a bounded sample."""

from inference_allocator.schemas import ResponseRecord
from inference_allocator.stats.windows import add, empty, percentiles, summary


def _answer(status: str, wait: float, ran: float | None = None) -> ResponseRecord:
    return ResponseRecord(request_id="r", status=status, queue_time_ms=wait, inference_time_ms=ran)


def test_answers_are_counted_by_status_and_timed():
    window = empty()
    for i in range(10):
        window = add(window, _answer("ok", wait=i, ran=100 + i))
    window = add(window, _answer("expired", wait=500))
    record = summary("llama-3-70b/high", "10s", 1000.0, 10, window)
    assert record["model"] == "llama-3-70b" and record["priority"] == "high"
    assert (record["start_ms"], record["end_ms"]) == (1_000_000, 1_010_000)
    assert record["answers"] == 11 and record["ok"] == 10 and record["expired"] == 1
    p50 = record["inference_ms"]["p50"]
    assert 105 <= p50 <= 105 * 1.25 and record["inference_ms"]["max"] == 109  # a bucket's edge
    assert record["wait_ms"]["max"] == 500  # an expired answer waited too


def test_preemptions_of_the_answered_requests_are_summed():
    window = empty()
    for preemptions in (None, 1, 2):
        answer = _answer("ok", wait=1, ran=1).model_copy(update={"preemptions": preemptions})
        window = add(window, answer)
    assert summary("m/low", "10s", 0.0, 10, window)["preempted"] == 3
    # a window kept before the field existed still summarises
    assert summary("m/low", "10s", 0.0, 10, {"answers": 1, "ok": 1})["preempted"] == 0


def test_the_servers_cache_hits_are_summed_where_they_said_them():
    window = empty()
    for usage in (
        {"prompt_tokens": 100, "completion_tokens": 5, "cached_tokens": 90},
        {"prompt_tokens": 100, "completion_tokens": 5, "cached_tokens": 0},
        {"prompt_tokens": 1000, "completion_tokens": 5},  # a server that does not say
        None,
    ):
        window = add(window, _answer("ok", wait=1, ran=1).model_copy(update={"usage": usage}))
    record = summary("m/low", "10s", 0.0, 10, window)
    assert (record["prompt_tokens"], record["cached_tokens"]) == (200, 90)


def test_tokens_served_are_kept_per_tenant_the_most_served_first():
    window = empty()
    for tenant, tokens in [("a", 10), ("b", 5), (None, 3)] + [(f"t{i}", 1) for i in range(10)]:
        answer = _answer("ok", wait=1, ran=1).model_copy(
            update={"tenant": tenant, "usage": {"total_tokens": tokens}}
        )
        window = add(window, answer)
    tenants = summary("m/low", "10s", 0.0, 10, window)["tenants"]
    assert tenants["a"] == 10 and tenants["b"] == 5 and tenants["default"] == 3
    assert len(tenants) <= 9 and sum(tenants.values()) == 28  # the small ones in "others"


def test_a_busy_window_stays_small():
    window = empty()
    for i in range(3000):
        window = add(window, _answer("ok", wait=float(i % 100), ran=1.0))
    assert window["answers"] == 3000 and len(window["wait_ms"]["counts"]) < 30
    assert 49 <= percentiles(window["wait_ms"])["p50"] <= 50 * 1.25


def test_an_empty_sample_has_no_percentiles():
    assert percentiles({}) is None
    assert summary("m/low", "60s", 0.0, 60, {})["wait_ms"] is None
