"""OpenAI's Batch API through the real broker, with the official client unchanged: a file
of requests uploaded, a batch created from it, its lines run by the worker group at low
priority, the output and error files in OpenAI's line format, every line answered once;
a bad file fails validation with every problem; a cancelled batch keeps what finished."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import Counter

import httpx
import openai
import pytest

from inference_allocator.bridge.batch_book import BatchBook, BatchRecord
from inference_allocator.bridge.batch_objects import new_batch
from inference_allocator.fleet.backends import MockBackend, mock_output
from inference_allocator.schemas import Priority
from inference_allocator.topics import Topics

from .helpers import read_topic, run_cli, wait_for

pytestmark = pytest.mark.broker


def chat_lines(count: int, model: str = "m") -> bytes:
    lines = [
        {"custom_id": f"q-{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": model, "messages": [{"role": "user", "content": f"Question {i}"}]}}
        for i in range(count)
    ]  # fmt: skip
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def client_of(http: httpx.AsyncClient) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{http.base_url}/v1", api_key="none", max_retries=0)


async def finished(client: openai.AsyncOpenAI, batch_id: str, timeout: float = 60.0):
    async def done() -> bool:
        try:
            batch = await client.batches.retrieve(batch_id)
        except openai.NotFoundError:  # written elsewhere, not read by this bridge yet
            return False
        return batch.status in ("completed", "failed", "expired", "cancelled")

    await wait_for(done, f"batch {batch_id} to finish", timeout=timeout)
    return await client.batches.retrieve(batch_id)


def jsonl(content: bytes) -> list[dict]:
    return [json.loads(line) for line in content.decode().splitlines() if line.strip()]


async def test_a_batch_runs_every_line_once_at_low_and_its_output_is_openais(
    make_settings, start_worker, start_bridge
):
    settings = make_settings(gpu_count=2)
    await start_worker(settings, backend=MockBackend(latency_ms=20))
    client = client_of(await start_bridge(settings))
    try:
        uploaded = await client.files.create(file=("in.jsonl", chat_lines(12)), purpose="batch")
        created = await client.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"job": "nightly"},
        )
        assert created.status == "validating" and created.metadata == {"job": "nightly"}
        batch = await finished(client, created.id)
        assert batch.status == "completed", batch
        assert batch.request_counts is not None
        assert (batch.request_counts.total, batch.request_counts.completed) == (12, 12)
        assert batch.error_file_id is None and batch.output_file_id is not None
        assert batch.in_progress_at and batch.finalizing_at and batch.completed_at
        lines = jsonl((await client.files.content(batch.output_file_id)).content)
        assert [line["custom_id"] for line in lines] == [f"q-{i}" for i in range(12)]
        first = lines[0]
        assert first["error"] is None and first["response"]["status_code"] == 200
        body = first["response"]["body"]
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"]["content"] == mock_output("m", "user: Question 0")
        listed = [b.id async for b in client.batches.list()]
        assert created.id in listed
    finally:
        await client.close()
    # every line ran once, at low, as the batch's own tenant
    topics = Topics.from_settings(settings)
    requests = await read_topic(settings, topics.request(Priority.LOW))
    ids = Counter(r.key.decode() for r in requests if r.key)
    assert len(ids) == 12 and set(ids.values()) == {1}
    answers = await read_topic(settings, topics.responses)
    answered = Counter(r.key.decode() for r in answers if r.key and r.key.startswith(b"batch_"))
    assert len(answered) == 12 and set(answered.values()) == {1}
    tenants = {json.loads(r.value)["tenant"] for r in requests if r.value}
    assert tenants == {created.id}


async def test_a_bad_file_fails_validation_with_every_problem_and_nothing_runs(
    make_settings, start_worker, start_bridge, tmp_path
):
    fleet = tmp_path / "fleet.toml"
    fleet.write_text('[[pools]]\nname = "sim"\nbackend = "mock"\nmodels = ["m"]\nslots = 1\n')
    settings = make_settings(fleet_file=str(fleet))
    await start_worker(settings)
    client = client_of(await start_bridge(settings))
    good = chat_lines(2).decode().splitlines()
    content = "\n".join([
        good[0].replace('"url": "/v1/chat/completions"', '"url": "/v1/completions"'),
        good[1],
        good[1],  # q-1 again
        good[0].replace('"q-0"', '"q-3"').replace('"model": "m"', '"model": "unserved"'),
    ]).encode()  # fmt: skip
    try:
        uploaded = await client.files.create(file=("bad.jsonl", content), purpose="batch")
        created = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="1h"
        )
        batch = await finished(client, created.id)
        assert batch.status == "failed" and batch.errors is not None
        found = [(e.code, e.line) for e in batch.errors.data or []]
        assert found == [("mismatched_url", 1), ("duplicate_custom_id", 3),
                         ("model_not_found", 4)]  # fmt: skip
        with pytest.raises(openai.BadRequestError):
            await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
            )
        with pytest.raises(openai.BadRequestError):
            await client.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/completions", completion_window="48h"
            )
        with pytest.raises(openai.NotFoundError):
            await client.batches.create(
                input_file_id="file-nope", endpoint="/v1/completions", completion_window="24h"
            )
    finally:
        await client.close()
    requests = await read_topic(settings, Topics.from_settings(settings).request(Priority.LOW))
    assert requests == []


async def test_a_cancelled_batch_keeps_its_finished_lines(
    make_settings, start_worker, start_bridge
):
    settings = make_settings(gpu_count=2, batch_max_in_flight=2)
    await start_worker(settings, backend=MockBackend(latency_ms=300))
    client = client_of(await start_bridge(settings))
    try:
        uploaded = await client.files.create(file=("in.jsonl", chat_lines(40)), purpose="batch")
        created = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )

        async def some_done() -> bool:
            batch = await client.batches.retrieve(created.id)
            return batch.request_counts is not None and batch.request_counts.completed >= 2

        await wait_for(some_done, "a few lines to finish", timeout=30)
        cancelling = await client.batches.cancel(created.id)
        assert cancelling.status == "cancelling"
        batch = await finished(client, created.id)
        assert batch.status == "cancelled" and batch.cancelled_at and batch.cancelling_at
        assert batch.output_file_id is not None and batch.error_file_id is not None
        done = jsonl((await client.files.content(batch.output_file_id)).content)
        failed = jsonl((await client.files.content(batch.error_file_id)).content)
        assert 2 <= len(done) < 40 and len(done) + len(failed) == 40
        assert {line["error"]["code"] for line in failed} <= {"batch_cancelled", "cancelled"}
        assert batch.request_counts is not None
        assert batch.request_counts.completed == len(done)
    finally:
        await client.close()


async def test_the_batch_command_submits_follows_and_writes_the_results(
    make_settings, start_worker, start_bridge, tmp_path
):
    settings = make_settings(gpu_count=2)
    await start_worker(settings, backend=MockBackend(latency_ms=10))
    http = await start_bridge(settings)
    url = str(http.base_url)
    source = tmp_path / "in.jsonl"
    source.write_bytes(chat_lines(5))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli("batch", "--url", url, *args)

    submitted = await asyncio.to_thread(cli, "submit", str(source), "--wait", "--metadata", "a=b")
    assert submitted.returncode == 0, submitted.stderr
    batch = json.loads(submitted.stdout)
    assert batch["status"] == "completed" and batch["metadata"] == {"a": "b"}
    assert "5/5" in submitted.stderr  # the progress bar's last state
    status = await asyncio.to_thread(cli, "status", batch["id"])
    assert json.loads(status.stdout)["request_counts"]["completed"] == 5
    out = tmp_path / "out.jsonl"
    results = await asyncio.to_thread(cli, "results", batch["id"], "-o", str(out))
    assert results.returncode == 0, results.stderr
    assert "5 ok, 0 failed" in results.stdout
    assert [line["custom_id"] for line in jsonl(out.read_bytes())] == [f"q-{i}" for i in range(5)]
    cancelled = await asyncio.to_thread(cli, "cancel", batch["id"])  # finished: stays so
    assert json.loads(cancelled.stdout)["status"] == "completed"
    unknown = await asyncio.to_thread(cli, "status", "batch_nope")
    assert unknown.returncode == 1 and "404" in unknown.stderr and "batch_nope" in unknown.stderr
    missing = await asyncio.to_thread(cli, "submit", str(tmp_path / "absent.jsonl"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr


async def test_with_api_keys_a_key_sees_its_own_batches_within_its_ceiling(
    make_settings, start_worker, start_bridge
):
    keys = "alpha-key-0123456789abcdef:alpha:low,beta-key-0123456789abcdef:beta"
    settings = make_settings(gpu_count=2, api_keys=keys)
    await start_worker(settings, backend=MockBackend(latency_ms=5))
    http = await start_bridge(settings)

    def keyed(key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=f"{http.base_url}/v1", api_key=key, max_retries=0)

    alpha, beta = keyed("alpha-key-0123456789abcdef"), keyed("beta-key-0123456789abcdef")
    try:
        uploaded = await alpha.files.create(file=("in.jsonl", chat_lines(3)), purpose="batch")
        with pytest.raises(openai.PermissionDeniedError):  # above alpha's ceiling
            await alpha.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                completion_window="24h", extra_body={"priority": "high"},
            )  # fmt: skip
        with pytest.raises(openai.NotFoundError):  # not beta's file
            await beta.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                completion_window="24h",
            )  # fmt: skip
        ids = []
        for _ in range(3):
            created = await alpha.batches.create(
                input_file_id=uploaded.id, endpoint="/v1/chat/completions",
                completion_window="30m",
            )  # fmt: skip
            ids.append(created.id)
        batch = await finished(alpha, ids[0])
        assert batch.status == "completed"
        with pytest.raises(openai.NotFoundError):
            await beta.batches.retrieve(ids[0])
        with pytest.raises(openai.NotFoundError):
            await beta.files.content(batch.output_file_id or "")
        assert [b.id async for b in beta.batches.list()] == []
        page = await alpha.batches.list(limit=2)
        assert [b.id for b in page.data] == ids[::-1][:2] and page.has_more
        rest = await alpha.batches.list(limit=2, after=page.data[-1].id)
        assert [b.id for b in rest.data] == [ids[0]] and not rest.has_more
    finally:
        await alpha.close()
        await beta.close()


async def test_a_batch_past_its_window_expires_and_keeps_what_finished(
    make_settings, start_worker, start_bridge
):
    """The window is set short on the batch's record itself (the API takes a minute at
    least): the runner reads the same record."""
    settings = make_settings(gpu_count=1, batch_max_in_flight=2)
    await start_worker(settings, backend=MockBackend(latency_ms=400))
    client = client_of(await start_bridge(settings))
    book = BatchBook(settings)
    await book.start()
    try:
        uploaded = await client.files.create(file=("in.jsonl", chat_lines(30)), purpose="batch")
        batch = new_batch("batch_short", uploaded.id, "/v1/chat/completions", "1m", 8, None)
        await book.put(BatchRecord(batch=batch))
        expired = await finished(client, "batch_short", timeout=30)
        assert expired.status == "expired" and expired.expired_at
        assert expired.output_file_id and expired.error_file_id
        done = jsonl((await client.files.content(expired.output_file_id)).content)
        failed = jsonl((await client.files.content(expired.error_file_id)).content)
        assert 1 <= len(done) < 30 and len(done) + len(failed) == 30
        assert {line["error"]["code"] for line in failed} == {"batch_expired"}
    finally:
        await book.stop()
        await client.close()
