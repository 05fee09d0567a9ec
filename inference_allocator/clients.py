"""Kafka client factories: every producer and consumer is built from ``Settings`` here."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import ssl
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    InvalidSessionTimeoutError,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    NodeNotReadyError,
    RequestTimedOutError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context

from .config import Settings
from .errors import BrokerError, BrokerRefused, BrokerUnavailable
from .pacing import FetchPace

log = logging.getLogger(__name__)

#: the longest a client's ``stop()`` is waited for outside ``close_within`` (see ``_stop``)
STOP_TIMEOUT_S = 5.0
_close_deadline: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "close_deadline", default=None
)
# Errors that mean "nobody answered", as opposed to a broker that answered with an error.
_UNREACHABLE = (KafkaConnectionError, NodeNotReadyError, KafkaTimeoutError, RequestTimedOutError)


def connection_options(settings: Settings) -> dict[str, Any]:
    """Where the brokers are and how to talk to them (TLS, SASL), for every Kafka client
    of the allocator: producers, consumers, the admin client and the broker probe."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        context = create_ssl_context(
            cafile=settings.kafka_ssl_cafile,
            certfile=settings.kafka_ssl_certfile,
            keyfile=settings.kafka_ssl_keyfile,
            password=(
                settings.kafka_ssl_key_password.get_secret_value()
                if settings.kafka_ssl_key_password
                else None
            ),
        )
        context.check_hostname = settings.kafka_ssl_check_hostname
        options["ssl_context"] = context
    if settings.kafka_sasl_mechanism:
        assert settings.kafka_sasl_password is not None  # Settings checks it
        options.update(
            sasl_mechanism=settings.kafka_sasl_mechanism,
            sasl_plain_username=settings.kafka_sasl_username,
            sasl_plain_password=settings.kafka_sasl_password.get_secret_value(),
        )
    return options


def crc32_partitioner(key: bytes | None, all_partitions: list[int], available: list[int]) -> int:
    """Key -> partition by CRC32 (C speed), random without a key.

    aiokafka's default is Java's murmur2 in pure Python, a cost per record on the hot path.
    Nothing here needs Java-compatible placement: workers read whole topics by group and
    readers read every response partition.
    """
    if key is None:
        return random.choice(available or all_partitions)
    return all_partitions[zlib.crc32(key) % len(all_partitions)]


@dataclass(frozen=True)
class BrokerTraits:
    """What the allocator adapts to in a broker, told apart by one probe.

    A broker that grants an idempotent producer (``InitProducerId``) is taken for Apache
    Kafka: it answers a fetch as soon as data arrives and its ListOffsets is right. One
    that refuses it is taken for Tansu (the embedded broker), which does neither: every
    fetch waits its whole ``fetch_max_wait_ms``, and ListOffsets is wrong after batched
    produces.
    """

    idempotent_producers: bool

    @property
    def kafka_like(self) -> bool:
        return self.idempotent_producers

    def fetch_wait_ms(self, settings: Settings, *, pauses: bool = False) -> int:
        """``INFERENCE_FETCH_MAX_WAIT_MS``, else on Tansu 2 ms (each hop waits it), else on
        Kafka 500 ms (a fetch returns as soon as data arrives; each empty poll costs the
        broker CPU), or 20 ms for a consumer that ``pauses`` partitions: aiokafka keeps one
        fetch in flight per broker, and a resumed partition waits until that one returns,
        which on a level with no new data is the whole wait (a long wait there left slots
        idle under a backlog)."""
        if settings.fetch_max_wait_ms is not None:
            return settings.fetch_max_wait_ms
        if not self.kafka_like:
            return 2
        return 20 if pauses else 500

    def idle_fetch_wait_ms(self, settings: Settings) -> int:
        """``INFERENCE_IDLE_FETCH_WAIT_MS``, else 500 ms on Tansu (a fetch waits it whole,
        so the first request after a quiet period pays up to about it; a shorter wait cost
        an idle ``dev`` stack more CPU: see BENCHMARKS.md), else 1000 ms (a long poll
        returns as soon as data arrives)."""
        if settings.idle_fetch_wait_ms is not None:
            return settings.idle_fetch_wait_ms
        return 1000 if self.kafka_like else 500


