"""Records produced in batches (``producers.batches``), on the real broker: what one turn
adds goes out together, a replaceable state is left out when a later one of its key
follows, and an answer too large for the responses topic fails alone."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import MessageSizeTooLargeError

from inference_allocator.clients import connection_options, make_producer, started
from inference_allocator.producers.batches import RecordBatches
from inference_allocator.producers.client import InferenceClient
from inference_allocator.topics import Topics, ensure_topics

from .helpers import read_topic

pytestmark = pytest.mark.broker


async def test_one_turns_records_arrive_and_replaced_states_are_left_out(settings):
    await ensure_topics(settings)
    topics = Topics.from_settings(settings)
    async with contextlib.AsyncExitStack() as stack:
        producer = await stack.enter_async_context(started(await make_producer(settings), settings))
        writes = RecordBatches("test-writes", linger_s=0.02)
        writes.attach(producer)
        stack.push_async_callback(writes.close)
        added = [
            # slot a: free, then leased twice, then free: the first free is replaced
            (b"a", b"free a", True),
            (b"a", b"lease a 1", False),
            (b"a", b"lease a 2", False),
            (b"a", b"free a again", True),
            (b"b", b"free b", True),  # nothing follows it: written
            (b"c", b"down c", True),
            (b"c", b"free c", True),  # the down state, followed by this one, is left out
        ]
        acks = [
            writes.acked(topics.gpu_slots, key, value, replaceable=replaceable)
            for key, value, replaceable in added
        ]
        await asyncio.wait_for(asyncio.gather(*acks), 10)
        # answers over every partition of the responses topic, keyed, in one turn
        keys = [f"r{i}".encode() for i in range(40)]
        acks = [writes.acked(topics.responses, k, b"answer " + k) for k in keys]
        await asyncio.wait_for(asyncio.gather(*acks), 10)
    slots = await read_topic(settings, topics.gpu_slots)
    assert [(r.key, r.value) for r in slots] == [
        (b"a", b"lease a 1"),
        (b"a", b"lease a 2"),
        (b"a", b"free a again"),
        (b"b", b"free b"),
        (b"c", b"free c"),
    ]
    answers = await read_topic(settings, topics.responses)
    assert sorted((r.key, r.value) for r in answers) == sorted((k, b"answer " + k) for k in keys)
    assert len({r.partition for r in answers}) == settings.response_partitions


async def test_callbacks_follow_their_records_and_closing_cancels_what_did_not_go_out(settings):
    await ensure_topics(settings)
    topics = Topics.from_settings(settings)
    outcomes: dict[str, BaseException | None] = {}

    def then(name: str):  # type: ignore[no-untyped-def]
        return lambda error: outcomes.setdefault(name, error)

    async with started(await make_producer(settings), settings) as producer:
        writes = RecordBatches("test-writes", linger_s=0.02)
        writes.attach(producer)
        writes.add(topics.gpu_slots, b"a", b"free a", replaceable=True, then=then("replaced"))
        writes.add(topics.gpu_slots, b"a", b"lease a", then=then("lease"))
        writes.add(topics.responses, b"r1", b"answer 1", then=then("answer"))
        writes.add(topics.responses, b"r2", b"alone", alone=True, then=then("alone"))
        writes.add(topics.responses, b"r3", b"nobody waits")  # no callback: no future either
        for _ in range(500):
            if len(outcomes) == 4:
                break
            await asyncio.sleep(0.01)
        # the replaced state is settled with the one that replaced it
        assert outcomes == {"replaced": None, "lease": None, "answer": None, "alone": None}
        writes.add(topics.responses, b"r4", b"never sent", then=then("closed"))
        await writes.close()  # within the linger: it never went out
    assert isinstance(outcomes["closed"], asyncio.CancelledError)
    answers = await read_topic(settings, topics.responses)
    assert sorted(r.value for r in answers) == [b"alone", b"answer 1", b"nobody waits"]


async def test_a_record_larger_than_a_request_may_be_is_refused_at_once(settings):
    await ensure_topics(settings)
    async with started(await make_producer(settings), settings) as producer:
        writes = RecordBatches("test-writes", max_request_bytes=10_000)
        writes.attach(producer)
        with pytest.raises(MessageSizeTooLargeError, match="more than a produce request"):
            writes.add(Topics.from_settings(settings).responses, b"k", b"x" * 20_000)
        await writes.close()


class _Sized:
    """Answers "big" with more text than the responses topic takes, others with a line,
    all after the same short delay (so that their answers go out together)."""

    async def infer(self, model_id: str, prompt: str, gpu_id: int) -> str:
        await asyncio.sleep(0.2)
        return "x" * 6000 if prompt == "big" else f"small answer to {prompt}"


@pytest.mark.apache_kafka  # Tansu does not enforce a topic's max.message.bytes
async def test_an_answer_too_large_for_the_topic_fails_alone(make_settings, start_worker):
    settings = make_settings(gpu_count=8)
    topics = Topics.from_settings(settings)
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:  # the responses topic takes 4 KB: one answer here is larger, and 8 together
        await admin.create_topics(
            [
                NewTopic(
                    topics.responses,
                    settings.response_partitions,
                    1,
                    topic_configs={"max.message.bytes": "4096"},
                )
            ]
        )
    finally:
        await admin.close()
    await start_worker(settings, backend=_Sized())
    prompts = ["big"] + [f"p{i}" for i in range(15)]
    async with InferenceClient(settings) as client:
        answers = await asyncio.gather(*(client.infer("m", p, "high") for p in prompts))
    by_prompt = dict(zip(prompts, answers, strict=True))
    big = by_prompt.pop("big")
    assert big.status == "error" and "larger than the broker accepts" in (big.error or "")
    assert {a.status for a in by_prompt.values()} == {"ok"}
    assert all(a.output == f"small answer to {p}" for p, a in by_prompt.items())


@pytest.mark.apache_kafka  # Tansu does not enforce a topic's max.message.bytes
async def test_an_answer_too_large_after_others_leaves_its_partition_working(
    make_settings, start_worker
):
    """A batch the broker refuses as too large would spend its sequence numbers, and the
    idempotent producer's later answers to that partition would be refused as out of
    order, for good: the worker cuts its batches to the topic's limit instead."""
    settings = make_settings(gpu_count=2, response_partitions=1)
    topics = Topics.from_settings(settings)
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        await admin.create_topics(
            [NewTopic(topics.responses, 1, 1, topic_configs={"max.message.bytes": "4096"})]
        )
    finally:
        await admin.close()
    await start_worker(settings, backend=_Sized())
    async with InferenceClient(settings) as client:
        before = await client.infer("m", "before", "high", timeout_seconds=20)
        big = await client.infer("m", "big", "high", timeout_seconds=20)
        after = await client.infer("m", "after", "high", timeout_seconds=20)
    assert (before.status, before.output) == ("ok", "small answer to before")
    assert big.status == "error" and "larger than the broker accepts" in (big.error or "")
    assert (after.status, after.output) == ("ok", "small answer to after")
