"""The command line as a user runs it: whole processes, real ports, real signals."""

from __future__ import annotations

import asyncio
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from inference_allocator.brokers import free_port
from inference_allocator.consumers.reader import ClusterReader
from inference_allocator.consumers.tail import follow_answers
from inference_allocator.producers.client import InferenceClient
from inference_allocator.schemas import ResponseRecord, now_ms
from inference_allocator.topics import Topics, ensure_topics

from .helpers import CLI, deployment_env, run_cli, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.broker]


def children_of(pid: int) -> set[int]:
    """Every descendant of ``pid``, read from /proc."""
    parents: dict[int, int] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        ppid = next(int(line.split()[1]) for line in text.splitlines() if line.startswith("PPid"))
        parents[int(status.parent.name)] = ppid
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}/status").exists()
        and "zombie" not in Path(f"/proc/{pid}/status").read_text()
    )


@pytest.fixture
def broker_kind_flags(broker, tmp_path):
    """``dev`` starts the same kind of broker as the suite runs on."""
    if broker.kind == "apache-kafka":
        return ["--apache-kafka", "--data-dir", str(tmp_path / "kafka")]
    return []


@pytest.fixture
def taken_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


@pytest.mark.parametrize(
    "command, flag",
    [
        ("broker", "--broker-port"),
        ("broker --apache-kafka", "--broker-port"),
        ("bridge", "--port"),
        ("dev", "--port"),
    ],
)
def test_a_taken_port_is_one_clear_line(taken_port, command, flag):
    result = run_cli(*command.split(), flag, str(taken_port))
    assert result.returncode == 1
    assert f"port {taken_port} on 127.0.0.1 is already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_broker_binary_is_one_clear_line(tmp_path):
    missing = tmp_path / "tansu"
    result = run_cli(
        "broker", "--broker-port", str(free_port()), env={"CALF_TANSU_BIN": str(missing)}
    )
    assert result.returncode == 1
    assert "error: cannot find the embedded broker binary" in result.stderr
    assert str(missing) in result.stderr and "Traceback" not in result.stderr


