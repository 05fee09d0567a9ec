"""API keys on a real bridge: 401 without a valid key, 403 above a key's ceiling, the key's
name on the request and its response on Kafka, keys never logged nor produced."""

from __future__ import annotations

import logging

import pytest

from inference_allocator.brokers import free_port
from inference_allocator.schemas import Priority, RequestRecord
from inference_allocator.topics import Topics

from .helpers import read_responses, read_topic, run_cli

pytestmark = pytest.mark.broker

ALICE = "alice-0123456789abcdef"
BATCH = "batch-0123456789abcdef"
BODY = {"model_id": "m", "prompt": "hi", "priority": "medium"}


@pytest.fixture
def keyed_settings(make_settings):
    return make_settings(api_keys=f"{ALICE}:alice, {BATCH}:batch:medium")


async def test_without_a_valid_key_every_api_route_is_401(keyed_settings, start_bridge):
    http = await start_bridge(keyed_settings)
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"X-API-Key": "x"}):
        refused = await http.post("/api/v1/inference", json=BODY, headers=headers)
        assert refused.status_code == 401, refused.text
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert (await http.get("/api/v1/status", headers=headers)).status_code == 401
        assert (await http.get("/api/v1/models", headers=headers)).status_code == 401
    # The probes stay open: a kubelet has no key.
    assert (await http.get("/healthz")).status_code == 200
    assert (await http.get("/readyz")).status_code in (200, 503)


async def test_a_key_above_its_ceiling_is_403_and_its_name_travels(
    keyed_settings, start_worker, start_bridge, caplog
):
    caplog.set_level(logging.DEBUG)
    await start_worker(keyed_settings)
    http = await start_bridge(keyed_settings)
    too_urgent = await http.post(
        "/api/v1/inference", json={**BODY, "priority": "high"}, headers={"X-API-Key": BATCH}
    )
    assert too_urgent.status_code == 403
    assert "may use priority medium at most" in too_urgent.json()["detail"]

    batch = await http.post("/api/v1/inference", json=BODY, headers={"X-API-Key": BATCH})
    alice = await http.post(
        "/api/v1/inference",
        json={**BODY, "priority": "high"},
        headers={"Authorization": f"Bearer {ALICE}"},
    )
    assert batch.status_code == 200 and alice.status_code == 200, (batch.text, alice.text)
    status = await http.get("/api/v1/status", headers={"X-API-Key": BATCH})
    assert status.status_code == 200

    # The key's name goes with the request and comes back on its response.
    topics = Topics.from_settings(keyed_settings)
    requests = await read_topic(keyed_settings, topics.request(Priority.MEDIUM), 1)
    requests += await read_topic(keyed_settings, topics.request(Priority.HIGH), 1)
    tenants = {
        RequestRecord.model_validate_json(r.value).request_id: (
            RequestRecord.model_validate_json(r.value).tenant
        )
        for r in requests
    }
    assert tenants == {batch.json()["request_id"]: "batch", alice.json()["request_id"]: "alice"}
    responses = await read_responses(keyed_settings, 2)
    assert {r.request_id: r.tenant for r in responses} == tenants
    # The keys themselves are on no record and in no log line.
    for record in requests:
        assert ALICE.encode() not in record.value and BATCH.encode() not in record.value
    # (The test's own HTTP client, httpx/httpcore, logs the headers it sends: not ours.)
    ours = [r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    assert not [m for m in ours if ALICE in m or BATCH in m]


def test_a_bad_key_entry_stops_the_bridge_with_one_line_that_hides_the_key():
    result = run_cli(
        "bridge", "--port", str(free_port()), env={"INFERENCE_API_KEYS": "tooshort:ops:high"}
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: INFERENCE_API_KEYS: entry 1 (ops) has a key shorter than 16 characters; "
        "use a long random one (e.g. `openssl rand -hex 24`)"
    )


async def test_an_answer_by_id_is_only_its_own_keys(keyed_settings, start_worker, start_bridge):
    await start_worker(keyed_settings)
    http = await start_bridge(keyed_settings)
    alice, batch = {"X-API-Key": ALICE}, {"X-API-Key": BATCH}
    done = await http.post("/api/v1/inference", json={**BODY, "request_id": "a-1"}, headers=alice)
    assert done.status_code == 200
    assert (await http.get("/api/v1/inference/a-1", headers=alice)).json()["status"] == "ok"
    # Another key neither reads it nor gets it by sending its id.
    assert (await http.get("/api/v1/inference/a-1", headers=batch)).status_code == 404
    taken = await http.post("/api/v1/inference", json={**BODY, "request_id": "a-1"}, headers=batch)
    assert taken.status_code == 409 and "another API key" in taken.text


async def test_a_request_that_names_no_priority_gets_its_keys_ceiling(
    make_settings, start_worker, start_bridge
):
    settings = make_settings(api_keys=f"{BATCH}:batch:low")
    await start_worker(settings)
    http = await start_bridge(settings)
    headers = {"X-API-Key": BATCH}
    plain = await http.post(
        "/api/v1/inference", json={"model_id": "m", "prompt": "hi"}, headers=headers
    )
    assert plain.status_code == 200, plain.text
    assert plain.json()["priority"] == "low"
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    openai = await http.post("/v1/chat/completions", json=chat, headers=headers)
    assert openai.status_code == 200, openai.text
    # A priority named above the ceiling is still refused.
    named = await http.post(
        "/api/v1/inference", json={"model_id": "m", "prompt": "hi", "priority": "medium"},
        headers=headers,
    )  # fmt: skip
    assert named.status_code == 403
