"""``inference-allocator bench``: every scenario on each broker; a table, JSON and a plot."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from typing import Any

from ..clients import broker_traits
from ..config import Settings
from ..errors import ConfigurationError
from ..eventloop import run_loop
from . import priority_hold, report, scenarios
from .batch_interference import batch_interference
from .fairness import fairness_mock
from .idle import idle_cost
from .openai_path import openai_path
from .overload import refusal_cost
from .prefix_routing import prefix_routing
from .real_model import real_model
from .stack import BenchBroker
from .stats import Progress


async def _on_broker(
    plan: scenarios.BenchPlan, broker: BenchBroker, progress: Progress
) -> dict[str, Any]:
    """Every Kafka scenario on one broker, one stack at a time (an idle stack still polls
    the broker and would steal CPU from the one being measured)."""
    results: dict[str, Any] = {"broker": broker.kind}
    if plan.costs:
        # A broker just started answers slower for a while (Apache Kafka's JIT): a short
        # run of the thin pipeline first, whose figures are not kept.
        await scenarios.http(broker, plan.warm_up(), None, thin=True)
        results["thin"] = await scenarios.http(broker, plan, progress, thin=True)
        results["http"] = await scenarios.http(broker, plan, progress)
        results["openai_path"] = await openai_path(broker, progress, quick=plan.quick)
        results["efficiency"] = await _efficiency(plan, broker, progress)
        results["idle"] = await idle_cost(broker, plan, progress)
        results["refusing"] = await refusal_cost(broker, plan, progress)
        return results
    results["kafka_direct"] = await scenarios.kafka_direct(broker, plan, progress)
    results["http"] = await scenarios.http(broker, plan, progress)
    results["thin"] = await scenarios.http(broker, plan, progress, thin=True)
    results["openai_path"] = await openai_path(broker, progress, quick=plan.quick)
    # The cost of INFERENCE_EXACTLY_ONCE, where the broker has transactions.
    if (await broker_traits(Settings(kafka_bootstrap_servers=broker.bootstrap_servers))).kafka_like:
        results["http_exactly_once"] = await scenarios.http(
            broker, plan, progress, exactly_once=True
        )
    else:
        progress.done += 3
    results["efficiency"] = await _efficiency(plan, broker, progress)
    progress.step("priority under flood")
    results["priority_flood"] = {"kafka": await scenarios.priority_flood_kafka(broker, plan)}
    progress.step("warm affinity, window 0 and 4")
    results["affinity"] = [await scenarios.affinity(broker, window) for window in (0, 4)]
    progress.step("capacity on the batching mock: slots too high, right and auto")
    results["capacity_mock"] = await priority_hold.capacity(
        broker,
        pool='[[pools]]\nname = "sim"\nbackend = "mock"\nmodels = ["m"]\ncapacity = 4\n'
        "token_ms = 10\nbatch_cost = 0.1\n",
        model="m", right=4, lows=48 if plan.quick else 160, low_tokens=32, clients=16,
        highs=6 if plan.quick else 20, high_every_s=0.3,
    )  # fmt: skip
    progress.step("fair shares between two tenants on the mock: off, on, 2:1, leader killed")
    results["fairness_mock"] = await fairness_mock(broker, quick=plan.quick)
    results["real_model"] = await real_model(broker, progress, quick=plan.quick)
    results["prefix_routing"] = await prefix_routing(broker, progress, quick=plan.quick)
    results["batch"] = await batch_interference(broker, progress, quick=plan.quick)
    results["idle"] = await idle_cost(broker, plan, progress)
    results["refusing"] = await refusal_cost(broker, plan, progress)
    return results


async def _efficiency(
    plan: scenarios.BenchPlan, broker: BenchBroker, progress: Progress
) -> list[dict[str, Any]]:
    rows = []
    for gpus, latency in plan.efficiency_grid:
        progress.step(f"efficiency N={gpus} T={latency:g} ms")
        rows.append(
            {
                "gpus": gpus,
                "latency_ms": latency,
                "kafka": await scenarios.efficiency_kafka(
                    broker, gpus, latency, plan.efficiency_window_s
                ),
            }
        )
    return rows


async def _in_process(plan: scenarios.BenchPlan) -> dict[str, Any]:
    """The in-process reference allocator's figures (no broker: measured once a run)."""
    figures: dict[str, Any] = {}
    if not plan.costs:  # `bench --costs` compares the efficiency only
        figures["reference"] = await scenarios.reference(plan)
    figures["efficiency"] = [
        await scenarios.efficiency_reference(gpus, latency, plan.efficiency_window_s)
        for gpus, latency in plan.efficiency_grid
    ]
    if not plan.costs:
        figures["priority_flood"] = await scenarios.priority_flood_reference(plan)
    return figures


def brokers_of(choice: str | None, settings: Settings) -> list[str]:
    """Which brokers a run measures, one after the other."""
    if not settings.embedded:
        if choice not in (None, "external"):
            raise ConfigurationError(
                f"--broker {choice} starts its own broker, but INFERENCE_KAFKA_BOOTSTRAP_SERVERS "
                f"names one ({settings.bootstrap_servers}); unset it or drop --broker"
            )
        return ["external"]
    if choice == "both":
        return ["embedded", "apache-kafka"]
    return [choice or "embedded"]


def run_bench(args: argparse.Namespace) -> int:
    if args.plot_path:
        report.check_plotting()
    settings = Settings()
    choices = brokers_of(args.broker, settings)
    plan = scenarios.BenchPlan.make(args.quick)
    if args.costs:
        plan.costs_only()
    progress = Progress(plan.steps * len(choices) + 1)
    results: dict[str, Any] = {
        "command": " ".join(["inference-allocator", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "quick": plan.quick,
        "plan": {k: v for k, v in vars(plan).items() if k != "efficiency_grid"},
        "brokers": [],
    }
    progress.step("in-process reference")
    in_process = run_loop(_in_process(plan))
    for choice in choices:
        with BenchBroker.start(choice, settings) as broker:
            measured = run_loop(_on_broker(plan, broker, progress))
        results["brokers"].append(report.merge_reference(measured, in_process))
    progress.finish()
    print(report.cost_table(results) if plan.costs else report.table(results))
    if args.json_path:
        report.write_json(results, args.json_path)
        print(f"\nJSON written to {args.json_path}", file=sys.stderr)
    if args.plot_path:
        report.plot(results, args.plot_path)
        print(f"plot written to {args.plot_path}", file=sys.stderr)
    return 0
