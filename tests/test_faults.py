"""Faults survived: each test states its fault and its load, and counts what was lost,
answered twice or executed twice. Each runs on a broker of its own (it stops that broker):
Tansu under `make test`, Apache Kafka under `make test-kafka`."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from inference_allocator.brokers import EmbeddedBroker, free_port
from inference_allocator.brokers.process import BrokerProcess
from inference_allocator.config import Settings
from inference_allocator.consumers.reader import ClusterReader
from inference_allocator.schemas import PRIORITIES, SlotRecord
from inference_allocator.topics import Topics

from .conftest import apache_kafka_or_skip, broker_kind
from .helpers import CLI, deployment_env, read_topic, ready, wait_for
from .test_cli import alive, children_of
from .test_leadership import Workers, answered

pytestmark = [pytest.mark.slow, pytest.mark.broker]


@pytest.fixture
def own_broker(broker, tmp_path) -> Iterator[BrokerProcess]:
    """A broker of this test's own, of the suite's kind, since the test stalls or kills it.
    Requested before the worker and bridge fixtures, so it is stopped after them."""
    kind = broker_kind()
    if kind == "embedded":
        with EmbeddedBroker(free_port()) as embedded:
            yield embedded
    elif kind == "apache-kafka":
        with apache_kafka_or_skip(tmp_path / "kafka", free_port()) as kafka:
            yield kafka
    else:
        pytest.skip(f"needs a broker the test can stop; {kind} is not one")


def own_settings(broker: BrokerProcess, **overrides: object) -> Settings:
    values: dict[str, object] = dict(
        kafka_bootstrap_servers=broker.bootstrap_servers,
        topic_prefix=f"t{uuid.uuid4().hex[:10]}",
        queue_max_size=10_000,
    )
    values.update(overrides)
    return Settings(**values)


def durable(broker: BrokerProcess) -> bool:
    return not isinstance(broker, EmbeddedBroker)


def send_signal(broker: BrokerProcess, signum: int) -> None:
    assert broker.pid is not None
    os.kill(broker.pid, signum)


async def test_a_broker_stall_loses_nothing_and_no_partition_stays_stuck(
    own_broker, start_worker, start_bridge, caplog
):
    """Fault: the broker SIGSTOPped for 5 s while 150 HTTP requests arrive at ~30/s on 4
    slots of 100 ms, longer than the producers' 2 s request timeout, so responses and
    slot records fail to produce at that moment. Promise: requests accepted (200 or 504) all
    get an answer on the responses topic, the ones refused during the stall get 503, no
    answer is lost to the failed produces (they are retried) and the committed offsets reach
    the end (the queue drains to 0)."""
    caplog.set_level(logging.WARNING)
    settings = own_settings(
        own_broker,
        gpu_count=4,
        mock_latency_ms=100,
        request_timeout_seconds=8,
        kafka_request_timeout_ms=2000,
    )
    await start_worker(settings)
    bridge = await start_bridge(settings)

    async def infer(i: int) -> httpx.Response:
        await asyncio.sleep(i / 30)
        body = {"model_id": "m", "prompt": f"stall {i}", "priority": "medium"}
        return await bridge.post("/api/v1/inference", json=body)

    calls = [asyncio.create_task(infer(i)) for i in range(150)]
    await asyncio.sleep(1.5)
    send_signal(own_broker, signal.SIGSTOP)
    try:
        await asyncio.sleep(5)
    finally:
        send_signal(own_broker, signal.SIGCONT)
    responses = await asyncio.wait_for(asyncio.gather(*calls), 120)

    codes = Counter(r.status_code for r in responses)
    assert set(codes) <= {200, 503, 504}, codes
    accepted = {r.json()["request_id"] for r in responses if r.status_code in (200, 504)}
    ok = [r.json()["request_id"] for r in responses if r.status_code == 200]
    assert len(ok) == len(set(ok)), "an HTTP caller got two answers"
    # The stall hit produces: ours retried them (Tansu), or, on Apache Kafka, the
    # idempotent producer resent them itself before its batches timed out.
    hits = ("could not produce", "could not write to the slot table", "error produce response")
    assert any(h in m for h in hits for m in caplog.messages), "the stall hit no produce"

    # Nothing accepted is lost: each has an answer on the topic (ok, or expired unstarted).
    found = await answered(settings, accepted)
    # And no partition stays stuck behind a failed produce: the queue drains.
    async with ClusterReader(settings) as reader:
        await wait_for(lambda: reader.status().queue_size == 0, "the queue to drain", 60)
    # Everything works again without a restart.
    after = await bridge.post("/api/v1/inference", json={"model_id": "m", "prompt": "after"})
    assert after.status_code == 200, after.text
    twice = sum(n > 1 for n in Counter(r.request_id for r in found).values())
    print(
        f"\nbroker stall 5 s under load: {dict(codes)}; {len(accepted)} accepted, all answered "
        f"on the topic; {twice} answered twice there"
    )


class _Stack:
    """A worker and a bridge as CLI processes, their stderr in files."""

    def __init__(self, settings: Settings, tmp_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, **deployment_env(settings)}
        self.logs = {name: tmp_path / f"{name}.log" for name in ("worker", "bridge")}
        commands = {"worker": ["worker"], "bridge": ["bridge", "--port", str(self.port)]}
        self.processes = {}
        for name, args in commands.items():
            with self.logs[name].open("wb") as log:
                self.processes[name] = subprocess.Popen([*CLI, *args], env=env, stderr=log)

    def lines(self) -> int:
        return sum(len(path.read_text().splitlines()) for path in self.logs.values())

    def log_text(self) -> str:
        return "\n".join(path.read_text() for path in self.logs.values())

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


async def test_a_broker_that_goes_away_gets_fast_honest_answers(own_broker, tmp_path):
    """Fault: the broker SIGKILLed under an idle worker and bridge (CLI processes).
    Promise: once the bridge knows, POST answers 503 with Retry-After and the status answers
    at once saying so, well within 1 s; /healthz stays 200 and /readyz turns 503; connection
    errors are logged a few times, not hundreds a second; on Apache Kafka everything
    recovers by itself when the broker comes back on its data; SIGTERM ends both processes
    within a few seconds even while the broker is gone."""
    settings = own_settings(own_broker, gpu_count=2, mock_latency_ms=10)
    stack = _Stack(settings, tmp_path)
    try:
        async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:

            async def up() -> bool:
                for name, process in stack.processes.items():
                    assert process.poll() is None, f"{name}: {stack.log_text()}"
                return await ready(http)

            await wait_for(up, "the stack to be ready", timeout=60, interval=0.2)
            body = {"model_id": "m", "prompt": "before"}
            assert (await http.post("/api/v1/inference", json=body)).status_code == 200

            own_broker.kill()
            gone = time.monotonic()

            async def knows() -> bool:
                return not (await http.get("/api/v1/status")).json()["broker_reachable"]

            await wait_for(knows, "the bridge to notice", timeout=10, interval=0.1)
            noticed = time.monotonic() - gone
            started = time.monotonic()
            refused = await http.post("/api/v1/inference", json=body)
            refused_in = time.monotonic() - started
            assert refused.status_code == 503, refused.text
            assert "Retry-After" in refused.headers
            assert "unreachable" in refused.json()["detail"]
            started = time.monotonic()
            status = await http.get("/api/v1/status")
            status_in = time.monotonic() - started
            assert status.status_code == 200 and status.json()["broker_error"]
            assert refused_in < 1 and status_in < 1, (refused_in, status_in)
            assert (await http.get("/healthz")).status_code == 200
            not_ready = await http.get("/readyz")
            assert not_ready.status_code == 503
            assert "unreachable" in " ".join(not_ready.json()["reasons"])

            # Logging: a line per state change and a few repeats, not one per attempt.
            lines_before = stack.lines()
            await asyncio.sleep(6)
            logged = stack.lines() - lines_before
            assert logged <= 30, stack.log_text()[-3000:]

            recovered = None
            if durable(own_broker):
                own_broker.start()  # the same port and data directory
                back = time.monotonic()
                await wait_for(up, "the stack to recover", timeout=60, interval=0.2)
                recovered = time.monotonic() - back
                response = await http.post("/api/v1/inference", json=body)
                assert response.status_code == 200, response.text
                own_broker.kill()  # and stop again, for the shutdown below
        # SIGTERM with the broker gone: both end within a few seconds.
        started = time.monotonic()
        for process in stack.processes.values():
            process.terminate()
        for name, process in stack.processes.items():
            assert process.wait(timeout=20) is not None, name
        stopped_in = time.monotonic() - started
        assert "Traceback" not in stack.log_text(), stack.log_text()[-3000:]
    finally:
        stack.close()
    print(
        f"\nbroker gone: noticed in {noticed:.1f} s; then POST 503 in {refused_in * 1000:.0f} ms, "
        f"status in {status_in * 1000:.0f} ms; {logged} log lines in 6 s; "
        + (f"recovered {recovered:.1f} s after the broker returned; " if recovered else "")
        + f"SIGTERM ended worker and bridge in {stopped_in:.1f} s"
    )


@pytest.mark.embedded
def test_dev_is_ready_when_a_worker_serves_and_stops_when_its_broker_dies():
    """`dev` prints its ready line only once a worker has joined (so the first request does
    not wait for the group), and when its embedded broker dies it stops everything with one
    line: the broker's data was in memory, so nothing could go on."""
    port, broker_port = free_port(), free_port()
    dev = subprocess.Popen(
        [*CLI, "dev", "--port", str(port), "--broker-port", str(broker_port)],
        env={**os.environ, "INFERENCE_MOCK_LATENCY_MS": "10"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert dev.stdout is not None
        output = []
        for line in dev.stdout:
            output.append(line)
            if line.startswith("inference allocator: "):
                break
        else:
            raise AssertionError("".join(output))
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/readyz").status_code == 200
        assert httpx.get(f"{url}/api/v1/status").json()["workers"]
        started = time.monotonic()
        first = httpx.post(
            f"{url}/api/v1/inference", json={"model_id": "m", "prompt": "first"}, timeout=30
        )
        first_in = time.monotonic() - started
        assert first.status_code == 200

        spawned = children_of(dev.pid)
        [tansu] = [pid for pid in spawned if "tansu" in Path(f"/proc/{pid}/cmdline").read_text()]
        os.kill(tansu, signal.SIGKILL)
        started = time.monotonic()
        assert dev.wait(timeout=30) == 1
        stopped_in = time.monotonic() - started
        rest = dev.stdout.read()
        assert "error: the embedded broker exited" in rest, rest
        assert "Traceback" not in rest, rest
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in spawned) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in spawned if alive(pid)], "processes left behind"
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
        dev.stdout.close()
    print(
        f"\ndev: first request after the ready line took {first_in * 1000:.0f} ms; the stack "
        f"stopped {stopped_in:.1f} s after its broker died"
    )


