"""Budgets per API key: the sliding windows, the verdict, OpenAI's headers; pure logic on a
clock the test sets (the broker tests are in test_tenants.py)."""

import pytest

from inference_allocator.apikeys import Caller, KeyRing
from inference_allocator.bridge.budgets import Budgets
from inference_allocator.errors import ConfigurationError
from inference_allocator.schemas import Priority, ResponseRecord


class Clock:
    def __init__(self, now: float = 1_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def answer(tenant: str, tokens: int) -> ResponseRecord:
    return ResponseRecord(request_id="r", status="ok", tenant=tenant,
                          usage={"prompt_tokens": tokens - 1, "completion_tokens": 1})  # fmt: skip


def test_keys_carry_weights_and_budgets():
    ring = KeyRing.load(
        "k" * 16 + ":team:low:weight=2.5:tokens_per_minute=100,"
        + "j" * 16 + ":other:requests_per_minute=5",
        None,
    )  # fmt: skip
    team, other = ring.callers()
    assert (team.max_priority, team.weight, team.tokens_per_minute) == (Priority.LOW, 2.5, 100)
    assert (other.max_priority, other.requests_per_minute, other.weight) == (Priority.HIGH, 5, 1)
    assert ring.weights() == {"team": 2.5, "other": 1.0}


def test_a_key_over_its_minute_budget_waits_until_its_use_leaves_the_window():
    clock = Clock()
    team = Caller("team", Priority.HIGH, tokens_per_minute=100)
    budgets = Budgets([team, Caller("free", Priority.HIGH)], clock)
    assert budgets.verdict(Caller("free", Priority.HIGH)) is None  # no budget: no verdict
    budgets.answered(answer("team", 60), int(clock.now * 1000))
    fine = budgets.verdict(team)
    assert not fine.over and fine.headers["x-ratelimit-remaining-tokens"] == "40"
    clock.now += 20
    budgets.answered(answer("team", 50), int(clock.now * 1000))
    over = budgets.verdict(team)
    assert over.over and over.headers["x-ratelimit-remaining-tokens"] == "0"
    assert over.retry_after_s == 40  # the first answer leaves the window in 40 s
    assert over.headers["Retry-After"] == "40"
    assert over.headers["x-ratelimit-reset-tokens"] == "40s"
    assert "100 tokens per minute (110 used)" in over.message
    clock.now += 41
    assert not budgets.verdict(team).over  # 50 left in the window


def test_requests_and_days_are_counted_too():
    clock = Clock()
    team = Caller("team", Priority.HIGH, requests_per_minute=2, tokens_per_day=1000)
    budgets = Budgets([team], clock)
    assert budgets.window_s == 24 * 3600  # a bridge reads back a day of answers
    for _ in range(2):
        budgets.answered(answer("team", 10), int(clock.now * 1000))
    assert budgets.verdict(team).over  # two requests this minute
    clock.now += 61
    assert not budgets.verdict(team).over
    budgets.answered(answer("team", 990), int(clock.now * 1000))
    day = budgets.verdict(team)
    assert day.over and day.headers["x-ratelimit-limit-tokens"] == "1000"
    assert day.retry_after_s > 23 * 3600  # the day's first use leaves it tomorrow
    assert day.headers["x-ratelimit-reset-tokens"].startswith("23h")


def test_answers_on_the_topic_are_read_only_for_budgeted_tenants():
    clock = Clock()
    budgets = Budgets([Caller("team", Priority.HIGH, tokens_per_minute=10)], clock)
    other = answer("someone", 50).model_dump_json().encode()
    budgets.read(other, int(clock.now * 1000))
    budgets.read(b"not json", int(clock.now * 1000))
    budgets.read(None, int(clock.now * 1000))
    team = Caller("team", Priority.HIGH, tokens_per_minute=10)
    assert not budgets.verdict(team).over
    budgets.read(answer("team", 10).model_dump_json().encode(), int(clock.now * 1000))
    assert budgets.verdict(team).over


def test_a_bad_attribute_is_refused_naming_the_entry_not_the_key():
    for entry, says in (
        (":team:colour=red", "unknown attribute 'colour'"),
        (":team:weight=heavy", "weight='heavy' is not a number"),
        (":team:high:tokens_per_minute=0", "tokens_per_minute must be above 0"),
    ):
        with pytest.raises(ConfigurationError, match=says) as refused:
            KeyRing.load("s" * 20 + entry, None)
        assert "s" * 20 not in str(refused.value)
