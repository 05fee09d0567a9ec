"""Kafka security settings reach every client: a worker, a bridge, the Python client and the
statistics agent (faust) on Apache Kafka through a SASL listener (PLAIN and SCRAM-SHA-256),
and a wrong password is refused with one line that does not show it."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator

import pytest

from inference_allocator.brokers import ApacheKafkaBroker, free_port
from inference_allocator.config import Settings
from inference_allocator.producers.client import InferenceClient
from inference_allocator.topics import Topics

from .conftest import apache_kafka_or_skip
from .helpers import deployment_env, read_topic, run_cli, stats_agent, wait_for

pytestmark = [pytest.mark.apache_kafka, pytest.mark.broker, pytest.mark.slow]

USERS = {"allocator": "allocator-secret-4f1c", "other": "other-secret-93ab"}


@pytest.fixture(scope="module")
def sasl_kafka(tmp_path_factory) -> Iterator[ApacheKafkaBroker]:
    data = tmp_path_factory.mktemp("sasl-kafka")
    with apache_kafka_or_skip(data, sasl_users=USERS, sasl_port=free_port()) as kafka:
        yield kafka


def sasl_settings(kafka: ApacheKafkaBroker, mechanism: str, password: str, **extra) -> Settings:
    return Settings(
        kafka_bootstrap_servers=f"127.0.0.1:{kafka.sasl_port}",
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism=mechanism,
        kafka_sasl_username="allocator",
        kafka_sasl_password=password,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}",
        mock_latency_ms=5,
        **extra,
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
async def test_worker_bridge_and_client_work_over_sasl(
    mechanism, sasl_kafka, start_worker, start_bridge
):
    settings = sasl_settings(sasl_kafka, mechanism, USERS["allocator"])
    worker = await start_worker(settings)  # its producers, consumer, admin client and probe
    bridge = await start_bridge(settings)  # its producer and both readers
    response = await bridge.post(
        "/api/v1/inference", json={"model_id": "m", "prompt": "over sasl", "priority": "high"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["worker_id"] == worker.worker_id
    status = (await bridge.get("/api/v1/status")).json()
    assert status["broker_reachable"] and status["workers"]


async def test_a_wrong_password_is_refused_in_one_line(sasl_kafka):
    settings = sasl_settings(sasl_kafka, "PLAIN", "not-the-password")
    env = deployment_env(settings)
    assert env["INFERENCE_KAFKA_SASL_PASSWORD"] == "not-the-password"
    result = await asyncio.to_thread(run_cli, "worker", env=env)
    assert result.returncode == 1, result.stderr
    [line] = [x for x in result.stderr.splitlines() if x.startswith("error: ")]
    assert line.startswith(
        f"error: the Kafka broker at {settings.bootstrap_servers} refused the SASL PLAIN "
        "credentials of user 'allocator'"
    ), line
    assert "not-the-password" not in result.stderr and "Traceback" not in result.stderr


async def test_the_statistics_agent_counts_over_sasl(sasl_kafka, start_worker, tmp_path):
    settings = sasl_settings(sasl_kafka, "SCRAM-SHA-256", USERS["allocator"])
    await start_worker(settings)
    log_path = tmp_path / "stats.log"
    async with stats_agent(settings, log_path):  # with the settings' SASL credentials
        async with InferenceClient(settings) as client:
            answers = await asyncio.gather(
                *[client.infer("m", "count me", "high") for _ in range(3)]
            )
        assert all(a.status == "ok" for a in answers)
        # Read back through the broker's plaintext listener.
        plain = Settings(
            kafka_bootstrap_servers=sasl_kafka.bootstrap_servers, topic_prefix=settings.topic_prefix
        )
        topic = Topics.from_settings(settings).stats

        async def published() -> bool:
            windows = [json.loads(r.value) for r in await read_topic(plain, topic)]
            return sum(w["answers"] for w in windows if w["window"] == "2s") == 3

        await wait_for(published, "the agent's 2 s window to be published", timeout=60)
        assert "Traceback" not in log_path.read_text()
