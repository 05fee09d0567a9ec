"""An OpenAI-compatible server that answers at once, to measure what a path in front of a
server costs (``bench --costs``): the same server is called directly and through the
allocator, and the difference is the path's.

It is plain asyncio (no framework), so the server's own cost is small and the same on both
paths: ``GET /v1/models``; ``POST /v1/chat/completions`` with ``max_tokens`` words (default
8), as one JSON body or, with ``"stream": true``, as server-sent events in chunked
encoding, each word its own event, written as fast as the socket takes them.

    python -m inference_allocator.bench.upstream --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import time
from typing import Any

MODEL = "fast"


def _completion(body: dict[str, Any], words: list[str]) -> dict[str, Any]:
    prompt = sum(len(str(m.get("content", "")).split()) for m in body.get("messages") or [])
    return {
        "id": "chatcmpl-upstream",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model", MODEL),
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": " ".join(words)},
                "finish_reason": "length",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": len(words),
            "total_tokens": prompt + len(words),
        },
    }


def _chunk(model: str, delta: dict[str, str], finish: str | None = None) -> bytes:
    event = {
        "id": "chatcmpl-upstream",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    data = f"data: {json.dumps(event)}\n\n".encode()
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _head(status: str, content_type: str, length: int | None) -> bytes:
    size = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{size}\r\n\r\n".encode()


async def _answer(method: str, path: str, payload: bytes, writer: asyncio.StreamWriter) -> None:
    if method == "GET" and path.rstrip("/") == "/v1/models":
        data = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]})
        writer.write(_head("200 OK", "application/json", len(data)) + data.encode())
        return
    if method != "POST" or path.rstrip("/") != "/v1/chat/completions":
        data = b'{"error": {"message": "not found"}}'
        writer.write(_head("404 Not Found", "application/json", len(data)) + data)
        return
    body = json.loads(payload or b"{}")
    words = [f"w{i}" for i in range(int(body.get("max_tokens") or 8))]
    if not body.get("stream"):
        data = json.dumps(_completion(body, words)).encode()
        writer.write(_head("200 OK", "application/json", len(data)) + data)
        return
    model = body.get("model", MODEL)
    writer.write(_head("200 OK", "text/event-stream", None))
    writer.write(_chunk(model, {"role": "assistant", "content": ""}))
    for i, word in enumerate(words):
        writer.write(_chunk(model, {"content": word if i == 0 else " " + word}))
        await writer.drain()
    writer.write(_chunk(model, {}, "length"))
    done = b"data: [DONE]\n\n"
    writer.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")


async def _serve_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            payload = await reader.readexactly(length) if length else b""
            await _answer(method, path, payload, writer)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()


async def serve(port: int) -> None:
    server = await asyncio.start_server(_serve_connection, "127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
