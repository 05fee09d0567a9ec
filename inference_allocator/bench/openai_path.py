"""The OpenAI path's own cost: one client's ``/v1/chat/completions`` against a server that
answers at once (``bench/upstream.py``), called directly and through the allocator (a pool
of that server), answered whole and streamed.

What the allocator adds (its p50 minus the direct p50) is compared in the report with the
thin pipeline's one-client p50 on the same broker: the cost of a Kafka round trip with the
same hops and nothing else.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from ..ports import free_port
from ..processes import spawn_module, stop_gracefully
from .httpclient import HttpConnection
from .scenarios import STARTING, until_answered
from .stack import BenchBroker, Scenario
from .stats import Progress, summary_ms
from .upstream import MODEL

STEPS = 2
TOKENS = 8
#: what the server or the bridge may answer with while it starts
_STARTING = (*STARTING, httpx.HTTPError, asyncio.IncompleteReadError)


def _body(i: int, stream: bool = False) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"question {i}"}],
        "max_tokens": TOKENS,
        **({"stream": True} if stream else {}),
    }


async def _whole(port: int, count: int) -> list[float]:
    """One client, one answer at a time, on one kept-alive connection."""
    conn = HttpConnection("127.0.0.1", port)
    took = []
    try:
        for i in range(-20, count):  # twenty to warm up
            started = time.perf_counter()
            status, reply = await conn.post_json("/v1/chat/completions", _body(i))
            if status != 200:
                raise RuntimeError(f"HTTP {status}: {reply}")
            if i >= 0:
                took.append(time.perf_counter() - started)
    finally:
        await conn.close()
    return took


async def _first_tokens(port: int, count: int) -> list[float]:
    """One client, one stream at a time: until the first word's event has come."""
    took = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        for i in range(-10, count):
            started = time.perf_counter()
            first = None
            async with http.stream("POST", "/v1/chat/completions", json=_body(i, True)) as reply:
                if reply.status_code != 200:
                    raise RuntimeError(f"HTTP {reply.status_code}: {await reply.aread()}")
                async for line in reply.aiter_lines():
                    if first is None and line.startswith("data:") and '"w0"' in line:
                        first = time.perf_counter() - started
            if first is None:
                raise RuntimeError("a stream ended without its first word")
            if i >= 0:
                took.append(first)
    return took


async def _measure(port: int, requests: int, streams: int) -> dict[str, Any]:
    return {
        "whole_ms": summary_ms(await _whole(port, requests)),
        "first_token_ms": summary_ms(await _first_tokens(port, streams)),
    }


async def openai_path(broker: BenchBroker, progress: Progress, *, quick: bool) -> dict[str, Any]:
    requests, streams = (100, 40) if quick else (400, 150)
    upstream_port = free_port()
    upstream = spawn_module(
        "inference_allocator.bench.upstream", "--port", str(upstream_port), env=dict(os.environ)
    )
    try:
        base_url = f"http://127.0.0.1:{upstream_port}/v1"
        await until_answered(lambda: _whole(upstream_port, 0), try_s=10.0, starting=_STARTING)
        progress.step("openai path: the server directly")
        direct = await _measure(upstream_port, requests, streams)
        progress.step("openai path: through the allocator")
        with tempfile.TemporaryDirectory() as tmp:
            fleet = Path(tmp) / "fleet.toml"
            fleet.write_text(
                f'[[pools]]\nname = "upstream"\nbackend = "openai"\n'
                f'base_url = "{base_url}"\nmodels = ["{MODEL}"]\nslots = 4\n'
            )
            scenario = Scenario(broker, gpu_count=4, latency_ms=0, fleet_file=str(fleet))
            port = free_port()
            with scenario.processes(bridge_port=port):
                await until_answered(lambda: _whole(port, 0), try_s=10.0, starting=_STARTING)
                allocator = await _measure(port, requests, streams)
    finally:
        stop_gracefully(upstream, timeout=10)
    return {
        "tokens": TOKENS,
        "direct": direct,
        "allocator": allocator,
        "added_p50_ms": round(allocator["whole_ms"]["p50"] - direct["whole_ms"]["p50"], 3),
        "first_token_added_p50_ms": round(
            allocator["first_token_ms"]["p50"] - direct["first_token_ms"]["p50"], 3
        ),
    }
