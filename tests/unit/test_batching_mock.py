"""The mock that batches like a real server: a KV capacity past which it queues requests
itself (FIFO), tokens for every running request each step, a cancelled request gone."""

import asyncio

from inference_allocator.fleet.batching_mock import BatchingMockBackend
from inference_allocator.fleet.capacity import ServerReport
from inference_allocator.schemas import RequestRecord


def request(name: str, tokens: int) -> RequestRecord:
    return RequestRecord(model_id="m", prompt=name, params={"max_tokens": tokens})


async def test_past_its_capacity_it_queues_first_in_first_out():
    server = BatchingMockBackend(capacity=2, token_ms=5, batch_cost=0.1)
    finished: list[str] = []

    async def run(name: str) -> None:
        completion = await server.run(request(name, 10), 0, None)
        assert completion.usage["completion_tokens"] == 10
        finished.append(name)

    tasks = [asyncio.create_task(run(f"r{i}")) for i in range(3)]
    await asyncio.sleep(0.02)
    assert await server.server_report() == ServerReport(running=2, waiting=1)
    await asyncio.gather(*tasks)
    assert finished[-1] == "r2"  # it waited in the server's queue, then ran
    assert await server.server_report() == ServerReport(running=0, waiting=0)


async def test_streamed_tokens_come_as_they_are_made_and_a_cancelled_one_leaves():
    server = BatchingMockBackend(capacity=1, token_ms=5, says_load=False)
    pieces: list[str] = []

    async def sink(text: str) -> None:
        pieces.append(text)

    streamed = asyncio.create_task(server.run(request("a", 1000), 0, sink))
    await asyncio.sleep(0.05)
    assert 0 < len(pieces) < 1000
    streamed.cancel()
    await asyncio.gather(streamed, return_exceptions=True)
    assert await server.server_report() is None  # says nothing, as a server without metrics
    # the next request runs at once: the cancelled one no longer holds the capacity
    completion = await asyncio.wait_for(server.run(request("b", 3), 0, None), 1)
    assert completion.usage["completion_tokens"] == 3
