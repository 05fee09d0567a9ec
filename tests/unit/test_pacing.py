"""How a process's readers' fetch waits follow its work (pure logic: the consumers here are
stand-ins holding the one attribute the pace sets)."""

from __future__ import annotations

from types import SimpleNamespace

from inference_allocator.pacing import (
    BUSY_WAKEUP_S,
    IDLE_AFTER_S,
    IDLE_WAKEUP_S,
    OFF_PATH_IDLE_MS,
    STATUS_IDLE_MS,
    FetchPace,
)


def reader(wait_ms: int) -> SimpleNamespace:
    return SimpleNamespace(
        _fetcher=SimpleNamespace(_fetch_max_wait_ms=wait_ms, _fetcher_timeout=0.2)
    )


def wait(consumer: SimpleNamespace) -> int:
    return consumer._fetcher._fetch_max_wait_ms


def test_waits_double_after_quiet_up_to_their_caps_and_go_short_at_once():
    pace = FetchPace(idle_ms=250)
    on_path, off_path, slow = reader(2), reader(100), reader(2000)
    pace.stir(now=0.0)
    pace.follow(on_path)
    pace.follow(off_path, on_path=False)
    pace.follow(slow)
    pace.settle(now=IDLE_AFTER_S - 0.1)
    assert (wait(on_path), wait(off_path), pace.idle) == (2, 100, False)
    waits = []
    for tick in range(12):
        pace.settle(now=IDLE_AFTER_S + tick)
        waits.append(wait(on_path))
    assert waits[:4] == [4, 8, 16, 32] and waits[-1] == 250
    assert wait(off_path) == OFF_PATH_IDLE_MS and wait(slow) == 2000
    assert pace.idle and pace.wait_ms() == 2000
    pace.stir(now=100.0)
    assert (wait(on_path), wait(off_path), wait(slow), pace.idle) == (2, 100, 2000, False)
    assert pace.wakes == 1


def test_nothing_goes_idle_while_something_is_awaited():
    awaited = [True]
    pace = FetchPace(idle_ms=250, busy=lambda: awaited[0])
    consumer = reader(2)
    pace.follow(consumer)
    pace.stir(now=0.0)
    pace.settle(now=60.0)
    assert wait(consumer) == 2 and not pace.idle
    awaited[0] = False
    pace.settle(now=60.5)  # the quiet counts from the last time it was busy
    assert wait(consumer) == 2
    pace.settle(now=60.0 + IDLE_AFTER_S)
    assert wait(consumer) == 4 and pace.idle


def test_a_reader_with_a_lower_cap_lags_no_more_than_it():
    pace = FetchPace(idle_ms=250)
    slots, backlog = reader(100), reader(100)
    pace.stir(now=0.0)
    pace.follow(slots, on_path=False, cap_ms=250)  # a 1.5 s lease TTL's sixth
    pace.follow(backlog, on_path=False, cap_ms=10_000)  # never above the usual cap
    answers = reader(100)
    pace.follow(answers, status=True, cap_ms=10_000)
    for tick in range(12):
        pace.settle(now=IDLE_AFTER_S + tick)
    assert (wait(slots), wait(backlog), wait(answers)) == (250, OFF_PATH_IDLE_MS, STATUS_IDLE_MS)


def test_a_reader_that_pauses_wakes_often_while_busy_and_every_reader_rarely_once_idle():
    pace = FetchPace(idle_ms=250)
    intake, answers = reader(2), reader(2)
    pace.stir(now=0.0)
    pace.follow(intake, pauses=True)
    pace.follow(answers)
    assert intake._fetcher._fetcher_timeout == BUSY_WAKEUP_S
    pace.settle(now=IDLE_AFTER_S + 1)
    assert intake._fetcher._fetcher_timeout == IDLE_WAKEUP_S
    assert answers._fetcher._fetcher_timeout == IDLE_WAKEUP_S
    pace.stir(now=100.0)
    assert intake._fetcher._fetcher_timeout == BUSY_WAKEUP_S
    assert answers._fetcher._fetcher_timeout == 0.2  # never paused: aiokafka's default
