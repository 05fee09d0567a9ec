"""Tenants through the real broker: fair shares of tokens within a level (the Virtual Token
Counter), idle tenants banking nothing, the counters surviving a leader kill, and token
budgets per API key enforced alike by every bridge, on both APIs. The order of dispatch is
read from the answers' start times; nothing asserts how long anything took."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import openai
import pytest

from inference_allocator.brokers import free_port
from inference_allocator.consumers.reader import ClusterReader
from inference_allocator.producers.request_producer import RequestProducer
from inference_allocator.schemas import Priority, ResponseRecord

from .helpers import read_responses, read_topic, stats_agent, wait_for
from .test_leadership import Workers, _owners_are, answered

pytestmark = pytest.mark.broker

QUESTION = "What is the capital of the region?"  # the same tokens for every request


async def _send(settings, requests: list[tuple[str, str]]) -> None:
    """(request id, tenant) pairs, in this order, to the medium topic."""
    async with RequestProducer(settings) as producer:
        await producer.send_many(
            [
                producer.build("m", QUESTION, Priority.MEDIUM, request_id=rid, tenant=tenant)
                for rid, tenant in requests
            ]  # fmt: skip
        )


def _order(responses: list[ResponseRecord]) -> list[str]:
    return [r.request_id for r in sorted(responses, key=lambda r: (r.started_at_ms, r.request_id))]


@pytest.mark.parametrize("fair", [True, False], ids=["fair-shares", "fifo"])
async def test_a_flooding_tenant_takes_turns_with_a_small_one(make_settings, start_worker, fair):
    """One slot; the flood's six requests were sent before the small tenant's three. With
    fair shares they alternate (each FIFO); without, the level is FIFO."""
    settings = make_settings(gpu_count=1, request_partitions=1, fair_share=fair)
    await _send(settings, [(f"a{i}", "flood") for i in range(6)] +
                [(f"b{i}", "small") for i in range(3)])  # fmt: skip
    await start_worker(settings)
    order = _order(await read_responses(settings, 9))
    if fair:
        assert order == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "a4", "a5"]
    else:
        assert order == [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(3)]


async def test_a_tenant_back_from_idle_banks_no_credit(make_settings, start_worker):
    """The flood ran alone; then the small tenant comes back with four requests, sent
    before the flood's next four: it does not get all four of its turns first."""
    settings = make_settings(gpu_count=1, request_partitions=1)
    await start_worker(settings)
    await _send(settings, [(f"a{i}", "flood") for i in range(8)])
    await read_responses(settings, 8)
    await _send(settings, [(f"b{i}", "small") for i in range(4)] +
                [(f"a{8 + i}", "flood") for i in range(4)])  # fmt: skip
    order = [rid for rid in _order(await read_responses(settings, 16)) if rid not in
             {f"a{i}" for i in range(8)}]  # fmt: skip
    assert sum(rid.startswith("b") for rid in order[:4]) <= 3, order


async def test_status_shows_each_tenants_slots_and_share_of_tokens(
    make_settings, start_worker, start_bridge, tmp_path
):
    """Two slots, three requests of each tenant sent before the worker starts: with fair
    shares one of each runs at a time, which the status shows from the leases; once the
    statistics agent has closed a window of their answers, each tenant's tokens in it and
    its share of them."""
    settings = make_settings(gpu_count=2, request_partitions=1, mock_latency_ms=1500)
    http = await start_bridge(settings)
    async with stats_agent(settings, tmp_path / "stats.log"):
        await _send(settings, [(f"a{i}", "flood") for i in range(3)] +
                    [(f"b{i}", "small") for i in range(3)])  # fmt: skip
        await start_worker(settings)
        rows: list[dict] = []

        async def tenants(seen: Callable[[list[dict]], bool]) -> bool:
            rows[:] = (await http.get("/api/v1/status")).json()["tenants"]
            return seen(rows)

        def one_each_running(rows: list[dict]) -> bool:
            return {(r["tenant"], r["priority"], r["running"]) for r in rows} == {
                ("flood", "medium", 1), ("small", "medium", 1)
            }  # fmt: skip

        await wait_for(
            lambda: tenants(one_each_running), "a run of each tenant in the status", interval=0.2
        )
        await answered(settings, {f"{t}{i}" for t in "ab" for i in range(3)})

        def shared(rows: list[dict]) -> bool:
            # Tokens are absent where none is known. The runs read from the slot table
            # may lag the answers by a refresh, while a window of the first answers can
            # already be closed.
            return any(r.get("tokens") for r in rows) and all(r["running"] == 0 for r in rows)

        await wait_for(
            lambda: tenants(shared), "a closed window's tokens, nothing running", 30, interval=0.2
        )
        served = {r["tenant"]: r for r in rows if r.get("tokens")}
        # Every answer carries the same tokens (one prompt, the mock's one output): a
        # window holds whole answers of the two tenants. (Which answers fall in which
        # window is the agent's: it windows the records it repartitions by their own time.)
        answers = [
            ResponseRecord.model_validate_json(record.value)
            for record in await read_topic(settings, f"{settings.topic_prefix}.responses")
        ]
        (each,) = {a.usage["prompt_tokens"] + a.usage["completion_tokens"] for a in answers}
        assert set(served) <= {"flood", "small"}, rows
        assert all(r["tokens"] % each == 0 for r in served.values()), rows
        total = sum(r["tokens"] for r in served.values())
        assert all(r["share"] == round(r["tokens"] / total, 3) for r in served.values())
        assert all(r["window"] == "2s" and r["running"] == 0 for r in served.values())


