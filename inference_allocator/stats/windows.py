"""One window's statistics of one model and priority: pure functions on JSON-able dicts
(what a faust table keeps, and what ``<prefix>.stats`` carries).

Durations are counted in log-scale buckets (each 25 % wider than the one before, from 1 ms
to about 10 minutes), so a window's state stays ~0.5 KB whatever its traffic (faust writes
it to its changelog at every answer); a percentile is the upper edge of its bucket, at
most 25 % above the true value, and ``max`` is exact.
"""

from __future__ import annotations

import bisect
import math
from typing import Any

from ..schemas import DEFAULT_TENANT, ResponseRecord

_STATUSES = ("ok", "error", "expired", "cancelled")
_GROWTH = 1.25
#: upper edges of the buckets, in milliseconds (a last bucket takes anything above)
EDGES = [round(_GROWTH**k, 3) for k in range(int(math.log(600_000) / math.log(_GROWTH)) + 2)]


def empty() -> dict[str, Any]:
    return {
        "answers": 0,
        **{s: 0 for s in _STATUSES},
        "preempted": 0,  # preemptions the answered requests went through
        # prompt tokens of the answers whose server said how many it found in its cache,
        # and those cached ones: the servers' own prefix-cache hit rate
        "prompt_tokens": 0,
        "cached_tokens": 0,
        "tenants": {},  # tokens served per tenant (the ones most served, see TENANTS)
        "wait_ms": {},
        "inference_ms": {},
    }


def add(window: dict[str, Any], response: ResponseRecord) -> dict[str, Any]:
    """``window`` with ``response`` counted (a new dict: faust writes what is assigned)."""
    updated = {**empty(), **window}
    updated["answers"] += 1
    if response.status in _STATUSES:
        updated[response.status] += 1
    updated["preempted"] += response.preemptions or 0
    usage = response.usage or {}
    tokens = usage.get("total_tokens") or usage.get("prompt_tokens", 0) + usage.get(
        "completion_tokens", 0
    )
    if tokens:
        updated["tenants"] = _served(updated["tenants"], response.tenant or DEFAULT_TENANT, tokens)
    if "cached_tokens" in usage and "prompt_tokens" in usage:
        updated["prompt_tokens"] += usage["prompt_tokens"]
        updated["cached_tokens"] += usage["cached_tokens"]
    for field, value in (
        ("wait_ms", response.queue_time_ms),
        ("inference_ms", response.inference_time_ms if response.status == "ok" else None),
    ):
        if value is not None:
            updated[field] = _count(updated[field], value)
    return updated


#: tenants kept per window, the most served; the rest are summed as "others"
TENANTS = 8


def _served(tenants: dict[str, int], tenant: str, tokens: int) -> dict[str, int]:
    served = dict(tenants)
    if tenant in served or len(served) < TENANTS or tenant == "others":
        served[tenant] = served.get(tenant, 0) + tokens
        return served
    least = min((t for t in served if t != "others"), key=served.__getitem__)
    if served[least] < tokens:  # the newcomer takes its place; the least goes to others
        served["others"] = served.get("others", 0) + served.pop(least)
        served[tenant] = tokens
    else:
        served["others"] = served.get("others", 0) + tokens
    return served


def _count(histogram: dict[str, Any], value: float) -> dict[str, Any]:
    counts = dict(histogram.get("counts", {}))
    bucket = str(bisect.bisect_left(EDGES, value))  # JSON keys are strings
    counts[bucket] = counts.get(bucket, 0) + 1
    return {"counts": counts, "max": max(value, histogram.get("max", value))}


def percentiles(histogram: dict[str, Any]) -> dict[str, float] | None:
    counts = {int(k): n for k, n in histogram.get("counts", {}).items()}
    total = sum(counts.values())
    if not total:
        return None
    exact_max = float(histogram["max"])

    def at(q: float) -> float:
        seen = 0
        for bucket in sorted(counts):
            seen += counts[bucket]
            if seen >= q * total:
                edge = EDGES[bucket] if bucket < len(EDGES) else exact_max
                return round(min(edge, exact_max), 3)
        return exact_max

    return {"p50": at(0.50), "p90": at(0.90), "p99": at(0.99), "max": round(exact_max, 3)}


def summary(
    key: str, window: str, start_s: float, seconds: float, value: dict[str, Any]
) -> dict[str, Any]:
    """The record published for a closed window of ``seconds`` from ``start_s`` (``key``
    is ``model/priority``)."""
    model, _, priority = key.rpartition("/")
    value = {**empty(), **value}
    start_ms = int(start_s * 1000)
    return {
        "model": model,
        "priority": priority,
        "window": window,
        "start_ms": start_ms,
        "end_ms": start_ms + int(seconds * 1000),
        "answers": value["answers"],
        **{s: value[s] for s in _STATUSES},
        "preempted": value["preempted"],
        "prompt_tokens": value["prompt_tokens"],
        "cached_tokens": value["cached_tokens"],
        "tenants": value["tenants"],
        "wait_ms": percentiles(value["wait_ms"]),
        "inference_ms": percentiles(value["inference_ms"]),
    }
