"""The benchmark's Kafka scenarios still run end to end (tiny sizes; figures not checked)."""

import pytest

from inference_allocator.bench import scenarios
from inference_allocator.bench.stack import BenchBroker

pytestmark = pytest.mark.broker


async def test_efficiency_scenario_drains_its_backlog(broker):
    bench_broker = BenchBroker(broker.bootstrap_servers, broker.idempotence, broker.kind)
    result = await scenarios.efficiency_kafka(bench_broker, gpus=2, latency_ms=5, window_s=0.02)
    assert result["requests"] == 8  # two slots, four whole rounds
    assert 0 < result["efficiency_whole_run"] <= 1.0  # physically bounded over the whole run
    assert result["efficiency"] > 0
    assert result["idle_gap_ms"]["n"] > 0
