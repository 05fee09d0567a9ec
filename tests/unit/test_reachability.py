"""The bridge's view of the broker: probes and received records decide it together."""

from __future__ import annotations

import time

from inference_allocator.reachability import Reachability


async def test_an_unanswered_probe_makes_the_broker_unreachable_until_something_answers():
    reachability = Reachability("127.0.0.1:9092")
    reachability.unanswered(TimeoutError("no answer within 1 s"), time.monotonic())
    assert not reachability.up
    assert "no answer within 1 s" in str(reachability.error())
    assert reachability.lost().done()
    reachability.answered()  # a probe, or records the reader received
    assert reachability.up and reachability.last_error == ""
    assert not reachability.lost().done()


def test_a_probe_that_timed_out_while_records_arrived_does_not_count():
    reachability = Reachability("127.0.0.1:9092")
    reachability.unanswered(ConnectionError("refused"))
    asked_at = time.monotonic()
    reachability.answered()  # records arrived while the probe waited on a stale refresh
    reachability.unanswered(TimeoutError("no answer within 1 s"), asked_at)
    assert reachability.up
    # A probe asked after the last answer counts.
    reachability.unanswered(TimeoutError("no answer within 1 s"), time.monotonic())
    assert not reachability.up
