"""Priority on servers that batch: preemption, and capacity found from the server.

* **Preemption** (the real model server, 2 parallel slots): both slots generate long lows,
  then a high arrives; its time to first token with preemption, as a ratio to the same
  request on the idle server (target: at most 1.5x plus the preemption delay), and without
  preemption for contrast. Every low must still complete; the preemptions are counted.
* **Capacity** (the batching mock, and the real model server): a flood of lows and a
  trickle of streamed highs, with ``slots`` set too high (4x the server's capacity), set
  right, and ``auto``: the flood's throughput and the highs' time to first token. Targets
  for ``auto``: throughput at least 0.95x the right setting's, the highs' p99 at most 1.2x.
  Preemption is off here, so that what is measured is the capacity alone.

Each stack runs alone (one after the other), on the same broker, with the same load.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from ..ports import free_port
from .httpclient import HttpConnection
from .stack import BenchBroker, Scenario
from .stats import summary_ms

#: the preemption delay the step sets (INFERENCE_PREEMPT_AFTER_MS)
PREEMPT_AFTER_MS = 500
LOW_TOKENS = 512
HIGH_TOKENS = 16


async def _wait_ready(port: int, give_up_after: float = 60.0) -> None:
    """Until the bridge answers its readiness probe (a worker announces live slots)."""
    deadline = time.monotonic() + give_up_after
    while True:
        conn = HttpConnection("127.0.0.1", port)
        try:
            status, _ = await conn.get_json("/readyz")
            if status == 200:
                return
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            await conn.close()
        if time.monotonic() > deadline:
            raise RuntimeError(f"the bridge on port {port} did not become ready")
        await asyncio.sleep(0.3)


async def _busy(port: int) -> int:
    conn = HttpConnection("127.0.0.1", port)
    try:
        _, status = await conn.get_json("/api/v1/status")
    finally:
        await conn.close()
    return int(status["gpus_busy"])


async def first_token_s(
    port: int, model: str, prompt: str, max_tokens: int, priority: str
) -> float:
    """Seconds from sending a streamed chat completion through the bridge's OpenAI API to
    its first text."""
    import openai

    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=600
    )
    try:
        started = time.perf_counter()
        stream = await client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
            stream=True,
            extra_headers={"X-Priority": priority},
        )
        first = None
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
        if first is None:
            raise RuntimeError("a stream without text")
        return first
    finally:
        await client.close()


async def _infer(port: int, body: dict[str, Any]) -> dict[str, Any]:
    conn = HttpConnection("127.0.0.1", port)
    try:
        status, reply = await conn.post_json("/api/v1/inference", body)
    finally:
        await conn.close()
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {reply}")
    return reply


def _fleet_file(directory: str, pool: str) -> str:
    path = Path(directory) / "fleet.toml"
    path.write_text(pool)
    return str(path)


# --- preemption, on the real model server -----------------------------------------------


async def preemption(broker: BenchBroker, base_url: str, model: str) -> dict[str, Any]:
    """The high's time to first token behind two long lows, with and without preemption,
    against the same request on the idle server; through the allocator each time."""
    pool = (
        f'[[pools]]\nname = "llamacpp"\nbackend = "openai"\nbase_url = "{base_url}"\n'
        f'models = ["{model}"]\nslots = 2\n'
        # streamed from the server: llama-server notices a closed connection at its next
        # token (once a second for a request that is not streamed)
        "stream_upstream = true\n"
    )
    low = {"max_tokens": LOW_TOKENS, "temperature": 0, "ignore_eos": True}
    results: dict[str, Any] = {"preempt_after_ms": PREEMPT_AFTER_MS, "low_tokens": LOW_TOKENS}
    with tempfile.TemporaryDirectory() as tmp:
        for name, after in (("with", PREEMPT_AFTER_MS), ("without", "off")):
            scenario = Scenario(
                broker, gpu_count=2, latency_ms=0, fleet_file=_fleet_file(tmp, pool),
                extra={"preempt_after_ms": after},
            )  # fmt: skip
            port = free_port()
            with scenario.processes(bridge_port=port):
                await _wait_ready(port)
                high = ("Name a colour.", HIGH_TOKENS)
                if name == "with":  # the idle server, warm, the same request
                    idle = [await first_token_s(port, model, *high, "high") for _ in range(4)]
                    results["idle_first_token_ms"] = summary_ms(idle[1:])
                lows = [
                    asyncio.create_task(_infer(port, {
                        "model_id": model, "prompt": f"Write a long story about the sea, {i}.",
                        "priority": "low", "params": low, "timeout_seconds": 300,
                    }))
                    for i in range(2)
                ]  # fmt: skip
                while await _busy(port) < 2:  # noqa: ASYNC110 (another process's state)
                    await asyncio.sleep(0.05)
                first = await first_token_s(port, model, *high, "high")
                answers = await asyncio.gather(*lows)
                results[name] = {
                    "first_token_ms": round(first * 1000, 1),
                    "lows_completed": sum(bool(a.get("output")) for a in answers),
                    "preemptions": sum(a.get("preemptions") or 0 for a in answers),
                }
    idle_ms = results["idle_first_token_ms"]["p50"]
    for name in ("with", "without"):
        results[name]["ratio_to_idle"] = round(results[name]["first_token_ms"] / idle_ms, 2)
    # the target: 1.5x the idle time to first token, plus the preemption delay
    bound = 1.5 * idle_ms + PREEMPT_AFTER_MS
    results["target_ms"] = round(bound, 1)
    results["met"] = results["with"]["first_token_ms"] <= bound
    return results


# --- capacity ---------------------------------------------------------------------------


async def capacity(
    broker: BenchBroker,
    *,
    pool: str,
    model: str,
    right: int,
    lows: int,
    low_tokens: int,
    clients: int,
    highs: int,
    high_every_s: float,
) -> dict[str, Any]:
    """A flood of ``lows`` (``clients`` at a time) and ``highs`` streamed highs, one every
    ``high_every_s``, with ``slots`` at 4x ``right``, at ``right``, and ``auto``. ``pool``
    is the pool's TOML without its ``slots``."""
    found: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, slots in (("too_high", str(4 * right)), ("right", str(right)),
                            ("auto", f'"auto"\nmax_slots = {4 * right}')):  # fmt: skip
            scenario = Scenario(
                broker, gpu_count=right, latency_ms=0,
                fleet_file=_fleet_file(tmp, f"{pool}slots = {slots}\n"),
                extra={"preempt_after_ms": "off"},
            )  # fmt: skip
            port = free_port()
            with scenario.processes(bridge_port=port):
                await _wait_ready(port)
                found[name] = await _flood(
                    port, model, lows, low_tokens, clients, highs, high_every_s
                )
    right_run = found["right"]
    auto = found["auto"]
    auto["throughput_ratio_to_right"] = round(
        auto["throughput_rps"] / right_run["throughput_rps"], 3
    )
    auto["high_p99_ratio_to_right"] = round(
        auto["high_first_token_ms"]["p99"] / right_run["high_first_token_ms"]["p99"], 3
    )
    auto["met"] = (
        auto["throughput_ratio_to_right"] >= 0.95 and auto["high_p99_ratio_to_right"] <= 1.2
    )
    return {"right_slots": right, **found}


async def _flood(
    port: int,
    model: str,
    lows: int,
    low_tokens: int,
    clients: int,
    highs: int,
    high_every_s: float,
) -> dict[str, Any]:
    queue = list(range(lows))
    body = {"model_id": model, "priority": "low", "timeout_seconds": 300,
            "params": {"max_tokens": low_tokens, "temperature": 0, "ignore_eos": True}}  # fmt: skip

    async def client() -> None:
        conn = HttpConnection("127.0.0.1", port)
        try:
            while queue:
                i = queue.pop()
                status, reply = await conn.post_json(
                    "/api/v1/inference", {**body, "prompt": f"Tell a story, part {i}."}
                )
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {reply}")
        finally:
            await conn.close()

    async def trickle() -> list[float]:
        times = []
        for i in range(highs):
            await asyncio.sleep(high_every_s)
            times.append(
                await first_token_s(port, model, f"Name a colour, {i}.", HIGH_TOKENS, "high")
            )
        return times

    started = time.perf_counter()
    flood = asyncio.gather(*(client() for _ in range(clients)))
    high_times = await trickle()
    await flood
    seconds = time.perf_counter() - started
    return {
        "throughput_rps": round(lows / seconds, 3),
        "high_first_token_ms": summary_ms(high_times),
    }
