"""Prometheus metrics (``prometheus-client``), one registry per component instance.

Names follow Prometheus' conventions: ``inference_allocator_*``, ``_seconds`` for
durations, ``_total`` for counters. A worker serves its own at ``/metrics`` on
``INFERENCE_WORKER_METRICS_PORT`` (prometheus-client's own HTTP server, in a thread: the
worker's state gauges are set from its event loop once a second, never read across
threads); a bridge at ``/metrics`` of its HTTP port, where state gauges are read when
scraped (on its event loop). Counters and histograms count where things happen.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

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


class Children:
    """A labelled metric whose child of each set of label values is looked up once:
    prometheus-client's ``labels`` checks and locks on every call, a cost per request on
    the worker's and the bridge's hot paths. Used from the event loop only."""

    def __init__(self, metric: Counter | Histogram):
        self.metric = metric
        self._children: dict[tuple[str, ...], Any] = {}

    def labels(self, *values: str) -> Any:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self.metric.labels(*values)
        return child


class WorkerMetrics:
    """What one worker counts."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.dispatches = Children(
            Counter(f"{PREFIX}_dispatches", "requests given a GPU slot", ["priority"], registry=r)
        )
        self.wait = Children(
            Histogram(
                f"{PREFIX}_wait_seconds",
                "from a request's submission to its dispatch (or to its answer, if never run)",
                ["priority", "model"],
                buckets=BUCKETS,
                registry=r,
            )
        )
        self.inference = Children(
            Histogram(
                f"{PREFIX}_inference_seconds",
                "time on the GPU slot (the backend call)",
                ["priority", "model"],
                buckets=BUCKETS,
                registry=r,
            )
        )
        self.answers = Children(
            Counter(
                f"{PREFIX}_answers",
                "answers given, by status (ok, error, expired, cancelled)",
                ["status", "priority"],
                registry=r,
            )
        )
        self.dead_letters = Counter(f"{PREFIX}_dead_letters", "records sent to the DLQ", registry=r)
        self.model_loads = Children(
            Counter(
                f"{PREFIX}_model_loads",
                "leases of a slot of a model-loading pool to another model than it ran last",
                ["pool"],
                registry=r,
            )
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
        self.requests = Children(
            Histogram(
                f"{PREFIX}_request_seconds",
                "end to end on this bridge, from the request to its answer",
                ["priority", "model", "status"],
                buckets=BUCKETS,
                registry=r,
            )
        )
        self.rejected = Children(
            Counter(
                f"{PREFIX}_rejected",
                "requests refused before they were sent (queue_full, broker_unreachable, "
                "model_not_served)",
                ["reason"],
                registry=r,
            )
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