TANSU = BrokerTraits(idempotent_producers=False)

# bootstrap servers -> what the probe found (probed once per process)
_TRAITS: dict[str, BrokerTraits] = {}


def _no_connection_errors(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Unable connect to")


def _refused_init_producer_id(record: logging.LogRecord) -> bool:
    return "InitProducerId" not in record.getMessage()


async def broker_traits(settings: Settings) -> BrokerTraits:
    """The traits of the deployment's broker: the embedded one is Tansu; any other is
    probed once per process with one idempotent producer."""
    if settings.embedded:
        return TANSU
    known = _TRAITS.get(settings.bootstrap_servers)
    if known is not None:
        return known
    probe = AIOKafkaProducer(
        **connection_options(settings),
        enable_idempotence=True,
        request_timeout_ms=15_000,
    )
    sender_log = logging.getLogger("aiokafka.producer.sender")
    sender_log.addFilter(_refused_init_producer_id)  # the refusal is what we ask about
    try:
        await probe.start()
        traits = BrokerTraits(idempotent_producers=True)
    except _UNREACHABLE + (OSError,) as exc:
        raise await _security_refusal(settings) or unreachable(settings, exc) from None
    except KafkaError as exc:
        traits = TANSU
        log.debug("the broker at %s refused InitProducerId: %r", settings.bootstrap_servers, exc)
        if settings.kafka_enable_idempotence is None:
            # Debug, not a warning: the embedded broker always refuses it, and a line every
            # command prints teaches people to ignore warnings (the docs say what follows).
            log.debug(
                "the broker at %s refused an idempotent producer (InitProducerId: %r); "
                "producing without idempotence, and treating it like the embedded Tansu "
                "(short fetch waits, backlog from fetches)",
                settings.bootstrap_servers,
                exc,
            )
    finally:
        sender_log.removeFilter(_refused_init_producer_id)
        with contextlib.suppress(Exception):
            await probe.stop()
    _TRAITS[settings.bootstrap_servers] = traits
    log.debug("idempotent producers: %s", "on" if traits.idempotent_producers else "off")
    return traits


async def idempotence(settings: Settings) -> bool:
    """Whether this deployment's producers are idempotent: ``INFERENCE_KAFKA_ENABLE_IDEMPOTENCE``
    when set, else ("auto") whether the broker grants it (never the embedded Tansu)."""
    if settings.kafka_enable_idempotence is not None:
        return settings.kafka_enable_idempotence
    return (await broker_traits(settings)).idempotent_producers


async def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    """A producer with the deployment's settings; call inside the running event loop."""
    options: dict[str, Any] = dict(
        **connection_options(settings),
        acks="all",
        enable_idempotence=await idempotence(settings),
        linger_ms=0,
        request_timeout_ms=settings.kafka_request_timeout_ms,
        partitioner=crc32_partitioner,
    )
    options.update(overrides)
    return AIOKafkaProducer(**options)


async def make_consumer(
    settings: Settings, *, pauses: bool = False, **overrides: Any
) -> AIOKafkaConsumer:
    """A consumer that never auto-commits; callers subscribe or assign. ``pauses``: the
    caller pauses and resumes partitions (see ``BrokerTraits.fetch_wait_ms``)."""
    traits = await broker_traits(settings)
    options: dict[str, Any] = dict(
        **connection_options(settings),
        enable_auto_commit=False,
        fetch_max_wait_ms=traits.fetch_wait_ms(settings, pauses=pauses),
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        request_timeout_ms=max(15_000, settings.session_timeout_ms + 5_000),
    )
    options.update(overrides)
    return AIOKafkaConsumer(**options)


async def topic_partitions(
    consumer: AIOKafkaConsumer, topics: list[str], settings: Settings
) -> dict[str, list[TopicPartition]]:
    """Every partition of each topic, from one fresh Metadata request.

    A consumer's cached metadata knows only the topics it was started with: all of them on
    Tansu, none on Apache Kafka (a Metadata request with an empty list means "no topics"
    from v1 on), and ``consumer.topics()`` does not update that cache. aiokafka has no
    public call for it, hence its client's ``fetch_all_metadata``.
    """
    cluster = await consumer._client.fetch_all_metadata()
    found: dict[str, list[TopicPartition]] = {}
    for topic in topics:
        partitions = cluster.partitions_for_topic(topic)
        if not partitions:
            raise BrokerError(f"topic {topic!r} does not exist on {settings.bootstrap_servers}")
        found[topic] = [TopicPartition(topic, p) for p in sorted(partitions)]
    return found


async def assigned_consumer(
    settings: Settings, topic: str, stack: contextlib.AsyncExitStack, **options: Any
) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A consumer of every partition of ``topic``, assigned (never a group member, so any
    number of readers can run), started on ``stack`` (which stops it), not positioned yet;
    with the partitions."""
    consumer = await make_consumer(settings, **options)
    await stack.enter_async_context(started(consumer, settings))
    tps = (await topic_partitions(consumer, [topic], settings))[topic]
    consumer.assign(tps)
    return consumer, tps


async def fetch_pace(settings: Settings, busy: Callable[[], bool] = lambda: False) -> FetchPace:
    """A process's pace of its readers' fetches (see ``pacing.FetchPace``)."""
    traits = await broker_traits(settings)
    return FetchPace(traits.idle_fetch_wait_ms(settings), busy)


def answers_isolation(settings: Settings) -> str:
    """How readers of the responses topic read it: with exactly-once, only answers whose
    transaction committed (aborted ones of a worker that died mid-transaction are answered
    again)."""
    return "read_committed" if settings.exactly_once else "read_uncommitted"


def unreachable(settings: Settings, exc: BaseException) -> BrokerUnavailable:
    hint = (
        "is a stack running (`make run`, `inference-allocator dev` or `broker`)? One on "
        "another port is reached with INFERENCE_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:<port>"
        if settings.embedded
        else "check INFERENCE_KAFKA_BOOTSTRAP_SERVERS"
    )
    return BrokerUnavailable(
        f"cannot reach the Kafka broker at {settings.bootstrap_servers} ({exc}); {hint}"
    )


def refused(settings: Settings, client: Any, exc: KafkaError) -> BrokerError:
    """The broker answered, with an error: say which, and what setting it points to."""
    what = type(client).__name__.replace("AIOKafka", "").lower() or "client"
    hint = ""
    if isinstance(exc, InvalidSessionTimeoutError):
        hint = (
            f"; INFERENCE_SESSION_TIMEOUT_MS={settings.session_timeout_ms} is outside the "
            "broker's group.min.session.timeout.ms..group.max.session.timeout.ms"
        )
    return BrokerRefused(
        f"the Kafka broker at {settings.bootstrap_servers} refused to start a {what}: {exc!r}{hint}"
    )


async def _security_refusal(settings: Settings) -> BrokerRefused | None:
    """Why a client with TLS or SASL could not bootstrap, when the broker answered but
    refused the handshake or the credentials (aiokafka reports that as "unable to
    bootstrap"): one connection to the first bootstrap server, to name it."""
    if settings.kafka_security_protocol == "PLAINTEXT":
        return None
    host, _, port = settings.bootstrap_servers.split(",")[0].strip().rpartition(":")
    options = connection_options(settings)
    options.pop("bootstrap_servers")
    try:
        connection = await create_conn(host, int(port), request_timeout_ms=10_000, **options)
    except (
        AuthenticationFailedError,
        SaslAuthenticationFailed,
        UnsupportedSaslMechanismError,
    ) as exc:
        return BrokerRefused(
            f"the Kafka broker at {settings.bootstrap_servers} refused the SASL "
            f"{settings.kafka_sasl_mechanism} credentials of user "
            f"{settings.kafka_sasl_username!r}: {exc}; check INFERENCE_KAFKA_SASL_*"
        )
    except ssl.SSLError as exc:
        return BrokerRefused(
            f"the TLS handshake with the Kafka broker at {settings.bootstrap_servers} failed: "
            f"{exc.reason or exc}; check INFERENCE_KAFKA_SSL_* and the security protocol"
        )
    except (KafkaError, OSError, ValueError, TimeoutError):
        return None
    connection.close()
    return None


@contextlib.asynccontextmanager
async def started(
    client: Any, settings: Settings, stop: Callable[[], Awaitable[Any]] | None = None
) -> AsyncIterator[Any]:
    """Start a client, turning an unreachable broker into ``BrokerUnavailable``; stop it after."""
    bootstrap = logging.getLogger("aiokafka")
    # aiokafka logs its failed connection attempts before it raises; the error raised here
    # says it once, in one line (a command's `error:`), so theirs stay out of the way.
    bootstrap.addFilter(_no_connection_errors)
    try:
        await client.start()
    except (KafkaError, OSError) as exc:
        with contextlib.suppress(Exception):
            await (stop or client.stop)()
        if isinstance(exc, _UNREACHABLE + (OSError,)):
            raise await _security_refusal(settings) or unreachable(settings, exc) from None
        raise refused(settings, client, exc) from None
    finally:
        bootstrap.removeFilter(_no_connection_errors)
    try:
        yield client
    finally:
        await _stop(stop or client.stop)


def retrieve_outcome(future: asyncio.Future[Any]) -> None:
    """A done-callback marking an abandoned future's outcome as seen: nobody awaits it any
    more, and asyncio would log its exception as never retrieved."""
    if not future.cancelled():
        future.exception()


async def close_within(stack: contextlib.AsyncExitStack, seconds: float) -> None:
    """Close ``stack``, giving up on the clients in it still stopping ``seconds`` from now.

    A timeout around ``stack.aclose()`` cannot do that: ``AsyncExitStack`` goes on to the
    next client's stop after the cancellation that ended one, and a producer's ``stop()``
    waits for the broker to take what it holds, with the broker gone forever. So the
    deadline is the stack's, and each client's stop gets what is left of it."""
    token = _close_deadline.set(time.monotonic() + seconds)
    try:
        # In a task of its own (wait_for's): a stray CancelledError from a client's stop
        # must be told apart from the caller being cancelled (see ``_stop``).
        await asyncio.wait_for(stack.aclose(), seconds + 1.0)
    except TimeoutError:
        log.warning("the Kafka clients did not close within %.0f s; leaving anyway", seconds)
    finally:
        _close_deadline.reset(token)


async def _stop(stop: Callable[[], Awaitable[Any]]) -> None:
    """Stop a client, within what is left of ``close_within``'s deadline, or else within
    ``STOP_TIMEOUT_S``; what is abandoned ends with the process.

    aiokafka's consumer, stopped while a fetch to an unreachable broker sleeps before its
    retry, raises that fetch's CancelledError from ``stop()``: swallowed unless this task
    itself is being cancelled."""
    deadline = _close_deadline.get()
    # Past the deadline, a moment still: a client whose stop began is closed for good
    # (aiokafka logs an error at exit for one never stopped).
    timeout = STOP_TIMEOUT_S if deadline is None else max(deadline - time.monotonic(), 0.1)
    try:
        await asyncio.wait_for(stop(), timeout)
    except TimeoutError:
        log.warning("a Kafka client did not stop in time (the broker does not answer?); "
                    "leaving it")  # fmt: skip
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
