"""The completion rate a bridge counts, and the Retry-After it gives from it."""

from __future__ import annotations

from inference_allocator.consumers.rate import CompletionRate, retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_rate_is_over_the_last_window():
    clock = Clock()
    rate = CompletionRate(window_s=10, clock=clock)
    assert rate.per_second() == 0
    for _ in range(20):  # 5 answers a second for 20 s
        clock.now += 1
        rate.add(5)
    assert rate.per_second() == 5
    clock.now += 4  # then nothing for 4 s: 6 s of the window had answers
    assert rate.per_second() == 3
    clock.now += 10
    assert rate.per_second() == 0


def test_a_young_reader_divides_by_its_age_not_the_window():
    clock = Clock()
    rate = CompletionRate(window_s=10, clock=clock)
    clock.now += 2
    rate.add(40)
    assert rate.per_second() == 20


def test_retry_after_is_the_time_to_make_room():
    # 50 waiting, room below 20: 31 must be answered; at 5/s that is 7 s (rounded up).
    assert retry_after(50, 20, 5.0, fallback=1) == 7
    assert retry_after(20, 20, 100.0, fallback=9) == 1  # at least a second
    assert retry_after(10_000, 20, 0.5, fallback=1) == 300  # capped
    assert retry_after(50, 20, 0.0, fallback=9) == 9  # nothing answered lately: no estimate
