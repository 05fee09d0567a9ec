"""The ``openai`` backend against real HTTP servers on free ports that answer the way servers
do when things go wrong: an error status, an error event mid-stream, a kept-alive
connection closed, no answer at all, a client that leaves. (``test_model_server.py`` runs
the same backend against llama.cpp's llama-server.)"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from inference_allocator.fleet.backends import Completion, UpstreamError, UpstreamUnreachable
from inference_allocator.fleet.openai_backend import OpenAIBackend
from inference_allocator.fleet.spec import PoolSpec
from inference_allocator.ports import free_port
from inference_allocator.schemas import Priority, RequestRecord

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """``await serve(routes)``: an aiohttp server of those routes on a free port; its base
    URL."""
    runners: list[web.AppRunner] = []

    async def start(routes: dict[str, Handler]) -> str:
        app = web.Application()
        for path, handler in routes.items():
            app.router.add_route("*", path, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}/v1"

    yield start
    for runner in runners:
        await runner.cleanup()


def _backend(base_url: str, **spec: Any) -> OpenAIBackend:
    return OpenAIBackend(
        PoolSpec(name="p", backend="openai", base_url=base_url, models=["m"], slots=2, **spec)
    )


def _chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    event = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(event)}\n\n".encode()


async def _stream(request: web.Request, events: list[bytes]) -> web.StreamResponse:
    reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await reply.prepare(request)
    for event in events:
        await reply.write(event)
    await reply.write_eof()
    return reply


async def test_a_whole_answer_carries_text_reason_and_usage_and_sends_what_it_was_given(
    serve, monkeypatch
):
    seen: list[tuple[dict[str, Any], str | None]] = []

    async def chat(request: web.Request) -> web.Response:
        seen.append((await request.json(), request.headers.get("Authorization")))
        usage = {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9,
                 "prompt_tokens_details": {"cached_tokens": 4}}  # fmt: skip
        return web.json_response(
            {
                "choices": [{"message": {"content": "Blue."}, "finish_reason": "stop"}],
                "usage": usage,
            }  # fmt: skip
        )

    monkeypatch.setenv("POOL_KEY", "sk-test")
    base = await serve({"/v1/chat/completions": chat})
    backend = _backend(base, api_key_env="POOL_KEY", engine_priority=True)
    try:
        record = RequestRecord(
            model_id="m", prompt="Name a colour.", priority=Priority.LOW,
            params={"max_tokens": 8, "top_k": 5, "stream": True},
        )  # fmt: skip
        reply = await backend.run(record, 0, None)
    finally:
        await backend.close()
    assert reply == Completion(
        "Blue.", "stop",
        {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9, "cached_tokens": 4},
    )  # fmt: skip
    [(body, auth)] = seen
    assert auth == "Bearer sk-test"
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "Name a colour."}],
        "max_tokens": 8,
        "top_k": 5,  # a parameter the API does not name passes through as it is
        "priority": 2,  # the engine's own priority: low
    }  # a record's own "stream" is not the call's: this one is answered whole


async def test_an_error_status_answers_with_the_servers_message(serve):
    async def refuse(request: web.Request) -> web.Response:
        return web.json_response(
            {"error": {"message": "context length exceeded", "type": "invalid_request_error"}},
            status=400,
        )

    async def broken(request: web.Request) -> web.Response:
        return web.Response(text="upstream exploded", status=502)

    base = await serve({"/v1/chat/completions": refuse, "/v1/completions": broken})
    backend = _backend(base)
    try:
        with pytest.raises(UpstreamError, match="answered 400: context length exceeded$"):
            await backend.infer("m", "hi", 0)
        legacy = RequestRecord(model_id="m", prompt="hi", api="completions")
        with pytest.raises(UpstreamError, match="answered 502: upstream exploded$") as failed:
            await backend.run(legacy, 0, None)
        assert not isinstance(failed.value, UpstreamUnreachable)  # the pool stays up
    finally:
        await backend.close()


async def test_a_stream_gives_its_text_in_order_and_fails_on_an_error_event(serve):
    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
        usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        events = [_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hello"}),
                  b": a comment line\n\n", _chunk({"content": " world"}, "stop"),
                  f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n".encode(),
                  b"data: [DONE]\n\n"]  # fmt: skip
        if body["messages"][0]["content"] == "fail":
            events[3:] = [b'data: {"error": {"message": "the engine died"}}\n\n']
        return await _stream(request, events)

    base = await serve({"/v1/chat/completions": chat})
    backend = _backend(base)
    try:
        given: list[str] = []

        async def sink(text: str) -> None:
            given.append(text)

        reply = await backend.run(RequestRecord(model_id="m", prompt="hi"), 0, sink)
        assert given == ["Hello", " world"]
        assert reply == Completion(
            "Hello world", "stop", {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
        )

        given.clear()
        with pytest.raises(UpstreamError, match="failed mid-stream: the engine died$"):
            await backend.run(RequestRecord(model_id="m", prompt="fail"), 0, sink)
        assert given == ["Hello"]  # what went out stays out
    finally:
        await backend.close()


async def test_a_kept_alive_connection_the_server_closed_is_tried_again():
    """Each connection is answered once and kept alive; a second request on it finds it
    closed (a server whose keep-alive ran out as the request went): the request is sent
    again on a fresh connection and answered."""
    connections = 0

    async def once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        text = json.dumps(
            {"choices": [{"message": {"content": f"on {connections}"}, "finish_reason": "stop"}]}
        ).encode()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(text), text))  # fmt: skip
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.readuntil(b"\r\n\r\n")  # the next request: closed unanswered
        writer.close()

    port = free_port()
    server = await asyncio.start_server(once, "127.0.0.1", port)
    backend = _backend(f"http://127.0.0.1:{port}/v1")
    try:
        texts = [(await backend.infer("m", "hi", 0)).text for _ in range(3)]
    finally:
        await backend.close()
        server.close()
        await server.wait_closed()
    assert texts == ["on 1", "on 2", "on 3"]
    assert connections == 3


async def test_a_server_that_does_not_answer_or_is_gone_is_unreachable(serve):
    async def silent(request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response()

    base = await serve({"/v1/chat/completions": silent, "/v1/models": silent})
    backend = _backend(base, timeout_seconds=0.5)
    gone = _backend(f"http://127.0.0.1:{free_port()}/v1")
    try:
        with pytest.raises(UpstreamUnreachable, match="did not answer within 0.5 s$"):
            await backend.infer("m", "hi", 0)
        assert not await backend.healthy()
        with pytest.raises(UpstreamUnreachable, match="did not answer: Cannot connect to host"):
            await gone.infer("m", "hi", 0)
        assert not await gone.healthy()
    finally:
        await backend.close()
        await gone.close()


async def test_cancelling_a_run_closes_its_connection(serve):
    """A preempted or cancelled run: the server sees its client leave at once, and stops
    generating (as llama-server and vLLM do at their next token)."""
    left = asyncio.Event()
    started = asyncio.Event()

    async def chat(request: web.Request) -> web.StreamResponse:
        reply = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await reply.prepare(request)
        try:
            for i in range(1000):
                await reply.write(_chunk({"content": f"w{i} "}))
                started.set()
                await asyncio.sleep(0.02)
        except (ConnectionResetError, asyncio.CancelledError):
            left.set()
            raise
        return reply

    base = await serve({"/v1/chat/completions": chat})
    backend = _backend(base)

    async def sink(text: str) -> None:
        pass

    try:
        run = asyncio.create_task(backend.run(RequestRecord(model_id="m", prompt="hi"), 0, sink))
        await asyncio.wait_for(started.wait(), 5)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        await asyncio.wait_for(left.wait(), 2)
    finally:
        await backend.close()


async def test_health_and_the_servers_capacity(serve):
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "m"}]})

    async def props(request: web.Request) -> web.Response:
        return web.json_response({"total_slots": 3})

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(text="vllm:num_requests_running 2\nvllm:num_requests_waiting 5\n")

    with_props = _backend(await serve({"/v1/models": models, "/props": props}))
    with_metrics = _backend(await serve({"/v1/models": models, "/metrics": metrics}))
    try:
        assert await with_props.healthy()
        assert (await with_props.server_report()).total_slots == 3
        report = await with_metrics.server_report()
        assert (report.running, report.waiting) == (2, 5)
    finally:
        await with_props.close()
        await with_metrics.close()
