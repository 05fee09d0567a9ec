"""One priority order across the fleet: leader mode against shared mode, with whole worker
processes (the group protocol decides who leads), and the leader stopped or killed."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import zlib
from pathlib import Path

import pytest

from inference_allocator.config import Settings
from inference_allocator.consumers.reader import ClusterReader
from inference_allocator.producers.request_producer import RequestProducer
from inference_allocator.schemas import Priority, ResponseRecord
from inference_allocator.topics import Topics

from .helpers import CLI, deployment_env, read_responses, read_topic, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.broker]


async def answered(settings: Settings, ids: set[str]) -> list[ResponseRecord]:
    """Every response on the topic once each of ``ids`` has one (a request redelivered
    after a leader change may be answered twice: at least once, never lost)."""
    found: list[ResponseRecord] = []

    async def all_answered() -> bool:
        records = await read_topic(settings, Topics.from_settings(settings).responses)
        found[:] = [ResponseRecord.model_validate_json(r.value) for r in records]
        return {r.request_id for r in found} >= ids

    await wait_for(all_answered, "every request's answer", timeout=120, interval=0.5)
    return found


class Workers:
    """Worker processes of one group, killed at the end whatever happened."""

    def __init__(self, settings: Settings, log_dir: Path | None = None):
        self.settings = settings
        self.log_dir = log_dir  # each worker's stderr in <worker_id>.log there, else dropped
        self.processes: dict[str, asyncio.subprocess.Process] = {}

    async def start(self, worker_id: str, **extra: str) -> None:
        env = {
            **os.environ,
            **deployment_env(self.settings, INFERENCE_WORKER_ID=worker_id, **extra),
        }
        if self.log_dir is None:
            self.processes[worker_id] = await asyncio.create_subprocess_exec(
                *CLI, "worker", env=env, stderr=asyncio.subprocess.DEVNULL
            )
            return
        with (self.log_dir / f"{worker_id}.log").open("wb") as log:
            self.processes[worker_id] = await asyncio.create_subprocess_exec(
                *CLI, "worker", env=env, stderr=log
            )

    def logs(self) -> str:
        if self.log_dir is None:
            return ""
        return "\n".join(
            f"== {path.name}\n{path.read_text()[-4000:]}" for path in self.log_dir.glob("*.log")
        )

    async def close(self) -> None:
        for process in self.processes.values():
            if process.returncode is None:
                with_signal(process, signal.SIGCONT)
                process.kill()
                await process.wait()


def with_signal(process: asyncio.subprocess.Process, signum: int) -> None:
    if process.returncode is None:
        os.kill(process.pid, signum)


async def slot_owners(reader: ClusterReader) -> set[str]:
    return {w.worker_id for w in reader.status().workers}


def ids_on_partition_0(prefix: str, count: int, partitions: int) -> list[str]:
    """Request ids that the allocator's partitioner (CRC32 of the key) puts on partition 0."""
    found = (f"{prefix}-{i}" for i in range(10_000))
    return [i for i in found if zlib.crc32(i.encode()) % partitions == 0][:count]


async def run_backlog(settings: Settings, lows: int, highs: int) -> dict[str, ResponseRecord]:
    """Lows spread over the partitions, then highs all on partition 0 of the high topic: in
    shared mode one worker owns that partition, the other has no high to run."""
    async with RequestProducer(settings) as producer:
        await producer.send_many(
            [producer.build("m", "low", Priority.LOW, request_id=f"low-{i}") for i in range(lows)]
        )
        await asyncio.sleep(0.3)
        high_ids = ids_on_partition_0("high", highs, settings.request_partitions)
        await producer.send_many(
            [producer.build("m", "high", Priority.HIGH, request_id=i) for i in high_ids]
        )
    return {r.request_id: r for r in await read_responses(settings, lows + highs, timeout=90)}


def inversions(responses: dict[str, ResponseRecord]) -> int:
    """Lows started while a high that had been submitted earlier still waited anywhere (after
    a grace of one fetch: a high produced a moment ago is not yet runnable)."""
    highs = [r for r in responses.values() if r.request_id.startswith("high")]
    lows = [r for r in responses.values() if r.request_id.startswith("low")]
    first_high_submitted = min(r.started_at_ms - r.queue_time_ms for r in highs)  # type: ignore[operator]
    last_high_started = max(r.started_at_ms for r in highs)  # type: ignore[type-var]
    return sum(
        1
        for low in lows
        if first_high_submitted + 50 < low.started_at_ms < last_high_started  # type: ignore[operator]
    )


