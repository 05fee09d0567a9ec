"""Prefix routing through the real broker, over two mock pools of one model: a document's
questions stay on the pool its first one went to, a session's turns stay on the pool of
its last one (``X-Session-Id``, the OpenAI ``user``, a Kafka record's ``session``), and
with prefix routing off they do not. Which pool ran a request is read from its answer on
the responses topic. The real caches are in test_model_server.py."""

from __future__ import annotations

import json

import pytest

from inference_allocator.schemas import Priority
from inference_allocator.topics import Topics

from .helpers import answers_of, wait_for

pytestmark = pytest.mark.broker

DOCUMENTS = {
    name: "".join(f"Line {i} of the {name} document, about {name}. " for i in range(60))
    for name in ("rivers", "bridges", "mills")
}


def replicas(routing: bool) -> str:
    return "".join(
        f"""
[[pools]]
name = "{name}"
backend = "mock"
models = ["m"]
slots = 2
latency_ms = 20
prefix_routing = {str(routing).lower()}
"""
        for name in ("one", "two")
    )


@pytest.fixture
def fleet(make_settings, tmp_path):
    def settings(routing: bool):
        path = tmp_path / f"fleet-{routing}.toml"
        path.write_text(replicas(routing))
        return make_settings(fleet_file=str(path))

    return settings


async def _pool_of(settings, request_id: str) -> str:
    [answer] = await answers_of(settings, request_id)
    assert answer.status == "ok", answer
    assert answer.pool is not None
    return answer.pool


async def _ask(http, document: str, question: str) -> str:
    reply = await http.post(
        "/v1/chat/completions",
        json={"model": "m", "messages": [
            {"role": "system", "content": DOCUMENTS[document]},
            {"role": "user", "content": question},
        ]},
    )  # fmt: skip
    assert reply.status_code == 200, reply.text
    return reply.headers["X-Request-Id"]


async def _rounds(http, settings, rounds: int) -> dict[str, set[str]]:
    """Ask about each document in turn, ``rounds`` times; the pools each one's went to."""
    asked: dict[str, list[str]] = {name: [] for name in DOCUMENTS}
    for round_ in range(rounds):
        for document in DOCUMENTS:
            asked[document].append(await _ask(http, document, f"question {round_}?"))
    return {doc: {await _pool_of(settings, rid) for rid in ids} for doc, ids in asked.items()}


async def test_each_documents_questions_stay_on_one_pool_and_are_counted(
    fleet, start_worker, start_bridge
):
    settings = fleet(routing=True)
    worker = await start_worker(settings)
    http = await start_bridge(settings)
    pools = await _rounds(http, settings, 3)
    assert all(len(where) == 1 for where in pools.values()), pools
    assert {next(iter(where)) for where in pools.values()} == {"one", "two"}  # spread
    decisions = worker.metrics.placements._counts
    assert sum(decisions.values()) == 9
    assert sum(n for (_, reason), n in decisions.items() if reason == "prefix") == 6
    matched = sum(worker.metrics.prefix_hit_chars._counts.values())
    assert matched >= 6 * len(DOCUMENTS["rivers"]) * 0.9  # the documents, nearly whole
    metrics = (await http.get("/metrics")).text  # the bridge's: no worker metrics there
    assert "prefix_routing_decisions" not in metrics


async def test_without_prefix_routing_a_documents_questions_move(fleet, start_worker, start_bridge):
    settings = fleet(routing=False)
    worker = await start_worker(settings)
    http = await start_bridge(settings)
    pools = await _rounds(http, settings, 2)
    assert any(len(where) == 2 for where in pools.values()), pools
    assert worker.metrics.placements._counts == {}


async def _turn(http, session: str, text: str, how: str) -> str:
    body: dict = {"model": "m", "messages": [{"role": "user", "content": text}]}
    headers = {}
    if how == "header":
        headers["X-Session-Id"] = session
    else:
        body["user"] = session
    reply = await http.post("/v1/chat/completions", json=body, headers=headers)
    assert reply.status_code == 200, reply.text
    return reply.headers["X-Request-Id"]


@pytest.mark.parametrize("how", ["header", "user"])
async def test_a_sessions_turns_stay_on_the_pool_of_its_last_turn(
    fleet, start_worker, start_bridge, how
):
    """Short turns share no prefix block: only the session keeps them together."""
    settings = fleet(routing=True)
    await start_worker(settings)
    http = await start_bridge(settings)
    sessions = [f"chat-{i}" for i in range(3)]
    turns: dict[str, list[str]] = {s: [] for s in sessions}
    for turn in range(3):
        for session in sessions:
            turns[session].append(await _turn(http, session, f"turn {turn}", how))
    pools = {s: {await _pool_of(settings, rid) for rid in ids} for s, ids in turns.items()}
    assert all(len(where) == 1 for where in pools.values()), pools


async def test_a_kafka_records_session_and_the_api_session_id_pin_it_too(
    fleet, start_worker, start_bridge, kafka_producer
):
    settings = fleet(routing=True)
    await start_worker(settings)
    http = await start_bridge(settings)
    topic = Topics.from_settings(settings).request(Priority.MEDIUM)
    ids = []
    for turn in range(4):
        rid = f"kafka-turn-{turn}"
        record = {"request_id": rid, "model_id": "m", "prompt": f"turn {turn}", "session": "s1"}
        await kafka_producer.send_and_wait(topic, json.dumps(record).encode(), key=rid.encode())
        ids.append(rid)
        reply = await http.post(
            "/api/v1/inference",
            json={"model_id": "m", "prompt": f"other {turn}", "session_id": "s2",
                  "request_id": f"api-turn-{turn}"},
        )  # fmt: skip
        assert reply.status_code == 200, reply.text
        ids.append(f"api-turn-{turn}")
        await wait_for(lambda rid=rid: answers_of(settings, rid), f"{rid}'s answer")
    by_session = {"kafka": set(), "api": set()}
    for rid in ids:
        by_session[rid.split("-")[0]].add(await _pool_of(settings, rid))
    assert all(len(where) == 1 for where in by_session.values()), by_session
