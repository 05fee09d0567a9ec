"""``inference-allocator bench``: run every scenario, print, and write JSON and a plot."""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from typing import Any

from ..cli import run_loop
from ..config import Settings
from . import report, scenarios
from .stack import BenchBroker
from .stats import Progress


async def _run(plan: scenarios.BenchPlan, broker: BenchBroker) -> dict[str, Any]:
    progress = Progress(plan.steps)
    results: dict[str, Any] = {
        "command": " ".join(["inference-allocator", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "broker": broker.kind,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "quick": plan.quick,
        "plan": {k: v for k, v in vars(plan).items() if k != "efficiency_grid"},
    }
    results["kafka_direct"] = await scenarios.kafka_direct(broker, plan, progress)
    results["http"] = await scenarios.http(broker, plan, progress)
    results["reference"] = await scenarios.reference(plan)
    results["efficiency"] = []
    for gpus, latency in plan.efficiency_grid:
        progress.step(f"efficiency N={gpus} T={latency:g} ms")
        results["efficiency"].append(
            {
                "gpus": gpus,
                "latency_ms": latency,
                "kafka": await scenarios.efficiency_kafka(
                    broker, gpus, latency, plan.efficiency_window_s
                ),
                "reference": await scenarios.efficiency_reference(
                    gpus, latency, plan.efficiency_window_s
                ),
            }
        )
    progress.step("priority under flood")
    results["priority_flood"] = {
        "kafka": await scenarios.priority_flood_kafka(broker, plan),
        "reference": await scenarios.priority_flood_reference(plan),
    }
    progress.finish()
    results["targets"] = report.targets(results)
    return results


def run_bench(args: argparse.Namespace) -> int:
    if args.plot_path:
        report.check_plotting()
    plan = scenarios.BenchPlan.make(args.quick)
    with BenchBroker.start(Settings()) as broker:
        results = run_loop(_run(plan, broker))
    print(report.table(results))
    if args.json_path:
        report.write_json(results, args.json_path)
        print(f"\nJSON written to {args.json_path}", file=sys.stderr)
    if args.plot_path:
        report.plot(results, args.plot_path)
        print(f"plot written to {args.plot_path}", file=sys.stderr)
    return 0
