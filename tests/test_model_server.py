"""The real path: llama.cpp's llama-server with SmolLM2, behind the allocator.

These tests build llama-server on first use (about 10 minutes on 2 cores, cached under
``~/.cache/inference-allocator``). Without cmake or a C++ compiler they skip with the
reason, and fail under ``INFERENCE_TEST_STRICT=1`` (CI).
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator

import httpx
import pytest

from inference_allocator.cache import default_cache_dir
from inference_allocator.fleet.backends import Completion, UpstreamUnreachable
from inference_allocator.fleet.openai_backend import OpenAIBackend
from inference_allocator.fleet.spec import PoolSpec
from inference_allocator.modelserver import MODEL_NAME, LlamaServer
from inference_allocator.modelserver.build import missing_toolchain
from inference_allocator.ports import free_port
from inference_allocator.schemas import Priority

from .conftest import missing_tool
from .helpers import answers_of, read_responses, wait_for

# The first test builds llama-server (about 10 minutes on 2 cores) inside its fixture.
pytestmark = [pytest.mark.model_server, pytest.mark.slow, pytest.mark.timeout(1500)]


def _start(port: int) -> LlamaServer:
    problem = missing_toolchain()
    if problem:
        missing_tool(problem)
    return LlamaServer(port, default_cache_dir(), out=sys.stderr).start()


@pytest.fixture(scope="session")
def model_server() -> Iterator[LlamaServer]:
    """One llama-server for the session (built once, cached across runs)."""
    server = _start(free_port())
    yield server
    server.stop()


def fleet_file(tmp_path, model_server: LlamaServer, slots: int = 2) -> str:
    path = tmp_path / "fleet.toml"
    path.write_text(
        f"""
[[pools]]
name = "llamacpp"
backend = "openai"
base_url = "{model_server.base_url}"
models = ["{MODEL_NAME}"]
slots = {slots}
health_interval_seconds = 0.5

