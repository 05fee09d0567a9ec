"""How many requests a pool with slots = "auto" keeps in flight: from the server's slots,
from its queue, or from the time per token (pure logic, a clock of the test's own)."""

from inference_allocator.fleet.capacity import HOLD_S, Capacity, ServerReport


def test_the_servers_slots_are_the_limit_within_max_slots():
    capacity = Capacity(max_slots=8)
    assert capacity.told(ServerReport(total_slots=4), in_flight=0)
    assert capacity.limit == 4 and capacity.source == "the server's slots"
    assert capacity.told(ServerReport(total_slots=32), in_flight=0) and capacity.limit == 8
    assert not capacity.told(ServerReport(total_slots=32), in_flight=8)


def test_a_queue_in_the_server_brings_the_limit_back_to_what_it_runs_then_holds():
    now = [0.0]
    capacity = Capacity(max_slots=64, clock=lambda: now[0])
    for expected in range(2, 7):  # full and nothing queued there: one more each time
        assert capacity.told(ServerReport(running=expected - 1, waiting=0), expected - 1)
        assert capacity.limit == expected
    assert not capacity.told(ServerReport(running=3, waiting=0), in_flight=3)  # not full
    assert capacity.told(ServerReport(running=5, waiting=1), in_flight=6)
    assert capacity.limit == 5
    assert not capacity.told(ServerReport(running=5, waiting=0), in_flight=5)  # held
    now[0] += HOLD_S
    assert capacity.told(ServerReport(running=5, waiting=0), in_flight=5)
    assert capacity.limit == 6


def test_a_silent_server_is_judged_by_the_time_per_token():
    now = [0.0]
    capacity = Capacity(max_slots=64, clock=lambda: now[0])
    for in_flight in range(1, 5):  # tokens come as fast as ever, every slot used: grow
        assert capacity.ran(seconds=1.0, tokens=100, in_flight=in_flight)
    assert capacity.limit == 5 and capacity.source == "latency"
    assert not capacity.ran(seconds=1.0, tokens=100, in_flight=2)  # not full: no news
    assert capacity.ran(seconds=2.5, tokens=100, in_flight=5)  # 2.5x slower: back off
    assert capacity.limit == 4
    assert not capacity.ran(seconds=1.0, tokens=100, in_flight=4)  # held after a backoff
    now[0] += HOLD_S
    assert capacity.ran(seconds=1.0, tokens=100, in_flight=4) and capacity.limit == 5


def test_the_limit_stays_between_one_and_max_slots():
    now = [0.0]
    capacity = Capacity(max_slots=2, clock=lambda: now[0])
    capacity.told(ServerReport(running=0, waiting=3), in_flight=1)
    assert capacity.limit == 1
    now[0] += HOLD_S
    capacity.told(ServerReport(running=1, waiting=0), 1)
    capacity.told(ServerReport(running=2, waiting=0), 2)
    assert capacity.limit == 2
