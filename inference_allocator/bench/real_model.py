"""The real model: llama.cpp's ``llama-server`` with SmolLM2 called directly, against the same
server behind the allocator (a fleet of one pool of its 2 parallel slots), with the same
HTTP client and the same prompts, one after the other on a quiet machine.

Generation is deterministic (temperature 0, the same prompts and ``max_tokens``), so both
paths ask the server for the same work; what differs is the allocator's own cost.
"""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from ..cache import default_cache_dir
from ..modelserver import MODEL_NAME, LlamaServer
from ..modelserver.build import missing_toolchain
from ..ports import free_port
from . import priority_hold
from .fairness import fairness_real
from .httpclient import HttpConnection
from .scenarios import STARTING, until_answered
from .stack import BenchBroker, Scenario
from .stats import Progress, summary_ms

PARAMS: dict[str, Any] = {"max_tokens": 24, "temperature": 0}
ONE_CLIENT = 30
STREAMS = 20
STREAM_TOKENS = 32
THROUGHPUT_REQUESTS = 40
CONCURRENCY = 4  # twice the server's parallel slots: both stay busy
# One inference thread: the broker, worker and bridge share this 2-core machine with the
# server, and llama.cpp's threads wait for each other at every token, so a second thread
# would measure the machine's contention rather than the allocator's cost.
THREADS = int(os.environ.get("INFERENCE_BENCH_MODEL_THREADS", "1"))
_QUIET = io.StringIO()
#: what the bridge may answer with while it starts (it closes a connection it got early)
_STARTING = (*STARTING, asyncio.IncompleteReadError)

Send = Callable[[int], Awaitable[float]]


def _prompt(i: int) -> str:
    return f"Write one short sentence about the number {i % 50}."


def _sender(port: int, path: str, body: Callable[[int], dict[str, Any]]) -> tuple[Send, list]:
    connections = [HttpConnection("127.0.0.1", port) for _ in range(CONCURRENCY)]
    idle: asyncio.Queue[HttpConnection] = asyncio.Queue()
    for conn in connections:
        idle.put_nowait(conn)

    async def send(i: int) -> float:
        conn = await idle.get()
        try:
            started = time.perf_counter()
            status, reply = await conn.post_json(path, body(i))
            elapsed = time.perf_counter() - started
        except BaseException:
            await conn.close()  # an unanswered request: the next one reconnects
            raise
        finally:
            idle.put_nowait(conn)
        if status != 200:
            raise RuntimeError(f"request {i}: HTTP {status} {reply}")
        return elapsed

    return send, connections


async def _measure(send: Send) -> dict[str, Any]:
    for i in range(3):  # warm: the server's prompt cache, the allocator's connections
        await send(1000 + i)
    lone = [await send(i) for i in range(ONE_CLIENT)]
    queue = list(range(THROUGHPUT_REQUESTS))
    started = time.perf_counter()

    async def client() -> None:
        while queue:
            await send(queue.pop())

    await asyncio.gather(*(client() for _ in range(CONCURRENCY)))
    seconds = time.perf_counter() - started
    return {
        "one_client_ms": summary_ms(lone),
        "throughput_rps": round(THROUGHPUT_REQUESTS / seconds, 3),
        "concurrency": CONCURRENCY,
    }


#: its progress steps
STEPS = 6


async def real_model(broker: BenchBroker, progress: Progress, *, quick: bool) -> dict[str, Any]:
    """Direct and through the allocator, then preemption and capacity (not ``quick``) on
    the same server; ``{"skipped": reason}`` without a C++ toolchain."""
    problem = missing_toolchain()
    if problem:
        for _ in range(STEPS):
            progress.step("real model: skipped")
        return {"skipped": problem}
    server = LlamaServer(free_port(), default_cache_dir(), out=_QUIET, threads=THREADS)
    await asyncio.to_thread(server.start)
    try:
        progress.step("real model: llama-server directly")
        send, conns = _sender(
            server.port,
            "/v1/chat/completions",
            lambda i: {
                "model": MODEL_NAME,
                "messages": [{"role": "user", "content": _prompt(i)}],
                **PARAMS,
            },
        )
        direct = await _measure(send)
        for conn in conns:
            await conn.close()
        progress.step("real model: streams from llama-server directly")
        direct["streaming"] = await _measure_streams(server.base_url)

        progress.step("real model: through the allocator")
        with tempfile.TemporaryDirectory() as tmp:
            fleet = Path(tmp) / "fleet.toml"
            fleet.write_text(
                f'[[pools]]\nname = "llamacpp"\nbackend = "openai"\n'
                f'base_url = "{server.base_url}"\nmodels = ["{MODEL_NAME}"]\nslots = 2\n'
            )
            scenario = Scenario(broker, gpu_count=2, latency_ms=0, fleet_file=str(fleet))
            port = free_port()
            with scenario.processes(bridge_port=port):
                send, conns = _sender(
                    port,
                    "/api/v1/inference",
                    lambda i: {
                        "model_id": MODEL_NAME,
                        "prompt": _prompt(i),
                        "priority": "high",
                        "params": PARAMS,
                    },
                )
                await until_answered(lambda: send(-1), try_s=10.0, starting=_STARTING)
                allocator = await _measure(send)
                for conn in conns:
                    await conn.close()
                progress.step("real model: streams through the allocator's OpenAI API")
                allocator["streaming"] = await _measure_streams(f"http://127.0.0.1:{port}/v1")
        progress.step("real model: a high behind two long lows, with and without preemption")
        preempting = await priority_hold.preemption(broker, server.base_url, MODEL_NAME)
        progress.step("real model: capacity, slots too high, right and auto; fair shares")
        capacity = fairness = None
        if not quick:
            fairness = await fairness_real(broker, server.base_url, MODEL_NAME)
            capacity = await priority_hold.capacity(
                broker,
                pool=f'[[pools]]\nname = "llamacpp"\nbackend = "openai"\n'
                f'base_url = "{server.base_url}"\nmodels = ["{MODEL_NAME}"]\n',
                model=MODEL_NAME, right=2, lows=16, low_tokens=48, clients=8, highs=5,
                high_every_s=1.5,
            )  # fmt: skip
    finally:
        await asyncio.to_thread(server.stop)
    return {
        "model": MODEL_NAME,
        "params": PARAMS,
        "direct": direct,
        "allocator": allocator,
        "preemption": preempting,
        "capacity": capacity,
        "fairness": fairness,
    }


async def _measure_streams(base_url: str) -> dict[str, Any]:
    """Time to first token and the time between tokens of streamed chat completions, one
    stream at a time, with the official ``openai`` client (the same on both paths)."""
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0)
    first: list[float] = []
    gaps: list[float] = []
    try:
        for i in range(-2, STREAMS):  # two to warm up
            started = time.perf_counter()
            stream = await client.chat.completions.create(
                model=MODEL_NAME,
                messages=[{"role": "user", "content": _prompt(i)}],
                max_tokens=STREAM_TOKENS,
                temperature=0,
                stream=True,
            )
            times = []
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    times.append(time.perf_counter())
            if i < 0 or not times:
                continue
            first.append(times[0] - started)
            gaps.extend(b - a for a, b in zip(times, times[1:], strict=False))
    finally:
        await client.close()
    return {
        "streams": STREAMS,
        "max_tokens": STREAM_TOKENS,
        "time_to_first_token_ms": summary_ms(first),
        "inter_token_ms": summary_ms(gaps),
    }
