"""Fair shares between tenants at one level: two tenants on 2 slots, tenant A offering ten
times tenant B's requests, both backlogged (their records all sent at once, ten of A's then
one of B's, over and over, so a first-come-first-served level serves B about 1/11 of the
time). The producer puts each tenant's requests on the partition of its name, and the
worker fetches each partition only as far as its share of the buffer, so B's requests are
fetched even while A's flood waits.

Each run counts the tokens of the first ``measured`` answers (by completion time) of the
requests started once every record is on the broker (sending them takes a while, and until
B's are all there B is not backlogged), while B still has requests waiting, and reports
each tenant's share of them and the answers per second: fair shares off (FIFO), on, on
with weights 2:1 (A:B, from the API keys' weights), and on with the leader killed mid-run
(a standby takes over and goes on from the counters it read from the responses topic). On
the mock (a fixed latency, the same tokens for every request) and on llama-server
(SmolLM2, the same question for every request).
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from ..processes import spawn_cli, stop_gracefully
from ..producers.client import InferenceClient
from ..schemas import Priority, ResponseRecord, now_ms
from .stack import BenchBroker, Scenario

RATIO = 10
#: the request topics' partitions: tenants A and B go to two different ones
PARTITIONS = 4
STANDBY = "bench-standby"
KEYS = "bench-key-a-0123456789:A:low:weight=2,bench-key-b-0123456789:B:low:weight=1"
PROMPT = "Name one colour of the rainbow and say why people like it."


async def fairness_mock(broker: BenchBroker, *, quick: bool) -> dict[str, Any]:
    """On a mock pool of 2 slots (20 ms a request)."""
    fleet = (
        '[[pools]]\nname = "sim"\nbackend = "mock"\nmodels = ["m"]\nslots = 2\nlatency_ms = 20\n'
    )
    return await _runs(broker, fleet, "m", None, b_requests=40 if quick else 300, kill=True)


async def fairness_real(broker: BenchBroker, base_url: str, model: str) -> dict[str, Any]:
    """On llama-server's 2 slots (16 tokens an answer): off and on."""
    fleet = (
        f'[[pools]]\nname = "llamacpp"\nbackend = "openai"\nbase_url = "{base_url}"\n'
        f'models = ["{model}"]\nslots = 2\n'
    )
    params = {"max_tokens": 16, "temperature": 0}
    return await _runs(broker, fleet, model, params, b_requests=60, kill=False)


async def _runs(
    broker: BenchBroker,
    fleet: str,
    model: str,
    params: dict[str, Any] | None,
    *,
    b_requests: int,
    kill: bool,
) -> dict[str, Any]:
    shape = (broker, fleet, model, params, b_requests)
    results: dict[str, Any] = {"ratio": RATIO, "slots": 2, "b_requests": b_requests}
    results["off"] = await _run(*shape, fair=False)
    results["on"] = await _run(*shape, fair=True)
    results["throughput_ratio"] = round(
        results["on"]["answers_per_s"] / results["off"]["answers_per_s"], 3
    )
    if kill:
        results["weighted"] = await _run(*shape, fair=True, weighted=True)
        results["leader_killed"] = await _run(*shape, fair=True, kill=True)
    return results


async def _run(
    broker: BenchBroker,
    fleet: str,
    model: str,
    params: dict[str, Any] | None,
    b_requests: int,
    *,
    fair: bool,
    weighted: bool = False,
    kill: bool = False,
) -> dict[str, Any]:
    """One run on a fresh topic prefix; the shares of the first answers."""
    measured = b_requests // 2  # B is backlogged throughout: it gets at most ~2/3 of them
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fleet.toml"
        path.write_text(fleet)
        extra: dict[str, object] = {"fair_share": fair, "request_partitions": PARTITIONS}
        if weighted:
            extra["api_keys"] = KEYS
        if kill:
            extra.update(session_timeout_ms=3000, heartbeat_interval_ms=500)
        scenario = Scenario(broker, gpu_count=2, latency_ms=0, fleet_file=str(path), extra=extra)
        with scenario.processes() as pids:
            standby = []
            try:
                async with InferenceClient(scenario.settings()) as client:
                    await _warm(client, model, params)  # the first worker leads
                    if kill:
                        env = {**os.environ, **scenario.env(), "INFERENCE_WORKER_ID": STANDBY}
                        standby.append(spawn_cli("--log-level", "warning", "worker", env=env))
                        await asyncio.sleep(3)  # it has joined the group, as a standby
                    answers, sent_at_ms = await _offer(
                        client, model, params, b_requests, measured,
                        pids["worker"] if kill else None,
                    )  # fmt: skip
            finally:
                for process in standby:
                    stop_gracefully(process)
    shares = _shares([a for a in answers if (a.started_at_ms or 0) >= sent_at_ms], measured)
    if kill:
        shares["answered_by_standby"] = sum(a.worker_id == STANDBY for a in answers)
    return shares


