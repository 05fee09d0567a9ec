"""Prefix routing on two real llama-servers (SmolLM2, 2 parallel slots each): two pools
serving one model, questions about long documents asked in random order by 2 clients
through the allocator's OpenAI API, streamed; prefix routing off (the slot free the longest
takes each question), then on, each on freshly started servers (cold caches).

Each server runs with ``--cache-ram 0``: it then holds exactly the prompts in its two
slots (llama.cpp's default also keeps up to 8 GiB of prompts in host memory, which would
hold every document on either server and leave nothing to route for). So the fleet's
caches hold four documents and one server's two: the step asks about four.

The servers' own counts stand beside the times: the prompt tokens each answer's ``usage``
says were found in the cache, and the prompt tokens the servers actually processed (their
``/metrics`` ``llamacpp:prompt_tokens_total``).
"""

from __future__ import annotations

import asyncio
import io
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from ..cache import default_cache_dir
from ..modelserver import MODEL_NAME, LlamaServer
from ..modelserver.build import missing_toolchain
from ..ports import free_port
from .stack import BenchBroker, Scenario
from .stats import Progress, summary_ms

DOCUMENTS = 4
CLIENTS = 2
MAX_TOKENS = 8
#: a document's sentences: about 1,500 tokens (SmolLM2's tokenizer), 600 when quick
SENTENCES, QUICK_SENTENCES = 58, 24
QUESTIONS, QUICK_QUESTIONS = 48, 12
#: what each server's cache holds, in tokens: its context (both slots' prompts)
SERVER_CACHE_TOKENS = 4096
THREADS = 1  # per server: two servers share the machine's two cores
_QUIET = io.StringIO()
#: its progress steps
STEPS = 2


def document(n: int, sentences: int) -> str:
    return " ".join(
        f"Record {i} of ledger {n}: the ferry of pier {n}-{i} carried {i * 7 + n} crates."
        for i in range(sentences)
    )


def questions(count: int, seed: int = 23) -> list[tuple[int, str]]:
    """``count`` questions spread evenly over the documents, in a random (fixed) order."""
    asked = [(i % DOCUMENTS, f"How many crates did the ferry of record {i} carry?")
             for i in range(count)]  # fmt: skip
    random.Random(seed).shuffle(asked)
    return asked


def fleet(servers: list[LlamaServer], routing: bool) -> str:
    return "".join(
        f'[[pools]]\nname = "replica-{i}"\nbackend = "openai"\nbase_url = "{s.base_url}"\n'
        f'models = ["{MODEL_NAME}"]\nslots = 2\nprefix_routing = {str(routing).lower()}\n'
        f"prefix_cache_tokens = {SERVER_CACHE_TOKENS}\n\n"
        for i, s in enumerate(servers)
    )


async def prefix_routing(broker: BenchBroker, progress: Progress, *, quick: bool) -> dict[str, Any]:
    """Off, then on; ``{"skipped": reason}`` without a C++ toolchain."""
    problem = missing_toolchain()
    if problem:
        for _ in range(STEPS):
            progress.step("prefix routing: skipped")
        return {"skipped": problem}
    sentences = QUICK_SENTENCES if quick else SENTENCES
    asked = questions(QUICK_QUESTIONS if quick else QUESTIONS)
    results: dict[str, Any] = {
        "servers": 2, "slots_per_server": 2, "documents": DOCUMENTS, "questions": len(asked),
        "clients": CLIENTS, "max_tokens": MAX_TOKENS, "cache_ram_mib": 0,
    }  # fmt: skip
    for routing in (False, True):
        label = "on" if routing else "off"
        progress.step(f"prefix routing {label}: {len(asked)} questions on two llama-servers")
        results[label] = await _run(broker, routing, sentences, asked)
    off, on = results["off"], results["on"]
    results["ttft_p50_ratio"] = round(
        on["time_to_first_token_ms"]["p50"] / off["time_to_first_token_ms"]["p50"], 3
    )
    results["throughput_ratio"] = round(on["throughput_qps"] / off["throughput_qps"], 3)
    return results


