"""The worker's state gauges (slots by state, requests waiting, consumer lag), set from its
event loop once a second: the metrics server reads them from its own thread, and never
reads the worker's structures across threads."""

from __future__ import annotations

import asyncio
import contextlib

from aiokafka import AIOKafkaConsumer

from ..metrics import WorkerMetrics
from ..schemas import PRIORITIES
from ..topics import Topics
from .fair_share import FairShare
from .slots import SlotTable
from .waiting import WaitingRequests

INTERVAL_S = 1.0


async def keep_gauges(
    metrics: WorkerMetrics,
    slots: SlotTable,
    waiting: WaitingRequests,
    consumer: AIOKafkaConsumer,
    topics: Topics,
    fair: FairShare | None = None,
) -> None:
    shown: set[tuple[str, str]] = set()  # tenants waiting last time: set to 0 when gone
    while True:
        for state, count in slots.counts().items():
            metrics.slots.labels(state).set(count)
        lag = {p: 0 for p in PRIORITIES}
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is not None:
                lag[topics.priority_of(tp.topic)] += max(0, high - await consumer.position(tp))
        for priority in PRIORITIES:
            metrics.waiting.labels(priority.value).set(waiting.depth(priority))
            metrics.lag.labels(priority.value).set(lag[priority])
        waiting_now = {
            (tenant, priority.value): count
            for priority in PRIORITIES
            for tenant, count in waiting.tenants(priority).items()
        }
        for key in shown - set(waiting_now):
            metrics.tenant_waiting.remove(*key)  # nothing waits: the series goes
        for key, count in waiting_now.items():
            metrics.tenant_waiting.labels(*key).set(count)
        shown = set(waiting_now)
        if fair is not None:
            for priority in PRIORITIES:
                for tenant in fair.forget_idle(priority, waiting.tenants(priority)):
                    with contextlib.suppress(KeyError):  # never shown: never set
                        metrics.tenant_tokens.remove(tenant, priority.value)
                for tenant in fair.tenants(priority):
                    metrics.tenant_tokens.labels(tenant, priority.value).set(
                        fair.counter(priority, tenant)
                    )
        await asyncio.sleep(INTERVAL_S)