[[pools]]
name = "sim"
backend = "mock"
models = ["llama-3-70b"]
slots = 2
latency_ms = 10
"""
    )
    return str(path)


@pytest.mark.parametrize("stream_upstream", [False, True], ids=["whole", "streamed-upstream"])
async def test_the_openai_backend_gets_real_text_and_usage(model_server, stream_upstream):
    spec = PoolSpec(
        name="p", backend="openai", base_url=model_server.base_url, models=[MODEL_NAME],
        slots=2, stream_upstream=stream_upstream,
    )  # fmt: skip
    backend = OpenAIBackend(spec)
    try:
        assert await backend.healthy()
        reply = await backend.infer(
            MODEL_NAME, "Name a colour.", 0, {"max_tokens": 8, "temperature": 0}
        )
    finally:
        await backend.close()
    assert isinstance(reply, Completion)
    assert reply.text.strip()
    assert reply.finish_reason in ("stop", "length")
    assert reply.usage and reply.usage["completion_tokens"] > 0
    assert reply.usage["completion_tokens"] <= 8


async def test_a_dead_server_is_unreachable_not_an_answer():
    spec = PoolSpec(
        name="p", backend="openai", base_url=f"http://127.0.0.1:{free_port()}/v1",
        models=[MODEL_NAME], slots=1, timeout_seconds=5,
    )  # fmt: skip
    backend = OpenAIBackend(spec)
    try:
        assert not await backend.healthy()
        with pytest.raises(UpstreamUnreachable):
            await backend.infer(MODEL_NAME, "hi", 0)
    finally:
        await backend.close()


async def test_two_pools_one_fleet_through_http_and_kafka(
    model_server, tmp_path, make_settings, start_worker, start_bridge, kafka_producer
):
    settings = make_settings(fleet_file=fleet_file(tmp_path, model_server))
    await start_worker(settings)
    http = await start_bridge(settings)

    real = await http.post(
        "/api/v1/inference",
        json={
            "model_id": MODEL_NAME,
            "prompt": "Say hello.",
            "priority": "high",
            "params": {"max_tokens": 12, "temperature": 0},
        },
    )
    assert real.status_code == 200, real.text
    body = real.json()
    assert body["output"].strip() and "mock completion" not in body["output"]
    assert body["usage"]["completion_tokens"] > 0 and body["finish_reason"] in ("stop", "length")
    assert body["pool"] == "llamacpp"

    mock = await http.post("/api/v1/inference", json={"model_id": "llama-3-70b", "prompt": "Hi"})
    assert mock.status_code == 200 and "mock completion" in mock.json()["output"]
    assert mock.json()["pool"] == "sim"

    unknown = await http.post("/api/v1/inference", json={"model_id": "gpt-9", "prompt": "Hi"})
    assert unknown.status_code == 404
    assert "gpt-9" in unknown.text and MODEL_NAME in unknown.text and "llama-3-70b" in unknown.text

    models = (await http.get("/api/v1/models")).json()
    assert {m["model"]: m["pools"] for m in models["models"]} == {
        MODEL_NAME: ["llamacpp"],
        "llama-3-70b": ["sim"],
    }

    # Through Kafka, as any client would produce it.
    topic = f"{settings.topic_prefix}.requests.medium"
    value = {"model_id": MODEL_NAME, "prompt": "Count to three.", "params": {"max_tokens": 10}}
    await kafka_producer.send_and_wait(topic, json.dumps(value).encode(), key=b"kafka-real-1")
    [response] = [r for r in await read_responses(settings, 3) if r.request_id == "kafka-real-1"]
    assert response.status == "ok" and response.output and response.usage
    assert response.usage["completion_tokens"] > 0


async def test_a_killed_server_fails_its_request_goes_down_and_comes_back(
    tmp_path, make_settings, start_worker, start_bridge
):
    port = free_port()
    server = _start(port)
    try:
        settings = make_settings(fleet_file=fleet_file(tmp_path, server, slots=1))
        await start_worker(settings)
        http = await start_bridge(settings)
        body = {"model_id": MODEL_NAME, "prompt": "Write a long story about the sea.",
                "params": {"max_tokens": 2000, "temperature": 0.7}}  # fmt: skip
        call = asyncio.create_task(http.post("/api/v1/inference", json=body))
        await wait_for(lambda: _pool(http, "llamacpp", "busy", 1), "the request to run")
        await asyncio.to_thread(server.kill)  # mid-generation
        answer = await call
        assert answer.status_code == 500, answer.text
        assert "did not answer" in answer.json()["detail"]
        await wait_for(lambda: _pool(http, "llamacpp", "up", False), "the pool to go down")
        status = (await http.get("/api/v1/status")).json()
        assert status["gpus_available"] == 2  # only the mock pool's slots

        await asyncio.to_thread(server.start)  # the same port: the pool comes back by itself
        await wait_for(lambda: _pool(http, "llamacpp", "up", True), "the pool to come back")
        again = await http.post(
            "/api/v1/inference",
            json={"model_id": MODEL_NAME, "prompt": "Hi", "params": {"max_tokens": 4}},
        )
        assert again.status_code == 200, again.text
    finally:
        server.stop()


async def _pool(http: httpx.AsyncClient, name: str, field: str, value: object) -> bool:
    status = (await http.get("/api/v1/status")).json()
    pool = next((p for p in status.get("pools", []) if p["name"] == name), None)
    return pool is not None and pool[field] == value


def test_model_server_command_prints_its_base_url_and_answers():
    # started as a user would; stopped with SIGINT
    import os
    import signal
    import subprocess
    import time

    if missing_toolchain():
        missing_tool(str(missing_toolchain()))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "inference_allocator", "model-server", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 900
        lines = []
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if f"http://127.0.0.1:{port}/v1" in line:
                break
            assert time.monotonic() < deadline
        reply = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"model": MODEL_NAME, "messages": [{"role": "user", "content": "Hi"}],
                  "max_tokens": 4},
            timeout=60,
        )  # fmt: skip
        assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] > 0
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=30) == 0, "".join(lines)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        process.stdout.close()


async def test_the_openai_api_in_front_of_llama_server_streams_the_same_text(
    model_server, tmp_path, make_settings, start_worker, start_bridge
):
    """The official client, sync and async, against the bridge with llama-server behind it:
    at temperature 0 a streamed answer says what the whole one says, chunk by chunk, in
    order, with its usage; and what llama-server says directly."""
    import openai

    from inference_allocator.schemas import ChunkRecord

    from .helpers import read_topic

    settings = make_settings(fleet_file=fleet_file(tmp_path, model_server))
    await start_worker(settings)
    http = await start_bridge(settings)
    base = f"{str(http.base_url).rstrip('/')}/v1"
    client = openai.AsyncOpenAI(base_url=base, api_key="none", max_retries=0)
    messages = [{"role": "user", "content": "Name three colours."}]
    options = dict(model=MODEL_NAME, messages=messages, max_tokens=24, temperature=0, seed=1)
    whole = await client.chat.completions.create(**options, extra_body={"priority": "high"})
    text = whole.choices[0].message.content
    assert text and "mock completion" not in text and whole.usage.completion_tokens > 0
    async with openai.AsyncOpenAI(base_url=model_server.base_url, api_key="none") as direct:
        said = (await direct.chat.completions.create(**options)).choices[0].message.content
    assert said == text

    stream = await client.chat.completions.create(
        **options, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    assert len([p for p in pieces if p]) > 3 and "".join(pieces) == text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    request_id = chunks[0].id.removeprefix("chatcmpl-")
    records = await read_topic(settings, f"{settings.topic_prefix}.chunks")
    mine = [ChunkRecord.model_validate_json(r.value) for r in records]
    mine = [c for c in mine if c.request_id == request_id]
    assert [c.seq for c in mine] == list(range(len(mine))) and mine[-1].done

    def blocking() -> tuple[str, str]:
        with openai.OpenAI(base_url=base, api_key="none", max_retries=0) as sync:
            prompt = dict(model=MODEL_NAME, prompt="The sky is", max_tokens=12, temperature=0)
            full = sync.completions.create(**prompt).choices[0].text
            stream = sync.completions.create(**prompt, stream=True)
            return full, "".join(c.choices[0].text for c in stream if c.choices)

    full, streamed = await asyncio.to_thread(blocking)
    await client.close()
    assert full and streamed == full


async def test_a_client_leaving_a_stream_stops_llama_server_generating(
    model_server, tmp_path, make_settings, start_worker, start_bridge
):
    """Cancelled mid-stream through the OpenAI API: the worker closes its connection to the
    server, which stops generating (its /slots say so), and the slot is free at once."""
    import openai

    settings = make_settings(fleet_file=fleet_file(tmp_path, model_server))
    await start_worker(settings)
    http = await start_bridge(settings)
    base = f"{str(http.base_url).rstrip('/')}/v1"
    async with openai.AsyncOpenAI(base_url=base, api_key="none", max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=MODEL_NAME,
            messages=[{"role": "user", "content": "Write a very long story about the sea."}],
            max_tokens=2000,
            stream=True,
        )
        words = 0
        async for chunk in stream:
            words += bool(chunk.choices and chunk.choices[0].delta.content)
            if words == 3:
                break
        await stream.close()

    async def server_idle() -> bool:
        slots = (await http.get(f"{model_server.base_url.removesuffix('/v1')}/slots")).json()
        return not any(slot["is_processing"] for slot in slots)

    await wait_for(server_idle, "llama-server to stop generating", timeout=3)
    await wait_for(lambda: _pool(http, "llamacpp", "busy", 0), "the slot to be free", timeout=3)


async def test_a_high_preempts_a_long_low_generation_on_llama_server(
    model_server, tmp_path, make_settings, start_worker, start_bridge
):
    """Both of llama-server's slots generate long lows; a high preempts the low that started
    last (its connection closed, the server stops that generation), runs at once, and the
    low runs again to its end: every request answered once, with real text. The pool
    passes our level through as the request's priority, which llama-server accepts, and
    streams from the server (which then notices the closed connection at once)."""
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f"""
[[pools]]
name = "llamacpp"
backend = "openai"
base_url = "{model_server.base_url}"
models = ["{MODEL_NAME}"]
slots = 2
engine_priority = true
stream_upstream = true
"""
    )
    settings = make_settings(
        fleet_file=str(fleet), preempt_after_ms=300, request_timeout_seconds=300
    )
    worker = await start_worker(settings)
    http = await start_bridge(settings)
    story = {"max_tokens": 400, "temperature": 0, "ignore_eos": True}

    def body(name: str, priority: str, prompt: str, params: dict) -> dict:
        return {"model_id": MODEL_NAME, "prompt": prompt, "priority": priority,
                "request_id": name, "params": params, "timeout_seconds": 300}  # fmt: skip

    lows = []
    for name in ("low-1", "low-2"):
        low = body(name, "low", "Write a very long story about the sea.", story)
        lows.append(asyncio.create_task(http.post("/api/v1/inference", json=low, timeout=300)))
        await wait_for(lambda: _pool(http, "llamacpp", "busy", len(lows)), f"{name} to run")
    high = await http.post(
        "/api/v1/inference",
        json=body("high", "high", "Name a colour.", {"max_tokens": 8, "temperature": 0}),
        timeout=300,
    )
    assert high.status_code == 200 and high.json()["output"].strip(), high.text
    answers = [await low for low in lows]
    assert all(a.status_code == 200 and a.json()["output"].strip() for a in answers)
    records = {}
    for name in ("high", "low-1", "low-2"):
        [records[name]] = await answers_of(settings, name)  # one answer each
    assert records["low-2"].preemptions == 1 and records["low-1"].preemptions is None
    assert worker.metrics.preemptions._counts == {("llamacpp", Priority.LOW): 1}


async def test_auto_slots_find_llama_servers_parallel_count(
    model_server, tmp_path, make_settings, start_worker, start_bridge
):
    """``slots = "auto"``: the worker asks llama-server (its /props) and keeps as many
    requests in flight as its ``--parallel`` slots, shown in status within 10 s."""
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f"""
[[pools]]
name = "llamacpp"
backend = "openai"
base_url = "{model_server.base_url}"
models = ["{MODEL_NAME}"]
slots = "auto"
max_slots = 16
"""
    )
    settings = make_settings(fleet_file=str(fleet))
    worker = await start_worker(settings)
    http = await start_bridge(settings)
    await wait_for(lambda: _pool(http, "llamacpp", "slots", 2), "the limit of 2", timeout=10)
    capacity = worker.pool_limits.capacity["llamacpp"]
    assert (capacity.limit, capacity.source) == (2, "the server's slots")
    answer = await http.post(
        "/api/v1/inference",
        json={"model_id": MODEL_NAME, "prompt": "Name a colour.", "params": {"max_tokens": 4}},
        timeout=120,
    )
    assert answer.status_code == 200 and answer.json()["pool"] == "llamacpp"


@pytest.fixture(scope="session")
def second_model_server(model_server) -> Iterator[LlamaServer]:
    """Another llama-server of the same model: two replicas, each with its own cache."""
    server = _start(free_port())
    yield server
    server.stop()


def replicas_fleet(tmp_path, servers: list[LlamaServer], routing: bool) -> str:
    path = tmp_path / f"replicas-{routing}.toml"
    path.write_text(
        "".join(
            f"""