async def _tenant_tokens(port: int) -> dict[str, float]:
    async with httpx.AsyncClient() as http:
        try:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
        except httpx.HTTPError:
            return {}  # not listening yet
    found = {}
    for line in text.splitlines():
        if line.startswith("inference_allocator_tenant_tokens{"):
            labels, value = line.rsplit(" ", 1)
            tenant = labels.split('tenant="', 1)[1].split('"', 1)[0]
            found[tenant] = float(value)
    return found


@pytest.mark.slow
async def test_fair_share_counters_survive_a_leader_kill(make_settings):
    """The standby counts the leader's answers as it reads them: once the leader is killed,
    the new leader's counters go on from the old one's, not from zero."""
    settings = make_settings(
        gpu_count=1, session_timeout_ms=3000, heartbeat_interval_ms=500, request_partitions=1
    )
    ports = {"w-a": free_port(), "w-b": free_port()}
    workers = Workers(settings)
    try:
        async with ClusterReader(settings) as reader:
            await workers.start("w-a", INFERENCE_WORKER_METRICS_PORT=str(ports["w-a"]))
            await wait_for(lambda: _owners_are(reader, {"w-a"}), "w-a to lead", timeout=60)
            await workers.start("w-b", INFERENCE_WORKER_METRICS_PORT=str(ports["w-b"]))
            await _send(settings, [(f"a{i}", "flood") for i in range(6)] +
                        [(f"b{i}", "small") for i in range(2)])  # fmt: skip
            await answered(settings, {f"a{i}" for i in range(6)} | {f"b{i}" for i in range(2)})

            async def standby_agrees() -> bool:
                # The leader may have forgotten an idle tenant a lift would raise anyway;
                # what it still shows, the standby holds too.
                leader = await _tenant_tokens(ports["w-a"])
                standby = await _tenant_tokens(ports["w-b"])
                return (
                    "flood" in leader
                    and set(standby) == {"flood", "small"}
                    and all(standby[t] == value for t, value in leader.items())
                )

            await wait_for(standby_agrees, "the standby to hold the leader's counters")
            before = await _tenant_tokens(ports["w-b"])
            assert before["flood"] == pytest.approx(3 * before["small"])  # 6 against 2
            workers.processes["w-a"].kill()
            await wait_for(lambda: _owners_are(reader, {"w-b"}), "w-b to lead", timeout=60)
            await _send(settings, [("a-after", "flood"), ("b-after", "small")])
            await answered(settings, {"a-after", "b-after"})
            await wait_for(
                lambda: _grew(ports["w-b"], before), "the new leader to count on", timeout=10
            )
    finally:
        await workers.close()


async def _grew(port: int, before: dict[str, float]) -> bool:
    """The flood ran one more request: its counter went on from where it was, not from
    zero (the small tenant, back from idle beside the flood, was lifted to the flood's)."""
    now = await _tenant_tokens(port)
    one = before["flood"] / 6
    return now.get("flood") == pytest.approx(before["flood"] + one) and (
        "small" not in now or now["small"] >= before["small"]
    )


# --- budgets -----------------------------------------------------------------------------

KEY = "team-key-0123456789abcdef"


@pytest.fixture
def budgeted(make_settings):
    def settings(budget: str):
        return make_settings(api_keys=f"{KEY}:team:{budget}")

    return settings


async def _post(http: httpx.AsyncClient, name: str) -> httpx.Response:
    return await http.post(
        "/api/v1/inference",
        json={"model_id": "m", "prompt": QUESTION, "request_id": name},
        headers={"Authorization": f"Bearer {KEY}"},
    )


async def test_two_bridges_share_one_token_budget(budgeted, start_worker, start_bridge):
    settings = budgeted("tokens_per_minute=40")
    await start_worker(settings)
    first, second = await start_bridge(settings), await start_bridge(settings)
    sent = 0
    while True:
        reply = await _post(first, f"r{sent}")
        if reply.status_code == 429:
            break
        assert reply.status_code == 200, reply.text
        assert reply.headers["x-ratelimit-limit-tokens"] == "40"
        sent += 1
        assert sent < 40, "never refused"
    assert sent >= 1
    assert 1 <= int(reply.headers["Retry-After"]) <= 60
    assert reply.headers["x-ratelimit-remaining-tokens"] == "0"
    assert reply.headers["x-ratelimit-reset-tokens"].endswith("s")
    assert "over its budget of 40 tokens per minute" in reply.json()["detail"]

    # The other bridge counted the same answers from the topic: it refuses too.
    async def refused() -> bool:
        return (await _post(second, "other")).status_code == 429

    await wait_for(refused, "the second bridge to refuse")


async def test_the_openai_client_reads_a_429_over_a_request_budget(
    budgeted, start_worker, start_bridge
):
    settings = budgeted("requests_per_minute=2")
    await start_worker(settings)
    http = await start_bridge(settings)
    client = openai.AsyncOpenAI(base_url=f"{http.base_url}/v1", api_key=KEY, max_retries=0)
    try:
        for _ in range(2):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": QUESTION}]
            )

        async def refused() -> openai.RateLimitError | None:
            try:
                await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": QUESTION}]
                )
            except openai.RateLimitError as exc:
                return exc
            return None

        error = None
        for _ in range(20):  # the two answers are counted once read back: at once, or nearly
            error = await refused()
            if error is not None:
                break
            await asyncio.sleep(0.1)
        assert error is not None, "never refused"
        assert error.status_code == 429
        assert error.response.headers["x-ratelimit-limit-requests"] == "2"
        assert error.response.headers["x-ratelimit-remaining-requests"] == "0"
        assert int(error.response.headers["retry-after"]) >= 1
        assert error.body["code"] == "rate_limit_exceeded"
    finally:
        await client.close()