async def _run(
    broker: BenchBroker, routing: bool, sentences: int, asked: list[tuple[int, str]]
) -> dict[str, Any]:
    servers = [
        LlamaServer(free_port(), default_cache_dir(), out=_QUIET, threads=THREADS, cache_ram_mib=0)
        for _ in range(2)
    ]
    try:
        for server in servers:
            await asyncio.to_thread(server.start)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "fleet.toml"
            path.write_text(fleet(servers, routing))
            scenario = Scenario(broker, gpu_count=4, latency_ms=0, fleet_file=str(path))
            port = free_port()
            with scenario.processes(bridge_port=port):
                return await _ask(f"http://127.0.0.1:{port}/v1", servers, sentences, asked)
    finally:
        for server in servers:
            await asyncio.to_thread(server.stop)


async def _ask(
    base_url: str, servers: list[LlamaServer], sentences: int, asked: list[tuple[int, str]]
) -> dict[str, Any]:
    import openai

    client = openai.AsyncOpenAI(base_url=base_url, api_key="none", max_retries=0, timeout=600)
    documents = [document(n, sentences) for n in range(DOCUMENTS)]
    first_token: list[float] = []
    prompt_tokens = cached_tokens = 0

    async def one(doc: int, question: str) -> None:
        nonlocal prompt_tokens, cached_tokens
        started = time.perf_counter()
        stream = await client.chat.completions.create(
            model=MODEL_NAME,
            messages=[
                {"role": "system", "content": documents[doc]},
                {"role": "user", "content": question},
            ],
            max_tokens=MAX_TOKENS,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        first = None
        async for chunk in stream:
            if first is None and chunk.choices and chunk.choices[0].delta.content:
                first = time.perf_counter() - started
            if chunk.usage is not None:
                prompt_tokens += chunk.usage.prompt_tokens
                details = chunk.usage.prompt_tokens_details
                cached_tokens += (details.cached_tokens or 0) if details else 0
        first_token.append(first if first is not None else time.perf_counter() - started)

    try:
        await _wait_until_served(client)
        before = await _prefilled(servers)
        queue = list(asked)
        started = time.perf_counter()

        async def asker() -> None:
            while queue:
                await one(*queue.pop(0))

        await asyncio.gather(*(asker() for _ in range(CLIENTS)))
        seconds = time.perf_counter() - started
        prefilled = await _prefilled(servers) - before
    finally:
        await client.close()
    return {
        "time_to_first_token_ms": summary_ms(first_token),
        "throughput_qps": round(len(asked) / seconds, 4),
        "seconds": round(seconds, 1),
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached_tokens,
        "cache_hit_rate": round(cached_tokens / prompt_tokens, 3) if prompt_tokens else None,
        "prefilled_tokens": prefilled,
    }


async def _wait_until_served(client: Any, give_up_after: float = 60.0) -> None:
    """Until the bridge lists the model (the worker announced its slots)."""
    deadline = time.monotonic() + give_up_after
    while True:
        try:
            listed = await client.models.list()
            if any(model.id == MODEL_NAME for model in listed.data):
                return
        except Exception:  # noqa: BLE001 - not up yet: any failure means try again
            if time.monotonic() > deadline:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError("the bridge did not list the model within a minute")
        await asyncio.sleep(0.3)


async def _prefilled(servers: list[LlamaServer]) -> int:
    """The prompt tokens the servers processed so far (not those found in their cache)."""
    total = 0
    async with httpx.AsyncClient(timeout=5.0) as http:
        for server in servers:
            text = (await http.get(f"http://{server.host}:{server.port}/metrics")).text
            for line in text.splitlines():
                if line.startswith("llamacpp:prompt_tokens_total "):
                    total += int(float(line.split()[1]))
    return total
