"""The mock backend, backend loading and settings validation."""

import time

import pytest
from pydantic import ValidationError

from inference_allocator.clients import connection_options, idempotence
from inference_allocator.config import Settings
from inference_allocator.errors import ConfigurationError
from inference_allocator.fleet.backends import MockBackend, load_backend, mock_output

from ..helpers import run_cli


async def test_mock_output_is_deterministic_and_depends_on_model_and_prompt():
    backend = MockBackend(latency_ms=0)
    a = await backend.infer("llama", "hello", 0)
    assert a == await backend.infer("llama", "hello", 3) == mock_output("llama", "hello")
    assert a != await backend.infer("llama", "bye", 0)
    assert a != await backend.infer("mistral", "hello", 0)
    assert "llama" in a and "hello" in a


async def test_mock_takes_at_least_its_latency():
    backend = MockBackend(latency_ms=30)
    started = time.perf_counter()
    await backend.infer("m", "p", 0)
    assert time.perf_counter() - started >= 0.029


class EchoBackend:
    def __init__(self, settings: Settings):
        self.settings = settings

    async def infer(self, model_id: str, prompt: str, gpu_id: int) -> str:
        return prompt


def test_backends_load_by_import_path():
    settings = Settings(inference_backend=f"{__name__}:EchoBackend")
    assert isinstance(load_backend(settings), EchoBackend)
    assert isinstance(load_backend(Settings()), MockBackend)
    with pytest.raises(ConfigurationError, match="cannot load"):
        load_backend(Settings(inference_backend="nowhere.module:Nothing"))
    with pytest.raises(ConfigurationError, match="package.module:Class"):
        load_backend(Settings(inference_backend="nonsense"))


def test_settings_defaults_match_the_prototype(monkeypatch):
    for name in ("GPU_COUNT", "QUEUE_MAX_SIZE", "REQUEST_TIMEOUT_SECONDS"):
        monkeypatch.delenv(f"INFERENCE_{name}", raising=False)
    settings = Settings()
    assert (settings.gpu_count, settings.queue_max_size) == (4, 100)
    assert settings.request_timeout_seconds == 30
    assert settings.scheduling_policy == "strict"


def test_settings_read_the_environment(monkeypatch):
    monkeypatch.setenv("INFERENCE_GPU_COUNT", "8")
    monkeypatch.setenv("INFERENCE_KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    settings = Settings()
    assert settings.gpu_count == 8
    assert settings.bootstrap_servers == "kafka:9092"
    assert not settings.embedded and settings.kafka_enable_idempotence is None  # auto


async def test_embedded_broker_means_no_idempotence(monkeypatch):
    monkeypatch.delenv("INFERENCE_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    settings = Settings(broker_port=19999)
    assert settings.bootstrap_servers == "127.0.0.1:19999"
    assert settings.embedded and not await idempotence(settings)  # no broker asked


def test_bad_settings_are_rejected(monkeypatch):
    monkeypatch.setenv("INFERENCE_GPU_COUNT", "0")
    with pytest.raises(ValidationError):
        Settings()
    monkeypatch.delenv("INFERENCE_GPU_COUNT")
    with pytest.raises(ValidationError):
        Settings(scheduling_policy="random")


def test_incomplete_sasl_settings_are_named_in_one_line():
    env = {
        "INFERENCE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "INFERENCE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    }
    result = run_cli("status", env=env)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: invalid setting: INFERENCE_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs "
        "INFERENCE_KAFKA_SASL_MECHANISM, INFERENCE_KAFKA_SASL_USERNAME and "
        "INFERENCE_KAFKA_SASL_PASSWORD"
    )


def test_security_settings_reach_the_client_options():
    settings = Settings(
        kafka_bootstrap_servers="kafka:9093",
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="svc",
        kafka_sasl_password="pw-123",
        kafka_ssl_check_hostname=False,
    )
    options = connection_options(settings)
    assert options["security_protocol"] == "SASL_SSL"
    assert (options["sasl_mechanism"], options["sasl_plain_username"]) == ("SCRAM-SHA-512", "svc")
    assert options["sasl_plain_password"] == "pw-123"
    assert options["ssl_context"].check_hostname is False
    assert "pw-123" not in repr(settings)  # secrets stay out of logs and tracebacks
    plain = connection_options(Settings(kafka_bootstrap_servers="kafka:9092"))
    assert plain == {"bootstrap_servers": "kafka:9092", "security_protocol": "PLAINTEXT"}


def test_exactly_once_needs_leader_mode():
    with pytest.raises(ValidationError, match="INFERENCE_EXACTLY_ONCE needs INFERENCE_WORKER_MODE"):
        Settings(exactly_once=True, worker_mode="shared")
    assert Settings(exactly_once=True).exactly_once