@pytest.mark.parametrize(
    "mode", ["leader", "shared", pytest.param("exactly-once", marks=pytest.mark.apache_kafka)]
)
async def test_a_worker_killed_under_load_loses_nothing(mode, own_broker, start_bridge, tmp_path):
    """Fault: 2 worker processes of 4 slots, 300 concurrent HTTP requests of 50 ms, one
    worker SIGKILLed mid-run (the leader in leader mode; in shared mode the one that did
    not start first). Promise: every request gets exactly one HTTP answer, none lost; the
    only requests executed twice are the ones the killed worker was running, or had answered
    but not yet committed (answered within the last second before the kill). With
    INFERENCE_EXACTLY_ONCE (leader mode, Apache Kafka), a read_committed consumer of the
    responses topic also sees exactly one answer per request.

    Executions are counted from the leases in the slot table; a lease the killed worker
    had not yet sent (its slot producer lingers 20 ms) dies with it, so the count of
    requests running at the kill is a lower bound."""
    exactly_once = mode == "exactly-once"
    settings = own_settings(
        own_broker,
        gpu_count=4,
        mock_latency_ms=50,
        request_timeout_seconds=90,
        worker_mode="leader" if exactly_once else mode,
        exactly_once=exactly_once,
        session_timeout_ms=3000,
        lease_ttl_seconds=300,  # no heartbeat rewrite of a lease in the test's time
    )
    workers = Workers(settings, tmp_path)
    try:
        for worker_id in ("w1", "w2"):
            await workers.start(worker_id)
        bridge = await start_bridge(settings)
        async with ClusterReader(settings) as reader:
            want = 8 if mode == "shared" else 4
            await wait_for(lambda: reader.status().gpus_available == want, "the workers' slots")
            owners = sorted({w.worker_id for w in reader.status().workers})
        victim = "w2" if mode == "shared" else owners[0]
        limits = httpx.Limits(max_connections=300, max_keepalive_connections=300)
        async with httpx.AsyncClient(
            base_url=str(bridge.base_url), timeout=120, limits=limits
        ) as http:

            async def infer(i: int) -> httpx.Response:
                body = {"model_id": "m", "prompt": f"kill {i}", "priority": "medium"}
                return await http.post("/api/v1/inference", json=body)

            calls = [asyncio.create_task(infer(i)) for i in range(300)]
            await wait_for(lambda: sum(c.done() for c in calls) >= 60, "the first answers")
            workers.processes[victim].kill()
            killed_at_ms = time.time() * 1000
            try:
                responses = await asyncio.wait_for(asyncio.gather(*calls), 90)
            except TimeoutError:
                raise AssertionError(workers.logs()) from None
    finally:
        await workers.close()

    assert Counter(r.status_code for r in responses) == {200: 300}
    ids = {r.json()["request_id"] for r in responses}
    assert len(ids) == 300, "an HTTP caller got another's answer, or two answers"
    found = await answered(settings, ids)
    # Executions, from the slot table: every lease of a request is one run of it.
    topics = Topics.from_settings(settings)
    leases: dict[str, set[tuple[str, int]]] = {}
    for record in await read_topic(settings, topics.gpu_slots):
        if record.value is None:
            continue
        slot = SlotRecord.model_validate_json(record.value)
        if slot.state == "leased" and slot.request_id in ids:
            leases.setdefault(slot.request_id, set()).add((slot.slot_id, slot.leased_at_ms or 0))
    assert set(leases) == ids, "a request was answered without a lease"
    twice = {rid for rid, runs in leases.items() if len(runs) > 1}
    by_victim = {r.request_id: r for r in found if r.worker_id == victim}
    for rid in twice:
        answer = by_victim.get(rid)
        # Running on the victim when it died (no answer from it), or answered just before
        # the kill and not yet committed.
        assert answer is None or (answer.completed_at_ms or 0) >= killed_at_ms - 1000, rid
    running_at_kill = sum(rid not in by_victim for rid in twice)
    if not exactly_once:  # there, answers held for their transaction die unsent too
        assert running_at_kill <= 4
    on_topic_twice = sum(n > 1 for n in Counter(r.request_id for r in found).values())
    committed_note = ""
    if exactly_once:
        committed = await read_topic(settings, topics.responses, committed_only=True)
        per_id = Counter(r.key.decode() for r in committed)
        twice_committed = sorted(i for i, n in per_id.items() if n > 1)
        assert set(per_id) == ids and not twice_committed, (twice_committed, workers.logs())
        committed_note = " (aborted transactions), 0 for a read_committed consumer"
    print(
        f"\nworker SIGKILL ({mode} mode, {victim} killed): 300/300 answered once over HTTP; "
        f"{len(twice)} executed twice ({running_at_kill} were running on the killed worker, "
        f"{len(twice) - running_at_kill} answered by it but not committed); "
        f"{on_topic_twice} answered twice on the topic{committed_note}"
    )


