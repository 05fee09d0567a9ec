"""Dispatch policies: which priority level gets the next free GPU slot.

A policy only chooses among the levels that have a waiting record right now; the
``PriorityDispatcher`` then hands out that level's oldest record.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

from ..errors import ConfigurationError
from ..schemas import PRIORITIES, Priority


class DispatchPolicy(Protocol):
    name: str

    def choose(self, waiting: Sequence[Priority]) -> Priority:
        """Pick one of ``waiting`` (non-empty, most urgent first)."""
        ...


class StrictPolicy:
    """Always the most urgent non-empty level: a low never runs while a high waits."""

    name = "strict"

    def choose(self, waiting: Sequence[Priority]) -> Priority:
        return waiting[0]


DEFAULT_WEIGHTS: Mapping[Priority, int] = {Priority.HIGH: 6, Priority.MEDIUM: 3, Priority.LOW: 1}


class WeightedPolicy:
    """Smooth weighted round robin among the non-empty levels, so low never starves.

    With the default weights 6/3/1 and all three levels backlogged, out of every 10
    dispatches 6 go to high, 3 to medium and 1 to low, interleaved (not in bursts). Levels
    with nothing waiting take no share and build up no credit.
    """

    name = "weighted"

    def __init__(self, weights: Mapping[Priority, int] = DEFAULT_WEIGHTS):
        if any(weights.get(p, 0) <= 0 for p in PRIORITIES):
            raise ConfigurationError("every priority needs a positive weight")
        self.weights = dict(weights)
        self._credit = {p: 0 for p in PRIORITIES}

    def choose(self, waiting: Sequence[Priority]) -> Priority:
        total = 0
        for level in waiting:
            self._credit[level] += self.weights[level]
            total += self.weights[level]
        chosen = max(waiting, key=lambda level: (self._credit[level], -level.rank))
        self._credit[chosen] -= total
        for level in PRIORITIES:
            if level not in waiting:
                self._credit[level] = 0
        return chosen


def make_policy(name: str, shares: Mapping[str, int] | None = None) -> DispatchPolicy:
    """``strict`` or ``weighted`` (with ``shares`` by level name, default 6:3:1)."""
    if name == "strict":
        return StrictPolicy()
    if name == "weighted":
        if shares is None:
            return WeightedPolicy()
        return WeightedPolicy({Priority(level): share for level, share in shares.items()})
    raise ConfigurationError(f"unknown scheduling policy {name!r}: use 'strict' or 'weighted'")