async def _offer(
    client: InferenceClient,
    model: str,
    params: dict[str, Any] | None,
    b_requests: int,
    measured: int,
    leader_pid: int | None,
) -> tuple[list[ResponseRecord], int]:
    """The backlog, sent at once; the answers as they come (the leader killed once a third
    of the measured ones are in)."""
    build = client.producer.build
    records = []
    for i in range(b_requests):
        for j in range(RATIO):
            records.append(build(model, PROMPT, Priority.LOW, params=params, tenant="A",
                                 request_id=f"a{i}-{j}", timeout_seconds=600))  # fmt: skip
        records.append(build(model, PROMPT, Priority.LOW, params=params, tenant="B",
                             request_id=f"b{i}", timeout_seconds=600))  # fmt: skip
    futures = {r.request_id: client.reader.correlator.register(r.request_id) for r in records}
    await client.producer.send_many(records)
    sent_at_ms = now_ms()
    answers: list[ResponseRecord] = []
    killed = False
    pending = set(futures.values())

    def since_sent() -> int:
        return sum((a.started_at_ms or 0) >= sent_at_ms for a in answers)

    # Answers come in by response partition, not in the order they were given: half as
    # many again are read, so that the first ``measured`` by completion are all among them.
    while since_sent() < measured * 3 // 2:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        answers.extend(f.result() for f in done)
        if leader_pid is not None and not killed and since_sent() >= measured // 3:
            os.kill(leader_pid, signal.SIGKILL)
            killed = True
    for request_id in futures:
        client.reader.correlator.discard(request_id)
    return answers, sent_at_ms


async def _warm(client: InferenceClient, model: str, params: dict[str, Any] | None) -> None:
    """Until the worker answers (it has joined its group and announced its slots)."""
    deadline = time.monotonic() + 120
    while True:
        request = client.producer.build(model, PROMPT, Priority.HIGH, params=params,
                                        timeout_seconds=10)  # fmt: skip
        future = client.reader.correlator.register(request.request_id or "")
        try:
            await client.producer.send(request)
            await asyncio.wait_for(future, 10)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise
        finally:
            client.reader.correlator.discard(request.request_id or "")


def _tokens(answer: ResponseRecord) -> int:
    usage = answer.usage or {}
    return usage.get("total_tokens") or usage.get("prompt_tokens", 0) + usage.get(
        "completion_tokens", 0
    )


def _shares(answers: list[ResponseRecord], measured: int) -> dict[str, Any]:
    ok = [a for a in answers if a.status == "ok" and a.completed_at_ms and a.started_at_ms]
    ok.sort(key=lambda a: a.completed_at_ms or 0)
    first = ok[:measured]
    tokens = {"A": 0, "B": 0}
    for answer in first:
        tokens[answer.tenant or "A"] += _tokens(answer)
    total = sum(tokens.values()) or 1
    seconds = ((first[-1].completed_at_ms or 0) - min(a.started_at_ms or 0 for a in first)) / 1000
    return {
        "answers": len(first),
        "share_a": round(tokens["A"] / total, 3),
        "share_b": round(tokens["B"] / total, 3),
        "answers_per_s": round(len(first) / max(seconds, 1e-3), 2),
    }
