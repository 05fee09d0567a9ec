"""The OpenAI API on the bridge, with the official ``openai`` client, on mock pools: chat and
completions, streamed and not, priorities, errors in OpenAI's shape, a stream cut short."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable

import openai
import pytest

from inference_allocator.bridge.openai_wire import prompt_of
from inference_allocator.fleet.backends import mock_output
from inference_allocator.schemas import ChunkRecord, Priority
from inference_allocator.topics import Topics

from .helpers import read_topic, ready, wait_for
from .test_leadership import Workers

ALICE = "alice-0123456789abcdef"
MESSAGES = [{"role": "user", "content": "Tell me about Kafka."}]


def _v1(http) -> str:
    """The base URL an OpenAI client is given: the bridge's /v1."""
    return f"{str(http.base_url).rstrip('/')}/v1"


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., openai.AsyncOpenAI]]:
    """``clients(http, api_key=...)``: async OpenAI clients of a bridge, closed at the end."""
    made: list[openai.AsyncOpenAI] = []

    def make(http, api_key: str = "none") -> openai.AsyncOpenAI:
        made.append(openai.AsyncOpenAI(base_url=_v1(http), api_key=api_key, max_retries=0))
        return made[-1]

    yield make
    for client in made:
        await client.close()


async def test_the_official_client_chats_and_completes(
    make_settings, start_worker, start_bridge, clients
):
    settings = make_settings(mock_latency_ms=5)
    await start_worker(settings)
    client = clients(await start_bridge(settings))
    chat = await client.chat.completions.create(model="llama-3-70b", messages=MESSAGES)
    assert chat.object == "chat.completion" and chat.model == "llama-3-70b"
    assert chat.choices[0].message.content == mock_output("llama-3-70b", prompt_of(MESSAGES))
    assert chat.choices[0].finish_reason == "stop" and chat.usage.completion_tokens > 0
    text = await client.completions.create(model="llama-3-70b", prompt="Once upon a time")
    assert text.object == "text_completion"
    assert text.choices[0].text == mock_output("llama-3-70b", "Once upon a time")
    listed = await client.models.list()
    assert [m.id for m in listed.data] == ["*"]  # the default mock pool takes any model


async def test_a_stream_comes_in_order_and_says_the_same_as_the_whole(
    make_settings, start_worker, start_bridge, clients
):
    settings = make_settings(mock_latency_ms=200)
    await start_worker(settings)
    client = clients(await start_bridge(settings))
    whole = await client.chat.completions.create(model="m", messages=MESSAGES)
    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [
        c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) > 5  # word by word
    assert "".join(pieces) == whole.choices[0].message.content
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    # The chunks are on Kafka for any consumer, in order, ending with "done".
    records = await read_topic(settings, Topics.from_settings(settings).chunks)
    mine = [ChunkRecord.model_validate_json(r.value) for r in records]
    mine = [c for c in mine if c.request_id == chunks[0].id.removeprefix("chatcmpl-")]
    assert [c.seq for c in mine] == list(range(len(mine))) and mine[-1].done
    assert "".join(c.text for c in mine) == whole.choices[0].message.content


async def test_a_plain_sse_client_reads_the_stream(make_settings, start_worker, start_bridge):
    settings = make_settings(mock_latency_ms=50)
    await start_worker(settings)
    http = await start_bridge(settings)
    body = {"model": "m", "messages": MESSAGES, "stream": True, "priority": "low"}
    events = []
    async with http.stream("POST", "/v1/chat/completions", json=body) as reply:
        assert reply.status_code == 200
        assert reply.headers["content-type"].startswith("text/event-stream")
        async for line in reply.aiter_lines():
            if line.startswith("data: "):
                events.append(line.removeprefix("data: "))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == mock_output("m", prompt_of(MESSAGES))


async def test_the_sync_client_streams_completions(make_settings, start_worker, start_bridge):
    settings = make_settings(mock_latency_ms=50)
    await start_worker(settings)
    http = await start_bridge(settings)

    def call() -> tuple[str, str]:  # the blocking client, as a script uses it
        with openai.OpenAI(base_url=_v1(http), api_key="none", max_retries=0) as client:
            whole = client.completions.create(model="m", prompt="Stream this")
            stream = client.completions.create(model="m", prompt="Stream this", stream=True)
            streamed = "".join(c.choices[0].text for c in stream if c.choices)
        return whole.choices[0].text, streamed

    whole, streamed = await asyncio.to_thread(call)
    assert streamed == whole == mock_output("m", "Stream this")


def _fleet(tmp_path, latency_ms: int = 5, slots: int = 2) -> str:
    path = tmp_path / "fleet.toml"
    path.write_text(
        f"""
[[pools]]
name = "sim"
backend = "mock"
models = ["llama-3-70b"]
slots = {slots}
latency_ms = {latency_ms}
"""
    )
    return str(path)


