"""Settings of every component, read from ``INFERENCE_*`` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BROKER_PORT = 9092
DEFAULT_APACHE_KAFKA_VERSION = "4.1.1"


class Settings(BaseSettings):
    """One validated configuration, passed to every factory (never read from a global)."""

    model_config = SettingsConfigDict(env_prefix="INFERENCE_", extra="ignore")

    # The prototype's contract.
    gpu_count: int = Field(4, ge=1, le=4096, description="GPU slots per worker")
    queue_max_size: int = Field(100, ge=1, description="waiting requests before 503")
    request_timeout_seconds: float = Field(
        30.0, gt=0, description="bridge wait before 504; also the request's deadline"
    )

    # Kafka.
    kafka_bootstrap_servers: str | None = Field(
        None, description="unset: the embedded broker on 127.0.0.1:broker_port"
    )
    broker_port: int = Field(
        DEFAULT_BROKER_PORT,
        ge=1,
        le=65535,
        description="port of the broker `dev` and `broker` start (their --broker-port sets it)",
    )
    kafka_enable_idempotence: bool | None = Field(
        None,
        description="unset (auto): off for the embedded broker; for any other broker on if "
        "it grants an idempotent producer, else off",
    )
    # Kafka security, passed to every Kafka client (see clients.connection_options).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="for every Kafka client of every component"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="with SASL_PLAINTEXT or SASL_SSL"
    )
    kafka_sasl_username: str | None = Field(None, description="SASL user")
    kafka_sasl_password: SecretStr | None = Field(None, description="SASL password (never logged)")
    kafka_ssl_cafile: str | None = Field(
        None, description="CA bundle (PEM) to verify the brokers; unset: the system's"
    )
    kafka_ssl_certfile: str | None = Field(None, description="client certificate (PEM), mTLS")
    kafka_ssl_keyfile: str | None = Field(None, description="its private key (PEM)")
    kafka_ssl_key_password: SecretStr | None = Field(None, description="password of the client key")
    kafka_ssl_check_hostname: bool = Field(
        True, description="verify the broker's certificate names its host"
    )
    apache_kafka_version: str = Field(
        DEFAULT_APACHE_KAFKA_VERSION,
        pattern=r"^4\.\d+\.\d+$",
        description="Apache Kafka that `broker --apache-kafka` fetches from Maven Central",
    )
    kafka_request_timeout_ms: int = Field(
        15_000,
        ge=1000,
        description="how long a producer waits for the broker to take a record before that "
        "produce fails (the worker then retries it with backoff; a bridge answers 503)",
    )
    topic_prefix: str = Field(
        "inference",
        min_length=1,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="topic names are <prefix>.requests.high and so on",
    )
    request_partitions: int = Field(3, ge=1, description="partitions per request topic")
    response_partitions: int = Field(3, ge=1, description="partitions of the responses topic")
    replication_factor: int = Field(
        1, ge=1, description="replication of the topics the allocator creates"
    )
    worker_group: str | None = Field(None, description="unset: '<topic_prefix>.workers'")
    session_timeout_ms: int = Field(
        6000,
        ge=1000,
        description="consumer group liveness (a group join waits half of it on Tansu); "
        "within the broker's group.min.session.timeout.ms",
    )
    heartbeat_interval_ms: int = Field(1000, ge=100, description="group heartbeats")
    fetch_max_wait_ms: int | None = Field(
        None,
        ge=1,
        description="fetch long-poll of the latency-critical readers; unset: 2 ms on a "
        "Tansu-like broker (the embedded one: its fetches wait this long even when data "
        "arrives, so each hop costs up to this), 500 ms on an Apache Kafka-like one (it "
        "answers a fetch as soon as data arrives; every empty poll costs it CPU); see "
        "clients.BrokerTraits. 0 hangs aiokafka",
    )

    idle_fetch_wait_ms: int | None = Field(
        None,
        ge=1,
        description="the longest fetch long-poll of a reader on a request's path (the "
        "worker's requests, the bridge's answers and chunks) once its process has read and "
        "awaited nothing for a while (its wait doubles from 1 s of quiet on); unset: 500 ms "
        "on a Tansu-like broker (the first request after a quiet period pays up to about "
        "this), 1000 ms on an Apache Kafka-like one (no latency cost there); see "
        "pacing.FetchPace",
    )

    # Worker.
    fleet_file: str | None = Field(
        None,
        description="TOML file of the fleet's pools (see fleet/spec.py); unset: gpu_count mock "
        "slots serving every model",
    )
    worker_id: str | None = Field(None, description="unset: host-pid-random")
    scheduling_policy: Literal["strict", "weighted"] = Field(
        "strict",
        description="strict: a lower level never runs while a higher one waits; weighted: "
        "weighted_shares among the non-empty levels, so low never starves",
    )
    weighted_shares: str = Field(
        "6:3:1",
        pattern=r"^[1-9][0-9]*:[1-9][0-9]*:[1-9][0-9]*$",
        description="high:medium:low shares of the weighted policy among backlogged levels",
    )
    max_wait_seconds_medium: float | None = Field(
        None, gt=0, description="a medium waiting longer goes before every other level"
    )
    max_wait_seconds_low: float | None = Field(
        None, gt=0, description="a low waiting longer goes before every other level"
    )
    affinity_window: int = Field(
        4,
        ge=0,
        description="for pools with a model-load time: how many younger requests of the same "
        "priority a warm slot may look past the oldest for one of its loaded model",
    )
    preempt_after_ms: int | None = Field(
        2000,
        ge=0,
        description="a request that has waited this long while no slot that can run it is "
        "free preempts a run of a lower level in a pool that serves it (the lowest level, "
        "then the latest started); off: never preempt",
    )
    prefix_max_imbalance: int = Field(
        8,
        ge=0,
        description="prefix routing prefers the pool holding a request's prompt prefix only "
        "while it runs at most this many requests more than the least busy pool that could "
        "take it, so one hot prefix does not pile every request on one server",
    )
    fair_share: bool = Field(
        True,
        description="within a level, serve the waiting tenant (API key, X-Tenant, OpenAI "
        "user, a record's tenant) with the fewest weighted tokens served so far, FIFO within "
        "it (the Virtual Token Counter); false: FIFO within a level, whoever's",
    )
    fair_output_weight: float = Field(
        2.0,
        gt=0,
        description="what an output token counts in fair shares, against 1 for an input "
        "token (output costs the server more)",
    )
    max_preemptions: int = Field(
        2,
        ge=0,
        description="how often one request may be preempted; then it runs to its end, so "
        "lower levels never starve",
    )
    worker_mode: Literal["leader", "shared"] = Field(
        "leader",
        description="leader: one worker of the group owns every request partition and "
        "dispatches (one priority order for the fleet), the others stand by; shared: the "
        "partitions are spread over the workers (priority holds per worker)",
    )
    exactly_once: bool = Field(
        False,
        description="answer in Kafka transactions (responses and offsets commit together) "
        "and read responses read_committed; Apache Kafka and leader mode only",
    )
    inference_backend: str = Field(
        "mock", description="'mock' or 'package.module:Class' implementing InferenceBackend"
    )
    mock_latency_ms: float = Field(50.0, ge=0, description="mock inference time")
    mock_words_per_second: float = Field(
        0.0, ge=0, description="a streamed mock answer's words per second (0: over the latency)"
    )
    worker_buffer_per_priority: int = Field(
        256, ge=1, description="fetched records held per priority before pausing its partitions"
    )
    commit_interval_ms: int = Field(
        100,
        ge=0,
        description="least time between two offset commits of a worker (each commit is a "
        "broker request; a crash redelivers what was answered but not yet committed)",
    )
    lease_ttl_seconds: float = Field(
        60.0, gt=0, description="expiry of slot records; the worker renews them every TTL/3"
    )
    dedup_window: int = Field(
        10_000,
        ge=0,
        description="recent request ids a worker remembers when nothing is retained "
        "(INFERENCE_RESULT_RETENTION_SECONDS=0)",
    )
    stats_windows_seconds: str = Field(
        "10,60",
        pattern=r"^\s*\d+(\.\d+)?\s*(,\s*\d+(\.\d+)?\s*)*$",
        description="the statistics agent's tumbling windows, in seconds, comma-separated",
    )
    worker_metrics_port: int | None = Field(
        None, ge=1, le=65535, description="a worker's Prometheus /metrics port (unset: none)"
    )
    result_retention_seconds: float = Field(
        600.0,
        ge=0,
        description="how long answers stay retrievable by id (GET /api/v1/inference/{id}) "
        "and a retry of the same request id is answered without running again; read back "
        "from the responses topic at start. 0: nothing retained",
    )

    # Bridge.
    api_keys: SecretStr | None = Field(
        None,
        description="KEY:NAME[:MAX_PRIORITY][:weight=W][:tokens_per_minute=N]"
        "[:requests_per_minute=N][:tokens_per_day=N] entries, comma-separated; unset (and no "
        "api_keys_file): the bridge is open. Workers read them too, for the weights. See "
        "apikeys.py",
    )
    api_keys_file: str | None = Field(None, description="a file of such entries, one a line")
    max_request_bytes: int = Field(512 * 1024, ge=1024, description="larger bodies get 413")
    max_file_bytes: int = Field(
        100 * 1024 * 1024,
        ge=1024,
        description="the largest file POST /v1/files takes (larger: 413), as OpenAI's batch "
        "input limit; files are kept on Kafka",
    )
    max_file_lines: int = Field(
        50_000, ge=1, description="the most lines (requests) of a batch input file"
    )
    batch_max_in_flight: int | None = Field(
        None,
        ge=1,
        description="the most lines of a batch sent and not answered at a time (unset: "
        "twice the fleet's slots, at least 4), so a large batch never puts its file ahead "
        "of interactive requests",
    )
    retry_after_seconds: int = Field(1, ge=1, description="Retry-After on 503")
    status_refresh_ms: int = Field(
        100, ge=5, description="how often status readers refresh (commits, slots, backlog)"
    )

    @field_validator("kafka_enable_idempotence", mode="before")
    @classmethod
    def _blank_is_auto(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("preempt_after_ms", mode="before")
    @classmethod
    def _off_is_none(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("off", "none", ""):
            return None
        return value

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        return value.strip() or None if value is not None else None

    @model_validator(mode="after")
    def _security_is_complete(self) -> Settings:
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"INFERENCE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "INFERENCE_KAFKA_SASL_MECHANISM, INFERENCE_KAFKA_SASL_USERNAME and "
                "INFERENCE_KAFKA_SASL_PASSWORD"
            )
        if self.exactly_once and self.worker_mode != "leader":
            raise ValueError(
                "INFERENCE_EXACTLY_ONCE needs INFERENCE_WORKER_MODE=leader (shared mode would "
                "need per-partition fencing of zombie workers)"
            )
        if not sasl and self.kafka_sasl_mechanism:
            raise ValueError(
                "INFERENCE_KAFKA_SASL_MECHANISM is set but INFERENCE_KAFKA_SECURITY_PROTOCOL "
                f"is {self.kafka_security_protocol}; use SASL_PLAINTEXT or SASL_SSL"
            )
        return self

    def shares(self) -> dict[str, int]:
        """``weighted_shares`` by level name."""
        high, medium, low = (int(x) for x in self.weighted_shares.split(":"))
        return {"high": high, "medium": medium, "low": low}

    def stats_windows(self) -> list[float]:
        """``stats_windows_seconds`` as numbers."""
        return [float(x) for x in self.stats_windows_seconds.split(",")]

    def max_wait_ms(self) -> dict[str, int]:
        """The ageing bounds that are set, by level name, in milliseconds."""
        bounds = {"medium": self.max_wait_seconds_medium, "low": self.max_wait_seconds_low}
        return {level: int(s * 1000) for level, s in bounds.items() if s is not None}

    @property
    def embedded(self) -> bool:
        """True when no external Kafka is configured and the embedded broker is used."""
        return self.kafka_bootstrap_servers is None

    @property
    def bootstrap_servers(self) -> str:
        return self.kafka_bootstrap_servers or f"127.0.0.1:{self.broker_port}"

    @property
    def consumer_group(self) -> str:
        return self.worker_group or f"{self.topic_prefix}.workers"