[[pools]]
name = "replica-{i}"
backend = "openai"
base_url = "{server.base_url}"
models = ["{MODEL_NAME}"]
slots = 2
prefix_routing = {str(routing).lower()}
"""
            for i, server in enumerate(servers)
        )
    )
    return str(path)


@pytest.mark.parametrize("routing", [True, False], ids=["prefix-routing", "routing-off"])
async def test_a_chats_next_turn_goes_to_the_server_that_holds_its_first(
    model_server, second_model_server, tmp_path, make_settings, start_worker, start_bridge, routing
):
    """Three chats about three documents over two llama-servers, all first turns, then all
    second turns (each carrying the first's answer). With prefix routing every second turn
    goes to the server that ran its first, which says it found the first turn's prompt in
    its cache; with it off, the free slot free the longest takes each turn, so some second
    turn lands on the other server and prefills the whole document again."""
    settings = make_settings(
        fleet_file=replicas_fleet(tmp_path, [model_server, second_model_server], routing),
        request_timeout_seconds=300,
    )
    await start_worker(settings)
    http = await start_bridge(settings)
    nonce = f"{routing}-{id(tmp_path)}"  # documents no server has seen before
    documents = [
        " ".join(f"Fact {i} of archive {nonce}-{d}: the {d} gate opens at {i}." for i in range(30))
        for d in ("north", "south", "east")
    ]
    chats = [[{"role": "system", "content": doc}, {"role": "user", "content": "When?"}]
             for doc in documents]  # fmt: skip

    async def turn(messages: list[dict]) -> tuple[str, dict]:
        reply = await http.post(
            "/v1/chat/completions",
            json={"model": MODEL_NAME, "messages": messages, "max_tokens": 8, "temperature": 0},
            timeout=300,
        )
        assert reply.status_code == 200, reply.text
        [answer] = await answers_of(settings, reply.headers["X-Request-Id"])
        assert reply.json()["usage"]["prompt_tokens_details"]["cached_tokens"] >= 0
        messages.append(
            {"role": "assistant", "content": reply.json()["choices"][0]["message"]["content"]}
        )
        return answer.pool, answer.usage  # fmt: skip

    first = [await turn(chat) for chat in chats]
    for chat in chats:
        chat.append({"role": "user", "content": "And then?"})
    second = [await turn(chat) for chat in chats]
    same = [a[0] == b[0] for a, b in zip(first, second, strict=True)]
    if routing:
        assert all(same), (first, second)
        for (_, before), (_, after) in zip(first, second, strict=True):
            # The server reused the first turn's prompt: its whole document.
            assert after["cached_tokens"] >= 0.9 * before["prompt_tokens"], (before, after)
        assert {pool for pool, _ in first} == {"replica-0", "replica-1"}  # spread
    else:
        assert not all(same), (first, second)
        moved = [after for (a, _), (b, after) in zip(first, second, strict=True) if a != b]
        assert all(after["cached_tokens"] < 0.5 * after["prompt_tokens"] for after in moved)