def test_apache_kafka_without_java_is_one_clear_line(tmp_path):
    result = run_cli(
        "broker", "--apache-kafka", "--broker-port", str(free_port()),
        env={"JAVA_HOME": str(tmp_path / "no-jdk"), "PATH": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 1
    assert "error: Apache Kafka needs Java 17+" in result.stderr
    assert "Traceback" not in result.stderr


def test_fetching_apache_kafka_without_maven_is_one_clear_line(tmp_path):
    java = shutil.which("java")
    if java is None:
        pytest.skip("no java here; the missing-Java case is tested above")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(java)
    result = run_cli(
        "broker", "--apache-kafka", "--broker-port", str(free_port()),
        env={"PATH": str(bin_dir), "INFERENCE_CACHE_DIR": str(tmp_path / "empty-cache")},
    )  # fmt: skip
    assert result.returncode == 1
    assert "error: fetching Apache Kafka needs Maven (`mvn`)" in result.stderr
    assert "Traceback" not in result.stderr


def test_data_dir_without_apache_kafka_is_refused(tmp_path):
    result = run_cli("broker", "--data-dir", str(tmp_path))
    assert result.returncode == 1
    assert "error: --data-dir goes with --apache-kafka" in result.stderr


def test_an_unreachable_broker_is_one_clear_line():
    port = free_port()
    result = run_cli(
        "submit",
        "--model",
        "m",
        "hello",
        env={"INFERENCE_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"},
    )
    assert result.returncode == 1
    assert f"error: cannot reach the Kafka broker at 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.embedded
def test_auto_idempotence_falls_back_quietly_on_a_broker_without_it(broker):
    """Tansu named as an external broker: it answers InitProducerId with an error, so
    "auto" produces without idempotence and the request lands; a known trait of the
    embedded broker is no news, so it is said at debug level only, not as a warning on
    every command."""
    env = {"INFERENCE_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers}
    result = run_cli("submit", "--model", "m", "hello", env=env)
    assert result.returncode == 0, result.stderr
    assert "WARNING" not in result.stderr and "idempoten" not in result.stderr
    assert json.loads(result.stdout)["topic"] == "inference.requests.medium"
    debugging = run_cli("--log-level", "debug", "submit", "--model", "m", "hello", env=env)
    assert debugging.returncode == 0, debugging.stderr
    assert "refused an idempotent producer" in debugging.stderr
    assert "producing without idempotence" in debugging.stderr


@pytest.mark.apache_kafka
def test_a_broker_that_refuses_a_setting_is_named_not_called_unreachable(broker):
    result = run_cli(
        "worker",
        env={
            "INFERENCE_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
            "INFERENCE_TOPIC_PREFIX": f"refused{free_port()}",
            "INFERENCE_SESSION_TIMEOUT_MS": "3600000",  # above group.max.session.timeout.ms
        },
    )
    assert result.returncode == 1
    assert "refused to start a consumer" in result.stderr
    assert (
        "InvalidSessionTimeoutError" in result.stderr
        and "INFERENCE_SESSION_TIMEOUT_MS" in result.stderr
    )
    assert "cannot reach" not in result.stderr and "Traceback" not in result.stderr


@pytest.mark.apache_kafka
def test_auto_idempotence_is_on_where_the_broker_grants_it(broker):
    result = run_cli(
        "--log-level", "debug", "submit", "--model", "m", "hello",
        env={"INFERENCE_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "refused an idempotent producer" not in result.stderr
    assert "idempotent producers: on" in result.stderr


def test_an_invalid_fleet_file_is_one_line_naming_the_pool(tmp_path):
    fleet = tmp_path / "fleet.toml"
    fleet.write_text("[[pools]]\nname = 'gpu-a'\nbackend = 'openai'\nmodels = ['m']\nslots = 4\n")
    result = run_cli("worker", env={"INFERENCE_FLEET_FILE": str(fleet)})
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: fleet file {fleet}: pool 'gpu-a': an openai pool needs base_url "
        "(e.g. http://host:8000/v1)"
    )


def test_an_invalid_setting_names_the_variable():
    result = run_cli("worker", env={"INFERENCE_GPU_COUNT": "lots"})
    assert result.returncode == 2
    assert "INFERENCE_GPU_COUNT" in result.stderr and "Traceback" not in result.stderr


async def test_submit_and_status_against_a_running_worker(make_settings, start_worker):
    settings = make_settings(gpu_count=2)
    worker = await start_worker(settings)
    env = deployment_env(settings)
    waited = await asyncio.to_thread(
        run_cli, "submit", "--model", "llama-3-70b", "--priority", "high", "--wait", "Hi", env=env
    )
    assert waited.returncode == 0, waited.stderr
    response = json.loads(waited.stdout)
    assert response["status"] == "ok" and response["priority"] == "high"
    assert response["worker_id"] == worker.worker_id

    sent = await asyncio.to_thread(run_cli, "submit", "--model", "m", "fire and forget", env=env)
    assert sent.returncode == 0, sent.stderr
    assert json.loads(sent.stdout)["topic"] == f"{settings.topic_prefix}.requests.medium"

    status = await asyncio.to_thread(run_cli, "status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    body = json.loads(status.stdout)
    assert body["workers"][0]["worker_id"] == worker.worker_id
    assert body["gpus_available"] + body["gpus_busy"] == 2

    table = await asyncio.to_thread(run_cli, "status", env=env)
    assert table.returncode == 0, table.stderr
    for shown in ("broker answers", "Queue", "Pools", "Workers", worker.worker_id, "mock"):
        assert shown in table.stdout, table.stdout


def test_tail_follows_the_answers_and_logs_can_be_json(make_settings, tmp_path):
    """``tail`` (lines and --json) shows answers as they come; a worker with
    INFERENCE_LOG_FORMAT=json logs JSON lines that name the request, its priority, model,
    worker and slot."""
    settings = make_settings(gpu_count=1, mock_latency_ms=5)
    env = {**os.environ, **deployment_env(settings)}
    log_path = tmp_path / "worker.log"
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            [*CLI, "--log-level", "debug", "worker"],
            env={**env, "INFERENCE_LOG_FORMAT": "json", "INFERENCE_WORKER_ID": "w-json"},
            stderr=log,
        )
    logs = [tmp_path / "tail-json.log", tmp_path / "tail-since.log"]
    tails = []
    for flags, tail_log in zip((["--json"], ["--since", "60"]), logs, strict=True):
        with tail_log.open("wb") as err:
            tails.append(
                subprocess.Popen(
                    [*CLI, "tail", *flags], env=env, stdout=subprocess.PIPE, stderr=err, text=True
                )
            )
    try:
        for tail, tail_log in zip(tails, logs, strict=True):
            # "from now" starts where the tail stands once it says so
            _wait_for_text(tail, tail_log, "following the answers on")
        sent = run_cli("submit", "--model", "m", "--priority", "low", "--wait", "tail me", env=env)
        assert sent.returncode == 0, sent.stderr + log_path.read_text()
        request_id = json.loads(sent.stdout)["request_id"]
        assert json.loads(_line(tails[0]))["request_id"] == request_id
        line = _line(tails[1])
        assert request_id in line and " ok " in line and "low" in line and "tail me" in line
        entries = [json.loads(x) for x in log_path.read_text().splitlines() if x.startswith("{")]
        [dispatched] = [e for e in entries if e["message"] == "dispatched"]
        assert dispatched["request_id"] == request_id and dispatched["priority"] == "low"
        assert dispatched["model"] == "m" and dispatched["worker"] == "w-json"
        assert dispatched["slot"] == "w-json/mock/0" and dispatched["level"] == "debug"
    finally:
        for process in (worker, *tails):
            process.send_signal(signal.SIGINT)
        for process in (worker, *tails):
            assert process.wait(timeout=20) in (0, 130, -2), process.args
            if process.stdout:
                process.stdout.close()


def _line(process: subprocess.Popen[str], timeout: float = 20) -> str:
    """The next line a process prints, within ``timeout``."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, f"{process.args} printed nothing in {timeout:g} s"
    return process.stdout.readline()


def _wait_for_text(process: subprocess.Popen[str], path: Path, text: str, timeout: float = 20):
    """Until ``process``'s log at ``path`` holds ``text``, within ``timeout``."""
    deadline = time.monotonic() + timeout
    while text not in path.read_text():
        assert process.poll() is None, f"{process.args} exited: {path.read_text()}"
        assert time.monotonic() < deadline, (
            f"{process.args} did not log {text!r}: {path.read_text()}"
        )
        time.sleep(0.05)


def test_dev_serves_http_and_ctrl_c_stops_every_process(broker_kind_flags):
    port, broker_port = free_port(), free_port()
    dev = subprocess.Popen(
        [*CLI, "dev", "--port", str(port), "--broker-port", str(broker_port), *broker_kind_flags],
        env={**os.environ, "INFERENCE_MOCK_LATENCY_MS": "10"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, like a terminal job
    )
    try:
        url = f"http://127.0.0.1:{port}/api/v1"
        deadline = time.monotonic() + 60
        while True:
            assert dev.poll() is None, dev.stdout.read()
            try:
                if httpx.get(f"{url}/status").json()["workers"]:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the dev stack did not come up"
            time.sleep(0.2)
        response = httpx.post(
            f"{url}/inference",
            json={"model_id": "llama-3-70b", "prompt": "Hello", "priority": "high"},
            timeout=30,
        )
        assert response.status_code == 200
        assert {"request_id", "model_id", "output", "gpu_id", "inference_time_ms"} <= set(
            response.json()
        )
        spawned = children_of(dev.pid)
        assert len(spawned) >= 3  # broker, worker, bridge

        os.killpg(dev.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert dev.wait(timeout=60) == 0
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in spawned) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in spawned if alive(pid)], "processes left behind"
        output = dev.stdout.read()
        assert "Traceback" not in output, output
    finally:
        if dev.poll() is None:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
        dev.stdout.close()


async def test_a_killed_workers_slots_show_as_expired(make_settings):
    """SIGKILL leaves no tombstones: the slots must stop counting once their expiry passes."""
    settings = make_settings(gpu_count=3, lease_ttl_seconds=1.5)
    env = {**os.environ, **deployment_env(settings)}
    worker = await asyncio.create_subprocess_exec(
        *CLI, "worker", env=env, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        async with ClusterReader(settings) as reader:
            await wait_for(lambda: reader.status().gpus_available == 3, "the worker's slots")
            # Alive past several TTLs: the heartbeat keeps renewing the records.
            await asyncio.sleep(3.5)
            assert reader.status().gpus_available == 3
            worker.kill()
            await worker.wait()
            await wait_for(lambda: reader.status().gpus_expired == 3, "the slots to expire")
            status = reader.status()
            assert (status.gpus_available, status.gpus_busy, status.workers) == (0, 0, [])
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()


async def test_a_crashed_worker_loses_nothing(make_settings, start_worker):
    """SIGKILL a worker mid-inference: another one answers everything it had not answered."""
    settings = make_settings(gpu_count=2, mock_latency_ms=1500, request_partitions=1)
    env = {**os.environ, **deployment_env(settings)}
    doomed = await asyncio.create_subprocess_exec(
        *CLI, "worker", env=env, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        async with InferenceClient(settings) as client:
            calls = [
                asyncio.create_task(client.infer("m", f"p{i}", "medium", timeout_seconds=60))
                for i in range(6)
            ]
            async with ClusterReader(settings) as reader:
                await wait_for(lambda: reader.status().gpus_busy == 2, "two requests running")
            doomed.kill()  # mid-inference: nothing of those two was answered or committed
            await doomed.wait()
            survivor = await start_worker(settings.model_copy(update={"mock_latency_ms": 5}))
            responses = await asyncio.wait_for(asyncio.gather(*calls), 60)
    finally:
        if doomed.returncode is None:
            doomed.kill()
            await doomed.wait()
    assert [r.status for r in responses] == ["ok"] * 6  # one answer each, none lost
    # At least the two that were running when the first worker died came from the survivor.
    assert sum(r.worker_id == survivor.worker_id for r in responses) >= 2


async def test_tail_since_shows_the_window_read_back_in_time_order(make_settings, kafka_producer):
    """Answers of the last minute on three partitions, each in order but interleaved in
    time: ``--since`` shows them by time, as they were given, not partition by partition."""
    settings = make_settings()
    await ensure_topics(settings)
    topic = Topics.from_settings(settings).responses
    start = now_ms() - 30_000
    # partition p gets the answers given at start + p, start + 3 + p, start + 6 + p, ...
    for partition in range(3):
        for i in range(4):
            at = start + 3 * i + partition
            record = ResponseRecord(request_id=f"r{at - start:02d}", status="ok", output="x")
            await kafka_producer.send_and_wait(
                topic,
                record.model_dump_json().encode(),
                key=record.request_id.encode(),
                partition=partition,
                timestamp_ms=at,
            )
    shown: list[str] = []
    follow = asyncio.create_task(
        follow_answers(settings, lambda _, answer: shown.append(answer.request_id), 60)
    )
    try:
        await wait_for(lambda: len(shown) == 12, "the 12 answers of the window")
    finally:
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
    assert shown == [f"r{n:02d}" for n in range(12)]
