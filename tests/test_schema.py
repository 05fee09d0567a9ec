"""The contract as served is the contract as documented: schemathesis runs every phase
(examples, coverage, fuzzing, and stateful runs that follow the schema's links from a POST
to GET and DELETE by ``request_id``) against a real bridge and worker on the test broker,
with every check, including that each status answered is in the schema."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CONFIG = Path(__file__).with_name("schemathesis.toml")


async def test_the_served_api_matches_its_openapi_schema(make_settings, start_worker, start_bridge):
    settings = make_settings(gpu_count=4, mock_latency_ms=5, request_timeout_seconds=10)
    await start_worker(settings)
    http = await start_bridge(settings)
    st = Path(sys.executable).with_name("st")
    run = await asyncio.create_subprocess_exec(
        str(st), "--config-file", str(CONFIG), "run", f"{http.base_url}/openapi.json",
        "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", "30", "--seed", "1", "--request-timeout", "20", "--no-color",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(run.communicate(), 600)
    text = output.decode(errors="replace")
    assert run.returncode == 0, text[-6000:]
    assert " passed" in text and "Stateful" in text, text[-3000:]
