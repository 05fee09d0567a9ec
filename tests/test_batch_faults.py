"""Batches survive faults: the bridge running a batch SIGKILLed mid-batch (another bridge
of the group carries on), and Apache Kafka stopped and started again mid-batch. Each
counts what the client sees (every line once in the output file) and what ran (every
line answered once on the responses topic)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import openai
import pytest

from inference_allocator.brokers import free_port
from inference_allocator.config import Settings
from inference_allocator.topics import Topics

from .helpers import CLI, deployment_env, read_topic, ready, wait_for
from .test_batch_api import chat_lines, finished, jsonl
from .test_faults import _Stack, own_broker, own_settings  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.broker]

LINES = 40


def bridge_process(settings: Settings, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **deployment_env(settings)}
    with log.open("wb") as err:
        return subprocess.Popen(
            [*CLI, "--log-level", "info", "bridge", "--port", str(port)], env=env, stderr=err
        )


async def some_answered(client: openai.AsyncOpenAI, batch_id: str) -> None:
    async def answered() -> bool:
        batch = await client.batches.retrieve(batch_id)
        return bool(batch.request_counts and batch.request_counts.completed >= 6)

    await wait_for(answered, "some lines to be answered", timeout=60)


async def every_line_once(settings: Settings, client: openai.AsyncOpenAI, batch_id: str) -> str:
    """The batch completed with each line once in its output, and each answered once on
    the responses topic; what it saw, for the report."""
    batch = await finished(client, batch_id, timeout=120)
    assert batch.status == "completed", batch
    assert batch.output_file_id is not None and batch.error_file_id is None
    lines = jsonl((await client.files.content(batch.output_file_id)).content)
    assert [line["custom_id"] for line in lines] == [f"q-{i}" for i in range(LINES)]
    records = await read_topic(settings, Topics.from_settings(settings).responses)
    answers = Counter(r.key for r in records if r.key and r.key.startswith(batch_id.encode()))
    assert len(answers) == LINES and set(answers.values()) == {1}, answers
    return f"{LINES}/{LINES} lines in the output once, each answered once on the topic"


async def test_a_batch_goes_on_when_the_bridge_running_it_is_killed(
    make_settings, start_worker, tmp_path
):
    """Fault: the bridge that runs a batch of 40 lines (2 slots of 300 ms, 4 in flight)
    SIGKILLed once some lines are answered. Promise: the other bridge of the group takes
    the batch over and completes it; no line runs twice."""
    settings = make_settings(
        gpu_count=2, mock_latency_ms=300, batch_max_in_flight=4, request_timeout_seconds=60
    )
    await start_worker(settings)
    ports = [free_port(), free_port()]
    logs = [tmp_path / "bridge-0.log", tmp_path / "bridge-1.log"]
    bridges = [bridge_process(settings, port, log) for port, log in zip(ports, logs, strict=True)]
    clients = [
        openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{p}/v1", api_key="x", max_retries=0)
        for p in ports
    ]
    try:
        for port in ports:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                await wait_for(lambda: ready(http), "a bridge", timeout=60, interval=0.1)  # noqa: B023

        def runner() -> int | None:
            running = [log.read_text().rfind("runs the batches now") for log in logs]
            stopped = [log.read_text().rfind("stops running the batches") for log in logs]
            found = [i for i in (0, 1) if running[i] > stopped[i]]
            return found[0] if len(found) == 1 else None

        await wait_for(lambda: runner() is not None, "one bridge to run the batches", 30)
        victim = runner()
        assert victim is not None
        survivor = clients[1 - victim]
        uploaded = await survivor.files.create(file=("in.jsonl", chat_lines(LINES)),
                                               purpose="batch")  # fmt: skip
        created = await survivor.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="1h"
        )

        await some_answered(survivor, created.id)
        bridges[victim].kill()
        bridges[victim].wait()
        killed_at = time.monotonic()
        report = await every_line_once(settings, survivor, created.id)
        took = time.monotonic() - killed_at
    finally:
        for client in clients:
            await client.close()
        for bridge in bridges:
            if bridge.poll() is None:
                bridge.kill()
                bridge.wait()
    print(f"\nbatch runner SIGKILL: {report}; completed {took:.1f} s after the kill")


@pytest.mark.apache_kafka  # the embedded broker keeps nothing across a restart
async def test_a_batch_goes_on_across_a_broker_restart(own_broker, tmp_path):  # noqa: F811
    """Fault: Apache Kafka SIGKILLed for 3 s mid-batch (a worker and a bridge as CLI
    processes, 2 slots of 200 ms). Promise: the batch completes by itself once the broker
    is back; no line runs twice."""
    settings = own_settings(own_broker, gpu_count=2, mock_latency_ms=200, batch_max_in_flight=4)
    stack = _Stack(settings, tmp_path)
    client = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="x", max_retries=2)
    try:
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
            await wait_for(lambda: ready(http), "the stack", timeout=60, interval=0.2)
        uploaded = await client.files.create(file=("in.jsonl", chat_lines(LINES)),
                                             purpose="batch")  # fmt: skip
        created = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="1h"
        )

        await some_answered(client, created.id)
        own_broker.kill()
        await asyncio.sleep(3)
        own_broker.start()  # the same port and data directory
        back_at = time.monotonic()
        report = await every_line_once(settings, client, created.id)
        took = time.monotonic() - back_at
        assert "Traceback" not in stack.log_text(), stack.log_text()[-3000:]
    finally:
        await client.close()
        stack.close()
    print(f"\nApache Kafka restart mid-batch: {report}; completed {took:.1f} s after it was back")
