"""The thinnest Kafka pipeline with the allocator's hops: the benchmark's second reference.

An HTTP handler (FastAPI on uvicorn and uvloop, as the bridge) produces each body to a
request topic and awaits a future; a consumer answers each record at once onto the
responses topic; a reader resolves the future with the response's bytes. No admission
check, no validation beyond JSON, no slot table, no priority, no offsets, no deadline; the
same aiokafka client settings (``clients.make_producer`` / ``make_consumer``). Whatever the
real stack costs beyond this is the allocator's own.

Run as processes, like the stack it is compared with::

    python -m inference_allocator.bench.thin worker
    python -m inference_allocator.bench.thin bridge --port 8001
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator

import uvicorn
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from fastapi import FastAPI, Request, Response

from ..clients import make_consumer, make_producer, started, topic_partitions
from ..config import Settings
from ..schemas import Priority
from ..topics import Topics, ensure_topics


async def _assigned_from_end(settings: Settings, topics: list[str]) -> AIOKafkaConsumer:
    consumer = await make_consumer(settings)
    await consumer.start()
    found = await topic_partitions(consumer, topics, settings)
    tps = [tp for topic in topics for tp in found[topic]]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    return consumer


async def run_worker(settings: Settings) -> None:
    """Answer every request record at once: no slots, no priority, no commits."""
    topics = Topics.from_settings(settings)
    await ensure_topics(settings)
    producer = await make_producer(settings)
    async with started(producer, settings):
        consumer = await _assigned_from_end(settings, list(topics.requests))
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=1000)
                for records in batch.values():
                    for record in records:
                        request = json.loads(record.value)
                        answer = {
                            "request_id": request["request_id"],
                            "model_id": request["model_id"],
                            "status": "ok",
                            "output": "",
                            "inference_time_ms": 0.0,
                        }
                        await producer.send(
                            topics.responses, json.dumps(answer).encode(), key=record.key
                        )
        finally:
            await consumer.stop()


class ThinBridge:
    """Produce, await the future, return the response's bytes as they came."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.topics = Topics.from_settings(settings)
        self.waiting: dict[bytes, asyncio.Future[bytes]] = {}
        self.producer: AIOKafkaProducer
        self.consumer: AIOKafkaConsumer
        self._reader: asyncio.Task[None]

    async def start(self) -> None:
        await ensure_topics(self.settings)
        self.producer = await make_producer(self.settings)
        await self.producer.start()
        self.consumer = await _assigned_from_end(self.settings, [self.topics.responses])
        self._reader = asyncio.create_task(self._read())

    async def stop(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        await self.consumer.stop()
        await self.producer.stop()

    async def _read(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=1000)
            for records in batch.values():
                for record in records:
                    future = self.waiting.pop(record.key, None)
                    if future is not None and not future.done():
                        future.set_result(record.value)

    async def infer(self, body: bytes) -> bytes:
        request = json.loads(body)
        request_id = uuid.uuid4().hex
        request["request_id"] = request_id
        key = request_id.encode()
        future = asyncio.get_running_loop().create_future()
        self.waiting[key] = future
        try:
            await self.producer.send_and_wait(
                self.topics.request(Priority(request.get("priority", "medium"))),
                json.dumps(request).encode(),
                key=key,
            )
            return await future
        finally:
            self.waiting.pop(key, None)


def create_thin_app(bridge: ThinBridge) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await bridge.start()
        try:
            yield
        finally:
            await bridge.stop()

    app = FastAPI(lifespan=lifespan)

    @app.post("/api/v1/inference")
    async def infer(request: Request) -> Response:
        return Response(await bridge.infer(await request.body()), media_type="application/json")

    return app


def main(argv: list[str] | None = None) -> None:
    from ..eventloop import run_loop

    parser = argparse.ArgumentParser(prog="python -m inference_allocator.bench.thin")
    parser.add_argument("role", choices=["worker", "bridge"])
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    settings = Settings()
    if args.role == "worker":
        with contextlib.suppress(KeyboardInterrupt):
            run_loop(run_worker(settings))
        return
    config = uvicorn.Config(
        create_thin_app(ThinBridge(settings)),
        host="127.0.0.1",
        port=args.port,
        log_level="warning",
        access_log=False,
    )
    run_loop(uvicorn.Server(config).serve())


if __name__ == "__main__":
    main()
