"""Prometheus metrics (``prometheus-client``), one registry per component instance.

Names follow Prometheus' conventions: ``inference_allocator_*``, ``_seconds`` for
durations, ``_total`` for counters. A worker serves its own at ``/metrics`` on
``INFERENCE_WORKER_METRICS_PORT`` (prometheus-client's own HTTP server, in a thread: the
worker's state gauges are set from its event loop once a second, never read across
threads); a bridge at ``/metrics`` of its HTTP port, where state gauges are read when
scraped (on its event loop). Counters and histograms count where things happen, in plain
Python (``Tally``), read when scraped.
"""

from __future__ import annotations

import logging
import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Gauge,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .ports import check_port_free

log = logging.getLogger(__name__)

PREFIX = "inference_allocator"
#: seconds: from a few milliseconds of queueing to minutes of generation
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)

__all__ = ["CONTENT_TYPE_LATEST", "BridgeMetrics", "MetricsServer", "WorkerMetrics", "gauges"]


class _Gauges(Collector):
    """Gauges computed at scrape time: ``read()`` returns (name, help, labels, samples)."""

    def __init__(self, read: Callable[[], Iterable[tuple[str, str, list[str], dict]]]):
        self._read = read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, doc, labels, samples in self._read():
            family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=labels)
            for key, value in samples.items():
                family.add_metric(list(key) if isinstance(key, tuple) else [key], float(value))
            yield family


def gauges(
    registry: CollectorRegistry, read: Callable[[], Iterable[tuple[str, str, list[str], dict]]]
) -> None:
    """Register gauges read when scraped."""
    registry.register(_Gauges(read))