async def test_requests_outlive_the_bridge_that_accepted_them(make_settings, start_worker):
    """Fault: a bridge SIGKILLed with 10 accepted requests waiting on 2 slots of 500 ms.
    Promise: every one is still executed and answered on the responses topic; a bridge
    started again on the same port serves new requests as soon as it is up."""
    settings = make_settings(gpu_count=2, mock_latency_ms=500, request_timeout_seconds=60)
    await start_worker(settings)
    topics = Topics.from_settings(settings)

    def start_bridge_process(port: int) -> subprocess.Popen[bytes]:
        env = {**os.environ, **deployment_env(settings)}
        return subprocess.Popen(
            [*CLI, "bridge", "--port", str(port)], env=env, stderr=subprocess.DEVNULL
        )

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    bridge = start_bridge_process(port)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            await wait_for(lambda: ready(http), "the bridge", timeout=60, interval=0.1)
            body = {"model_id": "m", "prompt": "outlive", "priority": "low"}
            calls = [asyncio.create_task(http.post("/api/v1/inference", json=body))
                     for _ in range(10)]  # fmt: skip
            accepted = await read_topic(settings, topics.request(PRIORITIES[2]), 10)
            bridge.kill()  # with all 10 on Kafka and at most 2 of them answered
            bridge.wait()
            results = await asyncio.gather(*calls, return_exceptions=True)
            assert all(isinstance(r, httpx.TransportError) for r in results)
        ids = {r.key.decode() for r in accepted}
        found = await answered(settings, ids)
        assert {r.request_id for r in found if r.status == "ok"} >= ids

        bridge = start_bridge_process(port)
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            await wait_for(lambda: ready(http), "the bridge to come back", 60, interval=0.05)
            back_in = time.monotonic() - started
            response = await http.post("/api/v1/inference", json=body)
            assert response.status_code == 200, response.text
    finally:
        if bridge.poll() is None:
            bridge.kill()
            bridge.wait()
    print(f"\nbridge SIGKILL: 10/10 accepted requests answered on the topic; a new bridge "
          f"served {back_in:.1f} s after its start")  # fmt: skip
