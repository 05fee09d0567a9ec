"""How many requests a pool with slots = "auto" keeps in flight: from the server's slots,
from its queue, or from the time per token (pure logic, a clock of the test's own)."""

from inference_allocator.fleet.capacity import HOLD_S, Capacity, ServerReport


def queued(capacity: Capacity, running: int, waiting: int, in_flight: int) -> bool:
    """The server says it queues at two asks in a row (once may be between its steps)."""
    assert not capacity.told(ServerReport(running=running, waiting=waiting), in_flight)
    return capacity.told(ServerReport(running=running, waiting=waiting), in_flight)


def test_the_servers_slots_are_the_limit_within_max_slots():
    capacity = Capacity(max_slots=8)
    assert capacity.told(ServerReport(total_slots=4), in_flight=0)
    assert capacity.limit == 4 and capacity.source == "the server's slots"
    assert capacity.told(ServerReport(total_slots=32), in_flight=0) and capacity.limit == 8
    assert not capacity.told(ServerReport(total_slots=32), in_flight=8)


def test_a_queue_in_the_server_brings_the_limit_back_to_what_it_runs_then_holds():
    now = [0.0]
    capacity = Capacity(max_slots=64, clock=lambda: now[0])
    for expected in (2, 4, 8):  # full and nothing queued there: twice as many (slow start)
        assert capacity.told(ServerReport(running=expected // 2, waiting=0), expected // 2)
        assert capacity.limit == expected
    assert not capacity.told(ServerReport(running=3, waiting=0), in_flight=3)  # not full
    assert queued(capacity, running=5, waiting=3, in_flight=8)
    assert capacity.limit == 5
    assert not capacity.told(ServerReport(running=5, waiting=0), in_flight=5)  # held
    now[0] += HOLD_S
    assert capacity.told(ServerReport(running=5, waiting=0), in_flight=5)
    assert capacity.limit == 6  # one at a time, once it has been full


def test_a_silent_server_is_judged_by_the_time_per_token():
    now = [0.0]
    capacity = Capacity(max_slots=64, clock=lambda: now[0])
    for in_flight in (1, 2, 4):  # tokens come as fast as ever, every slot used: grow
        assert capacity.ran(seconds=1.0, tokens=100, in_flight=in_flight)
    assert capacity.limit == 8 and capacity.source == "latency"
    assert not capacity.ran(seconds=1.0, tokens=100, in_flight=2)  # not full: no news
    assert capacity.ran(seconds=2.5, tokens=100, in_flight=8)  # 2.5x slower: back off
    assert capacity.limit == 6
    assert not capacity.ran(seconds=1.0, tokens=100, in_flight=6)  # held after a backoff
    now[0] += HOLD_S
    assert capacity.ran(seconds=1.0, tokens=100, in_flight=6) and capacity.limit == 7


def test_the_limit_stays_between_one_and_max_slots():
    now = [0.0]
    capacity = Capacity(max_slots=2, clock=lambda: now[0])
    queued(capacity, running=0, waiting=3, in_flight=1)
    assert capacity.limit == 1
    now[0] += HOLD_S
    capacity.told(ServerReport(running=1, waiting=0), 1)
    capacity.told(ServerReport(running=2, waiting=0), 2)
    assert capacity.limit == 2


def test_probes_that_keep_finding_the_server_full_come_less_often():
    now = [0.0]
    capacity = Capacity(max_slots=64, clock=lambda: now[0])
    capacity.told(ServerReport(running=1, waiting=0), 1)  # slow start: 2
    queued(capacity, running=2, waiting=1, in_flight=2)  # full at 2: hold HOLD_S
    holds = []
    for _ in range(3):  # each probe to 3 queues a request: the next one waits twice as long
        waited = 0.0
        while not capacity.told(ServerReport(running=2, waiting=0), 2):
            now[0] += 1.0
            waited += 1.0
        holds.append(waited)
        assert capacity.limit == 3
        queued(capacity, running=2, waiting=1, in_flight=3)
        assert capacity.limit == 2
    assert holds == [HOLD_S, 2 * HOLD_S, 4 * HOLD_S]
    # a probe that finds room: the hold is short again, and it goes on growing
    now[0] += 8 * HOLD_S
    assert capacity.told(ServerReport(running=2, waiting=0), 2) and capacity.limit == 3
    assert capacity.told(ServerReport(running=3, waiting=0), 3) and capacity.limit == 4


def test_requests_waiting_while_slots_are_unused_are_no_sign_of_a_full_server():
    capacity = Capacity(max_slots=64)
    capacity.told(ServerReport(running=1, waiting=0), 1)
    capacity.told(ServerReport(running=2, waiting=0), 2)
    assert capacity.limit == 4
    for _ in range(3):  # the end of a flood: 2 in flight of 4, one just arrived there
        assert not capacity.told(ServerReport(running=1, waiting=1), 2)
    assert capacity.limit == 4


def test_a_request_waiting_for_one_ask_only_is_no_sign_of_a_full_server():
    capacity = Capacity(max_slots=64)
    capacity.told(ServerReport(running=1, waiting=0), 1)
    capacity.told(ServerReport(running=2, waiting=0), 2)
    assert capacity.limit == 4
    assert not capacity.told(ServerReport(running=3, waiting=1), 4)  # between two steps
    assert capacity.told(ServerReport(running=4, waiting=0), 4) and capacity.limit == 8
