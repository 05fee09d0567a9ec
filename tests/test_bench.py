"""The benchmark's Kafka scenarios still run end to end (tiny sizes; figures not checked)."""

import json

import pytest

from inference_allocator.bench import scenarios
from inference_allocator.bench.idle import idle_cost
from inference_allocator.bench.overload import refusal_cost
from inference_allocator.bench.stack import BenchBroker
from inference_allocator.bench.stats import Progress

from .helpers import run_cli

pytestmark = pytest.mark.broker


async def test_efficiency_scenario_drains_its_backlog(broker):
    bench_broker = BenchBroker(broker.bootstrap_servers, broker.idempotence, broker.kind)
    result = await scenarios.efficiency_kafka(bench_broker, gpus=2, latency_ms=5, window_s=0.02)
    assert result["requests"] == 8  # two slots, four whole rounds
    assert 0 < result["efficiency_whole_run"] <= 1.0  # physically bounded over the whole run
    assert result["efficiency"] > 0
    assert result["idle_gap_ms"]["n"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("thin", [True, False], ids=["thin-pipeline", "real-stack"])
async def test_http_scenario_runs_on_either_stack(broker, thin):
    """The thinnest pipeline answers over HTTP like the real stack, so their figures compare."""
    bench_broker = BenchBroker(broker.bootstrap_servers, broker.idempotence, broker.kind)
    plan = scenarios.BenchPlan.make(quick=True)
    plan.overhead_requests, plan.one_client_requests, plan.throughput_seconds = 10, 5, 0.3
    result = await scenarios.http(bench_broker, plan, progress=None, thin=thin)
    assert result["overhead_ms"]["n"] == 10 and result["one_client_ms"]["n"] == 5
    assert result["throughput_rps"] > 0 and result["concurrency"] == plan.http_concurrency


@pytest.mark.slow
async def test_idle_and_refusal_costs_are_measured(broker):
    """The idle stack's CPU by process, lone requests after quiet, and the bridge's CPU per
    admitted and per refused request under a flood: all measured, none asserted."""
    bench_broker = BenchBroker(broker.bootstrap_servers, broker.idempotence, broker.kind)
    plan = scenarios.BenchPlan.make(quick=True)
    plan.idle_quiet_s, plan.idle_lulls, plan.overload_s = 3.0, 0, 1.5
    idle = await idle_cost(bench_broker, plan, Progress(2))
    assert set(idle["cpu_percent"]) == {"worker", "bridge", "stats", "total"}
    assert idle["cpu_percent"]["total"] > 0
    assert len(idle["first_after_quiet_ms"]) == 1 and idle["warm_ms"]["n"] == 30
    refusing = await refusal_cost(bench_broker, plan, Progress(3))
    calm, _, flood = refusing["phases"]
    assert calm["refused"] == 0 and calm["admitted"] > 0
    assert flood["refused"] > flood["admitted"] > 0  # ten times the capacity
    assert refusing["cpu_per_admitted_ms"] > 0


@pytest.mark.slow
@pytest.mark.embedded
@pytest.mark.timeout(900)
def test_bench_quick_writes_its_json_and_its_plot_as_benchmarks_md_says(tmp_path):
    """``inference-allocator bench --quick --json b.json --plot b.png``, as BENCHMARKS.md
    tells a reader to run it (on the broker it starts itself): both files, whole."""
    json_path, png_path = tmp_path / "b.json", tmp_path / "b.png"
    ran = run_cli(
        "bench", "--quick", "--json", str(json_path), "--plot", str(png_path), timeout=900
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    results = json.loads(json_path.read_text())
    assert results["quick"] is True and results["command"].startswith("inference-allocator bench")
    [embedded] = results["brokers"]
    assert embedded["broker"].startswith("embedded")
    assert {"http", "thin", "efficiency", "reference", "targets"} <= embedded.keys(), sorted(
        embedded
    )
    assert png_path.read_bytes().startswith(b"\x89PNG"), "not a PNG"
    assert "JSON written to" in ran.stderr and "plot written to" in ran.stderr