async def test_errors_come_in_openai_shape_with_the_bridge_statuses(
    make_settings, start_worker, start_bridge, tmp_path, clients
):
    settings = make_settings(
        fleet_file=_fleet(tmp_path, latency_ms=3000, slots=1),
        queue_max_size=1,
        api_keys=f"{ALICE}:alice:medium",
    )
    await start_worker(settings)
    http = await start_bridge(settings)
    client = clients(http, api_key=ALICE)
    with pytest.raises(openai.NotFoundError) as unknown:
        await client.chat.completions.create(model="gpt-4", messages=MESSAGES)
    assert unknown.value.code == "model_not_found" and "llama-3-70b" in unknown.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        await client.chat.completions.create(model="llama-3-70b", messages=[])
    assert bad.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="llama-3-70b", messages=MESSAGES, n=2)
    with pytest.raises(openai.AuthenticationError):
        await clients(http, api_key="wrong").models.list()
    with pytest.raises(openai.PermissionDeniedError):
        await client.chat.completions.create(
            model="llama-3-70b", messages=MESSAGES, extra_body={"priority": "high"}
        )
    # One runs, one waits: the queue is full, and the SDK reads Retry-After.
    running = asyncio.create_task(
        client.chat.completions.create(model="llama-3-70b", messages=MESSAGES)
    )
    waiting = asyncio.create_task(
        client.chat.completions.create(model="llama-3-70b", messages=MESSAGES)
    )

    async def full() -> bool:
        status = await http.get("/api/v1/status", headers={"X-API-Key": ALICE})
        return status.json()["queue_size"] >= 1

    await wait_for(full, "a request to wait")
    with pytest.raises(openai.APIStatusError) as refused:
        await client.chat.completions.create(model="llama-3-70b", messages=MESSAGES)
    assert refused.value.status_code == 503 and refused.value.response.headers["Retry-After"]
    assert refused.value.body["type"] == "server_error"
    running.cancel(), waiting.cancel()
    await asyncio.gather(running, waiting, return_exceptions=True)


async def test_priority_from_the_body_an_integer_or_the_header(
    make_settings, start_worker, start_bridge, clients
):
    settings = make_settings(mock_latency_ms=1)
    await start_worker(settings)
    http = await start_bridge(settings)
    client = clients(http)
    sent = {
        "high": {"extra_body": {"priority": "high"}},
        "high-int": {"extra_body": {"priority": -1}},
        "medium-int": {"extra_body": {"priority": 0}},
        "low": {"extra_headers": {"X-Priority": "low"}},
        "low-int": {"extra_body": {"priority": 5}},
        "default": {},
    }
    ids = {}
    for name, options in sent.items():
        reply = await client.chat.completions.create(model="m", messages=MESSAGES, **options)
        ids[reply.id.removeprefix("chatcmpl-")] = name
    topics = Topics.from_settings(settings)
    where = {}
    for priority in Priority:
        for record in await read_topic(settings, topics.request(priority)):
            where[ids[record.key.decode()]] = priority.value
    assert where == {
        "high": "high", "high-int": "high", "medium-int": "medium",
        "low": "low", "low-int": "low", "default": "medium",
    }  # fmt: skip
    bad = await http.post(
        "/v1/chat/completions", json={"model": "m", "messages": MESSAGES, "priority": "urgent"}
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "priority"


async def test_a_client_that_leaves_a_stream_cancels_the_request(
    make_settings, start_worker, start_bridge, clients
):
    settings = make_settings(gpu_count=1, mock_latency_ms=10_000)
    await start_worker(settings)
    http = await start_bridge(settings)
    client = clients(http)
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    seen = [await stream.__anext__() for _ in range(3)]  # the role, then words
    request_id = seen[0].id.removeprefix("chatcmpl-")
    await stream.close()

    async def answered() -> bool:
        found = await http.get(f"/api/v1/inference/{request_id}")
        return found.json().get("status") == "cancelled"

    await wait_for(answered, "the request to be cancelled", timeout=5)

    async def free() -> bool:  # the slot table says so a little later (writes linger)
        return (await http.get("/api/v1/status")).json()["gpus_busy"] == 0

    await wait_for(free, "the slot to be free", timeout=2)  # long before its 10 s
    records = await read_topic(settings, Topics.from_settings(settings).chunks)
    chunks = [ChunkRecord.model_validate_json(r.value) for r in records]
    assert chunks[-1].done and chunks[-1].status == "cancelled"


async def test_a_stream_whose_worker_dies_ends_with_an_error_event(
    make_settings, start_bridge, tmp_path, clients
):
    """The leader streams, and is SIGKILLed mid-stream: the standby takes over and runs the
    request again (another attempt); the client gets an error event, never a cut-short
    stream that looks whole."""
    settings = make_settings(
        gpu_count=1, mock_latency_ms=8000, session_timeout_ms=3000, lease_ttl_seconds=300
    )
    workers = Workers(settings, tmp_path)
    try:
        for worker_id in ("w1", "w2"):
            await workers.start(worker_id)
        http = await start_bridge(settings)
        await wait_for(lambda: ready(http), "a worker to serve")
        client = clients(http)
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        words = []
        with pytest.raises(openai.APIError) as broken:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    words.append(chunk.choices[0].delta.content)
                    if len(words) == 2:
                        records = await read_topic(settings, Topics.from_settings(settings).chunks)
                        running = ChunkRecord.model_validate_json(records[-1].value).worker_id
                        workers.processes[running].kill()
        assert "stopped in the middle of its stream" in broken.value.message, workers.logs()
        assert 2 <= len(words) < len(mock_output("m", prompt_of(MESSAGES)).split())
    finally:
        await workers.close()