class Tally(Collector):
    """A labelled counter, or with ``buckets`` a histogram, counted in plain Python on the
    event loop and turned into prometheus-client's metric families when scraped.

    prometheus-client's own ``Counter``/``Histogram`` take a lock and check their state on
    every ``inc``/``observe``, and ``labels`` looks the child up each time: the worker
    counts several per request, a measurable share of its CPU per request (BENCHMARKS.md's
    history, *Cost*). Here counting is
    a dict lookup and an addition (a histogram's bucket found by ``bisect``). The scrape reads
    from another thread (the worker's metrics server): it copies each dict in one C call,
    never iterates it while the loop adds to it; a histogram's sum, count and buckets are
    read one after the other, as prometheus-client reads its own.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        name: str,
        doc: str,
        labels: Sequence[str],
        buckets: Sequence[float] | None = None,
    ):
        self.name = f"{PREFIX}_{name}"
        self.doc = doc
        self.labels = list(labels)
        self.buckets = tuple(buckets) if buckets is not None else None
        #: a counter's count by label values
        self._counts: dict[tuple[str, ...], float] = {}
        #: a histogram's [count in each bucket (not cumulative, +Inf last), sum] by label values
        self._spread: dict[tuple[str, ...], list[Any]] = {}
        if not self.labels and self.buckets is None:
            self._counts[()] = 0  # shown from the start, as prometheus-client shows it
        registry.register(self)

    def inc(self, *values: str) -> None:
        """Count one (label values in the order of ``labels``)."""
        self._counts[values] = self._counts.get(values, 0) + 1

    def add(self, amount: float, *values: str) -> None:
        """Count ``amount`` (label values in the order of ``labels``)."""
        self._counts[values] = self._counts.get(values, 0) + amount

    def observe(self, amount: float, *values: str) -> None:
        """Count ``amount`` into its bucket (``le``: the first bound at or above it)."""
        spread = self._spread.get(values)
        if spread is None:
            assert self.buckets is not None, f"{self.name} is a counter"
            spread = self._spread[values] = [[0] * (len(self.buckets) + 1), 0.0]
        spread[0][bisect_left(self.buckets, amount)] += 1
        spread[1] += amount

    def describe(self) -> Iterable[Metric]:
        return [self._family()]

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        if self.buckets is None:
            assert isinstance(family, CounterMetricFamily)
            for values, count in list(self._counts.items()):
                family.add_metric([str(v) for v in values], count)
            return [family]
        assert isinstance(family, HistogramMetricFamily)
        for values, (counts, total) in list(self._spread.items()):
            cumulative, seen = [], 0
            for bound, count in zip((*self.buckets, math.inf), list(counts), strict=True):
                seen += count
                cumulative.append((floatToGoString(bound), seen))
            family.add_metric([str(v) for v in values], cumulative, total)
        return [family]

    def _family(self) -> CounterMetricFamily | HistogramMetricFamily:
        if self.buckets is None:
            return CounterMetricFamily(self.name, self.doc, labels=self.labels)
        return HistogramMetricFamily(self.name, self.doc, labels=self.labels)


class WorkerMetrics:
    """What one worker counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.dispatches = Tally(r, "dispatches", "requests given a GPU slot", ["priority"])
        self.wait = Tally(
            r,
            "wait_seconds",
            "from a request's submission to its dispatch (or to its answer, if never run)",
            ["priority", "model"],
            buckets=BUCKETS,
        )
        self.inference = Tally(
            r,
            "inference_seconds",
            "time on the GPU slot (the backend call)",
            ["priority", "model"],
            buckets=BUCKETS,
        )
        self.answers = Tally(
            r,
            "answers",
            "answers given, by status (ok, error, expired, cancelled)",
            ["status", "priority"],
        )
        self.dead_letters = Tally(r, "dead_letters", "records sent to the DLQ", [])
        self.preemptions = Tally(
            r,
            "preemptions",
            "runs cut short for a more urgent request, by the pool and the level of the run "
            "preempted (it waits again at the head of its level)",
            ["pool", "priority"],
        )
        self.placements = Tally(
            r,
            "prefix_routing_decisions",
            "requests placed among several pools of one model by prefix routing, by the pool "
            "chosen and why: session (its conversation's last server), prefix (the longest "
            "prefix held), spread (none held: the emptiest cache)",
            ["pool", "reason"],
        )
        self.prefix_chars = Tally(
            r,
            "prefix_prompt_chars",
            "characters of prompts placed by prefix routing (whole blocks, as hashed)",
            ["pool"],
        )
        self.prefix_hit_chars = Tally(
            r,
            "prefix_matched_chars",
            "of those, the characters the chosen pool's server was estimated to hold cached "
            "(the matched prefix): divided by prefix_prompt_chars, the estimated hit rate",
            ["pool"],
        )
        self.model_loads = Tally(
            r,
            "model_loads",
            "leases of a slot of a model-loading pool to another model than it ran last",
            ["pool"],
        )
        self.slots = Gauge(
            f"{PREFIX}_worker_slots", "this worker's GPU slots by state", ["state"], registry=r
        )
        self.waiting = Gauge(
            f"{PREFIX}_worker_waiting",
            "fetched requests waiting in this worker for a slot",
            ["priority"],
            registry=r,
        )
        self.pool_limit = Gauge(
            f"{PREFIX}_pool_slot_limit",
            "slots in use of a pool with slots = auto (found from its server)",
            ["pool"],
            registry=r,
        )
        self.tenant_tokens = Gauge(
            f"{PREFIX}_tenant_tokens",
            "fair shares: each tenant's weighted tokens served at each level (input tokens, "
            "plus output tokens times INFERENCE_FAIR_OUTPUT_WEIGHT, over its weight; "
            "running requests' prompts estimated): the counter the dispatcher compares",
            ["tenant", "priority"],
            registry=r,
        )
        self.tenant_waiting = Gauge(
            f"{PREFIX}_tenant_waiting",
            "fetched requests waiting in this worker, by tenant and level",
            ["tenant", "priority"],
            registry=r,
        )
        self.lag = Gauge(
            f"{PREFIX}_consumer_lag",
            "records of the request partitions this worker owns not fetched yet",
            ["priority"],
            registry=r,
        )


class BridgeMetrics:
    """What one bridge counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Tally(
            r,
            "request_seconds",
            "end to end on this bridge, from the request to its answer",
            ["priority", "model", "status"],
            buckets=BUCKETS,
        )
        self.rejected = Tally(
            r,
            "rejected",
            "requests refused before they were sent (queue_full, broker_unreachable, "
            "model_not_served)",
            ["reason"],
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsServer:
    """prometheus-client's HTTP server for one registry, on a port of its own."""

    def __init__(self, registry: CollectorRegistry, port: int, host: str = "0.0.0.0"):
        self.registry = registry
        self.port = port
        self.host = host
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        check_port_free(
            self.host, self.port, "worker's metrics listener", "INFERENCE_WORKER_METRICS_PORT"
        )
        self._server, self._thread = start_http_server(self.port, self.host, registry=self.registry)
        log.info("metrics at http://%s:%d/metrics", self.host, self.port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
