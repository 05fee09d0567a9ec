"""OpenAI's Files API through the real broker, with the official client: a batch input file
uploaded to one bridge is listed, retrieved and read back by another (the content lives on
Kafka), deleted for both; bad files are refused with OpenAI's error shape."""

from __future__ import annotations

import json

import httpx
import openai
import pytest

from .helpers import wait_for

pytestmark = pytest.mark.broker

LINES = [
    {"custom_id": f"q-{i}", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "m", "messages": [{"role": "user", "content": f"Question {i}"}]}}
    for i in range(3)
]  # fmt: skip
CONTENT = "\n".join(json.dumps(line) for line in LINES).encode() + b"\n"


def client_of(http: httpx.AsyncClient, key: str = "none") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{http.base_url}/v1", api_key=key, max_retries=0)


async def test_a_file_uploaded_to_one_bridge_is_read_back_by_another(settings, start_bridge):
    first, second = await start_bridge(settings), await start_bridge(settings)
    one, other = client_of(first), client_of(second)
    try:
        created = await one.files.create(file=("batch.jsonl", CONTENT), purpose="batch")
        assert created.id.startswith("file-") and created.object == "file"
        assert (created.bytes, created.filename, created.purpose) == (
            len(CONTENT), "batch.jsonl", "batch"
        )  # fmt: skip

        async def listed() -> bool:
            return created.id in [f.id async for f in other.files.list()]

        await wait_for(listed, "the other bridge to list the file")
        assert (await other.files.retrieve(created.id)).bytes == len(CONTENT)
        assert (await other.files.content(created.id)).content == CONTENT
        deleted = await other.files.delete(created.id)
        assert deleted.deleted and deleted.id == created.id

        async def gone() -> bool:
            return created.id not in [f.id async for f in one.files.list()]

        await wait_for(gone, "the first bridge to forget the file")
        with pytest.raises(openai.NotFoundError):
            await one.files.retrieve(created.id)
    finally:
        await one.close()
        await other.close()


async def test_a_file_larger_than_a_record_is_kept_in_chunks(settings, start_bridge):
    http = await start_bridge(settings)
    client = client_of(http)
    line = {
        "custom_id": "x",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "y" * 1000}]},
    }
    lines = [json.dumps({**line, "custom_id": f"c{i}"}) for i in range(1500)]  # ~1.6 MB
    content = ("\n".join(lines) + "\n").encode()
    try:
        created = await client.files.create(file=("big.jsonl", content), purpose="batch")
        assert (await client.files.content(created.id)).content == content
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("content", "purpose", "says"),
    [
        (CONTENT, "fine-tune", "purpose"),
        (b"not json\n", "batch", "line 1 is not JSON"),
        (b'{"a": 1}\n[1, 2]\n', "batch", "line 2 is not a JSON object"),
        (b"\n\n", "batch", "no lines"),
        (b"\xff\xfe", "batch", "not UTF-8"),
    ],
    ids=["purpose", "not-json", "not-object", "empty", "binary"],
)
async def test_a_bad_file_is_refused_with_openais_error(
    settings, start_bridge, content, purpose, says
):
    http = await start_bridge(settings)
    client = client_of(http)
    try:
        with pytest.raises(openai.BadRequestError) as refused:
            await client.files.create(file=("bad.jsonl", content), purpose=purpose)
        assert says in refused.value.body["message"]
    finally:
        await client.close()


async def test_too_many_lines_and_too_many_bytes_are_refused(make_settings, start_bridge):
    http = await start_bridge(make_settings(max_file_lines=2, max_file_bytes=2048))
    client = client_of(http)
    try:
        with pytest.raises(openai.BadRequestError, match="above 2"):
            await client.files.create(file=("three.jsonl", CONTENT), purpose="batch")
        big = b'{"a": "' + b"z" * 4096 + b'"}\n'
        with pytest.raises(openai.APIStatusError) as too_big:
            await client.files.create(file=("big.jsonl", big), purpose="batch")
        assert too_big.value.status_code == 413
    finally:
        await client.close()


async def test_with_api_keys_a_key_sees_only_its_own_files(make_settings, start_bridge):
    keys = "alpha-key-0123456789abcdef:alpha,beta-key-0123456789abcdef:beta"
    http = await start_bridge(make_settings(api_keys=keys))
    alpha = client_of(http, "alpha-key-0123456789abcdef")
    beta = client_of(http, "beta-key-0123456789abcdef")
    try:
        created = await alpha.files.create(file=("a.jsonl", CONTENT), purpose="batch")
        assert created.id in [f.id async for f in alpha.files.list()]
        assert created.id not in [f.id async for f in beta.files.list()]
        with pytest.raises(openai.NotFoundError):
            await beta.files.content(created.id)
        stranger = client_of(http, "wrong-key-0123456789abcdef")
        with pytest.raises(openai.AuthenticationError):
            await stranger.files.list()
        await stranger.close()
    finally:
        await alpha.close()
        await beta.close()