@pytest.mark.parametrize("mode", ["shared", "leader"])
async def test_priority_across_two_workers(make_settings, mode):
    """shared: each worker dispatches its own partitions, so one runs lows while the other's
    highs wait (the inversion exists, documented); leader: zero lows start while a high waits."""
    settings = make_settings(
        gpu_count=1, mock_latency_ms=40, worker_mode=mode, request_partitions=2,
        session_timeout_ms=3000, heartbeat_interval_ms=500,
    )  # fmt: skip
    workers = Workers(settings)
    try:
        async with ClusterReader(settings) as reader:
            await workers.start("w-a")
            await workers.start("w-b")
            # shared: both announce their slots; leader: only the one the group chose
            owners = 2 if mode == "shared" else 1
            await asyncio.sleep(4)  # the group's rebalance for the second member is over
            await wait_for(
                lambda: _owner_count(reader, owners), f"{mode} workers to settle", timeout=60
            )
            leader = next(iter(await slot_owners(reader)))
        responses = await run_backlog(settings, lows=40, highs=12)
    finally:
        await workers.close()
    assert all(r.status == "ok" for r in responses.values())
    found = inversions(responses)
    print(f"\n{mode}: {found} lows started while an earlier high waited")
    if mode == "leader":
        assert found == 0
        assert {r.worker_id for r in responses.values()} == {leader}
    else:
        assert found > 0  # the cross-worker inversion that shared mode documents


async def leader_with_standby_running(
    workers: Workers, reader: ClusterReader, ids: list[str], priority: Priority
) -> None:
    """w-a leads, w-b stands by (announcing no slots), and the leader runs the backlog."""
    settings = workers.settings
    await workers.start("w-a")
    await wait_for(lambda: _owners_are(reader, {"w-a"}), "w-a to lead", timeout=60)
    await workers.start("w-b")
    await asyncio.sleep(2)  # w-b has joined the group as a standby
    assert await slot_owners(reader) == {"w-a"}
    async with RequestProducer(settings) as producer:
        await producer.send_many([producer.build("m", i, priority, request_id=i) for i in ids])
    await wait_for(
        lambda: reader.status().gpus_busy == settings.gpu_count, "the leader to run requests"
    )


async def test_a_killed_leader_loses_nothing_and_a_standby_takes_over(make_settings):
    settings = make_settings(
        gpu_count=2, mock_latency_ms=100, session_timeout_ms=3000, heartbeat_interval_ms=500
    )
    workers = Workers(settings)
    try:
        async with ClusterReader(settings) as reader:
            ids = [f"r-{i}" for i in range(30)]
            await leader_with_standby_running(workers, reader, ids, Priority.MEDIUM)
            workers.processes["w-a"].kill()
            killed_at = time.time() * 1000
        responses = await answered(settings, {f"r-{i}" for i in range(30)})
    finally:
        await workers.close()
    by_id = {r.request_id: r for r in responses}
    assert set(by_id) >= {f"r-{i}" for i in range(30)}  # none lost
    taken_over = min(r.started_at_ms for r in responses if r.worker_id == "w-b" and r.started_at_ms)
    print(f"\ntakeover: w-b started its first request {taken_over - killed_at:.0f} ms after "
          "the leader was killed (session timeout 3000 ms)")  # fmt: skip


async def _owns(reader: ClusterReader, worker_id: str) -> bool:
    return worker_id in await slot_owners(reader)


async def _owner_count(reader: ClusterReader, count: int) -> bool:
    return len(await slot_owners(reader)) == count


async def _owners_are(reader: ClusterReader, owners: set[str]) -> bool:
    return await slot_owners(reader) == owners


async def test_a_paused_leader_stops_dispatching_before_it_does_harm(make_settings):
    """SIGSTOP the leader past its session timeout, SIGCONT it after a standby took over:
    it starts no request after it resumes."""
    settings = make_settings(
        gpu_count=1, mock_latency_ms=150, session_timeout_ms=2000, heartbeat_interval_ms=300
    )
    workers = Workers(settings)
    try:
        async with ClusterReader(settings) as reader:
            ids = [f"s-{i}" for i in range(40)]
            await leader_with_standby_running(workers, reader, ids, Priority.LOW)
            with_signal(workers.processes["w-a"], signal.SIGSTOP)
            # w-b announces its slots when it leads (w-a's stay until their expiry)
            await wait_for(lambda: _owns(reader, "w-b"), "w-b to take over", timeout=60)
            resumed_at = time.time() * 1000
            with_signal(workers.processes["w-a"], signal.SIGCONT)
        responses = await answered(settings, {f"s-{i}" for i in range(40)})
    finally:
        await workers.close()
    assert {r.request_id for r in responses} >= {f"s-{i}" for i in range(40)}
    late = [
        r.request_id
        for r in responses
        if r.worker_id == "w-a" and r.started_at_ms and r.started_at_ms > resumed_at
    ]
    assert late == [], f"the resumed old leader started {late}"
