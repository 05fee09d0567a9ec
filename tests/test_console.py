"""Requests from any Kafka client: hand-written JSON, missing ids, malformed records."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from aiokafka import AIOKafkaProducer

from inference_allocator.fleet.backends import mock_output
from inference_allocator.schemas import DeadLetter, Priority
from inference_allocator.topics import Topics

from .helpers import read_responses, read_topic

pytestmark = pytest.mark.broker


async def produce(producer: AIOKafkaProducer, topic: str, value: bytes, key: bytes | None = None):
    """Like kafka-console-producer: a value, optionally a key, nothing else."""
    return await producer.send_and_wait(topic, value, key=key)


async def test_a_console_record_without_request_id_or_key_is_answered(
    settings, start_worker, kafka_producer
):
    await start_worker(settings)
    topic = Topics.from_settings(settings).request(Priority.HIGH)
    value = json.dumps({"model_id": "llama-3-70b", "prompt": "from a console"}).encode()
    sent = await produce(kafka_producer, topic, value)
    [response] = await read_responses(settings, 1)
    # No id given: it is derived from where the record sits, so a redelivery keeps it.
    assert response.request_id == f"{topic}-{sent.partition}-{sent.offset}"
    assert response.status == "ok" and response.priority == Priority.HIGH
    assert response.output == mock_output("llama-3-70b", "from a console")


async def test_the_response_is_keyed_by_the_records_key(settings, start_worker, kafka_producer):
    await start_worker(settings)
    topics = Topics.from_settings(settings)
    value = b'{"model_id": "m", "prompt": "keyed"}'
    await produce(kafka_producer, topics.request(Priority.LOW), value, key=b"my-id-1")
    [record] = await read_topic(settings, topics.responses, 1)
    assert record.key == b"my-id-1"
    assert json.loads(record.value)["request_id"] == "my-id-1"


async def test_malformed_records_go_to_the_dlq_and_never_stop_the_worker(
    settings, start_worker, kafka_producer
):
    await start_worker(settings)
    topics = Topics.from_settings(settings)
    high = topics.request(Priority.HIGH)
    await produce(kafka_producer, high, b"this is not json", key=b"bad-1")
    await produce(kafka_producer, high, b'{"prompt": "no model"}')
    await produce(kafka_producer, high, b'{"model_id": "m", "prompt": "still works"}', b"ok-1")

    letters = [
        DeadLetter.model_validate_json(r.value) for r in await read_topic(settings, topics.dlq, 2)
    ]
    by_key = {letter.key: letter for letter in letters}
    assert by_key["bad-1"].reason.startswith("not valid JSON")
    assert by_key["bad-1"].value == "this is not json" and by_key["bad-1"].topic == high
    assert "model_id" in by_key[None].reason

    responses = {r.request_id: r for r in await read_responses(settings, 2)}
    assert responses["bad-1"].status == "error"  # its sender named an id: tell them
    assert "not valid JSON" in responses["bad-1"].error
    assert responses["ok-1"].status == "ok"


def _librdkafka_round_trip(bootstrap: str, topics: Topics, value: bytes) -> list[dict]:
    """What kcat does (it is built on librdkafka): produce a value, then read the answers."""
    from confluent_kafka import Consumer, Producer, TopicPartition

    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topics.request(Priority.LOW), value=value)
    assert producer.flush(20) == 0, "librdkafka could not deliver the request"
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "console-reader", "enable.auto.commit": False}
    )
    try:
        partitions = consumer.list_topics(topics.responses, timeout=10).topics[topics.responses]
        consumer.assign(
            [TopicPartition(topics.responses, p, 0) for p in partitions.partitions]  # beginning
        )
        answers: list[dict] = []
        deadline = time.monotonic() + 30
        while not answers and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                answers.append(json.loads(message.value()))
        return answers
    finally:
        consumer.close()


async def test_a_librdkafka_client_like_kcat_round_trips(settings, start_worker):
    await start_worker(settings)
    value = b'{"model_id": "llama-3-70b", "prompt": "from librdkafka"}'
    answers = await asyncio.to_thread(
        _librdkafka_round_trip, settings.bootstrap_servers, Topics.from_settings(settings), value
    )
    assert len(answers) == 1
    assert answers[0]["status"] == "ok" and answers[0]["priority"] == "low"
    assert answers[0]["output"] == mock_output("llama-3-70b", "from librdkafka")


async def test_apache_kafkas_console_tools_round_trip(settings, start_worker):
    """The docs' recipe with Apache Kafka's own console producer and consumer (the classes
    kafka-console-producer.sh and kafka-console-consumer.sh run), from the jars the project
    fetches: a keyed request in, its answer out (the consumer joins a group with the
    allocator's 6 s session timeout: with the tool's 45 s the embedded broker holds the join
    ~22 s)."""
    from inference_allocator.brokers.apache_kafka import KafkaDistribution, java_binary
    from inference_allocator.errors import BrokerToolMissing

    from .conftest import missing_tool

    try:
        java, jars = java_binary(), KafkaDistribution().ensure().classpath
    except BrokerToolMissing as exc:
        missing_tool(str(exc))
    await start_worker(settings)
    topics = Topics.from_settings(settings)
    server = settings.bootstrap_servers
    producer = await asyncio.create_subprocess_exec(
        java, "-cp", jars, "org.apache.kafka.tools.ConsoleProducer", "--bootstrap-server",
        server, "--topic", topics.request(Priority.HIGH), "--property", "parse.key=true",
        "--property", "key.separator=:",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    line = b'job-console:{"model_id": "m", "prompt": "Hello from the console"}\n'
    produced, _ = await asyncio.wait_for(producer.communicate(line), 60)
    assert producer.returncode == 0, produced.decode(errors="replace")
    consumer = await asyncio.create_subprocess_exec(
        java, "-cp", jars, "org.apache.kafka.tools.consumer.ConsoleConsumer",
        "--bootstrap-server", server, "--topic", topics.responses, "--from-beginning",
        "--property", "print.key=true", "--consumer-property", "session.timeout.ms=6000",
        "--max-messages", "1", "--timeout-ms", "60000",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(consumer.communicate(), 90)
    key, _, value = out.decode().strip().partition("\t")
    assert key == "job-console", (out, err.decode(errors="replace")[-2000:])
    answer = json.loads(value)
    assert answer["status"] == "ok" and answer["output"] == mock_output(
        "m", "Hello from the console"
    )
