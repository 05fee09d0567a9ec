"""The benchmark's results as a table, as JSON and as a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the figure reached and whether it was met."""
    kafka, http = results["kafka_direct"], results["http"]
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float, target: float, higher_is_better: bool) -> None:
        met = value >= target if higher_is_better else value <= target
        rows.append({"target": name, "value": value, "goal": target, "met": met})

    for path, data in (("http", http), ("kafka", kafka)):
        add(f"{path} overhead p50 (ms) <= 5", data["overhead_ms"]["p50"], 5, False)
        add(f"{path} overhead p99 (ms) <= 20", data["overhead_ms"]["p99"], 20, False)
    for row in results["efficiency"]:
        if row["gpus"] == 16 and row["latency_ms"] == 20:
            add("efficiency N=16 T=20 ms >= 0.97", row["kafka"]["efficiency"], 0.97, True)
    flood = results["priority_flood"]["kafka"]
    goal = flood["latency_ms"] + 10
    add(
        f"high wait p99 under flood (ms) <= T+10 = {goal:g}",
        flood["high_wait_flood_ms"]["p99"],
        goal,
        False,
    )
    add("http throughput (req/s) >= 1000", http["throughput_rps"], 1000, True)
    add("kafka-direct throughput (req/s) >= 2000", kafka["throughput_rps"], 2000, True)
    return rows


# The three ways a request is served, as (label, key in the results).
_PATHS = (("http", "http"), ("kafka-direct", "kafka_direct"), ("in-process", "reference"))


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def table(results: dict[str, Any]) -> str:
    ref = results["reference"]
    lines = [
        f"Inference Allocator benchmark ({'quick' if results['quick'] else 'full'}), "
        f"broker: {results['broker']}, {results['cores']} cores",
        "",
        "1. Pipeline overhead, 0 ms inference, "
        f"{results['plan']['overhead_rate']:g} req/s offered (ms; ratio = kafka / in-process)",
        f"   {'path':<14}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}   ratio p50 / p99",
    ]
    for name, key in _PATHS:
        o = results[key]["overhead_ms"]
        ratio = (
            ""
            if key == "reference"
            else (
                f"   {_ratio(o['p50'], ref['overhead_ms']['p50'])} / "
                f"{_ratio(o['p99'], ref['overhead_ms']['p99'])}"
            )
        )
        lines.append(
            f"   {name:<14}{o['p50']:>9.2f}{o['p90']:>9.2f}{o['p99']:>9.2f}{o['max']:>9.2f}{ratio}"
        )
    lines += ["", "2. Throughput ceiling, 0 ms inference (req/s)"]
    for name, key in _PATHS:
        rps = results[key]["throughput_rps"]
        ratio = "" if key == "reference" else f"   {_ratio(rps, ref['throughput_rps'])}"
        lines.append(f"   {name:<14}{rps:>9.0f}{ratio}")
    lines += [
        "",
        "3. Allocator efficiency under a backlog: achieved / (N / T), steady state (whole run"
        " with ramp and drain); idle gap release->lease (ms)",
        f"   {'N':>3} {'T ms':>5} {'limit/s':>8} {'kafka':>15} {'in-process':>15} {'ratio':>6}"
        f" {'gap p50':>8} {'gap p99':>8} {'ref p50':>8} {'ref p99':>8}",
    ]
    for row in results["efficiency"]:
        k, r = row["kafka"], row["reference"]
        lines.append(
            f"   {row['gpus']:>3} {row['latency_ms']:>5g} {k['limit_rps']:>8.0f}"
            f" {k['efficiency']:>7.3f} ({k['efficiency_whole_run']:.3f})"
            f" {r['efficiency']:>7.3f} ({r['efficiency_whole_run']:.3f})"
            f" {_ratio(k['efficiency'], r['efficiency']):>6}"
            f" {k['idle_gap_ms']['p50']:>8.3f} {k['idle_gap_ms']['p99']:>8.3f}"
            f" {r['idle_gap_ms']['p50']:>8.3f} {r['idle_gap_ms']['p99']:>8.3f}"
        )
    fk, fr = results["priority_flood"]["kafka"], results["priority_flood"]["reference"]
    lines += [
        "",
        f"4. High-priority wait (end to end minus inference), N={fk['gpus']}, "
        f"T={fk['latency_ms']:g} ms, {fk['lows']} lows flooding (ms)",
        f"   {'':<24}{'p50':>9}{'p99':>9}",
    ]
    for name, data in (
        ("kafka, idle", fk["high_wait_idle_ms"]),
        ("kafka, under flood", fk["high_wait_flood_ms"]),
        ("in-process, idle", fr["high_wait_idle_ms"]),
        ("in-process, under flood", fr["high_wait_flood_ms"]),
    ):
        lines.append(f"   {name:<24}{data['p50']:>9.2f}{data['p99']:>9.2f}")
    lines += ["", "Targets"]
    for row in results["targets"]:
        mark = "met" if row["met"] else "MISSED"
        lines.append(f"   {mark:<7} {row['target']:<48} {row['value']:>10g}")
    return "\n".join(lines)


def write_json(results: dict[str, Any], path: str) -> None:
    Path(path).write_text(json.dumps(results, indent=2) + "\n")


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigurationError(
            "--plot needs matplotlib: pip install 'inference-allocator[bench]'"
        ) from None
    return plt


def check_plotting() -> None:
    """Fail before a long run, not after it, when the plot cannot be drawn."""
    _pyplot()


def plot(results: dict[str, Any], path: str) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    names = [name for name, _ in _PATHS]
    keys = [key for _, key in _PATHS]

    ax = axes[0][0]
    for pos, pct in enumerate(("p50", "p90", "p99")):
        values = [results[k]["overhead_ms"][pct] for k in keys]
        ax.bar([i + pos * 0.27 for i in range(3)], values, width=0.27, label=pct)
    ax.set_xticks([i + 0.27 for i in range(3)], names)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title("1. pipeline overhead, 0 ms inference")
    ax.legend()

    ax = axes[0][1]
    values = [results[k]["throughput_rps"] for k in keys]
    ax.bar(names, values, color=["tab:blue", "tab:orange", "tab:gray"])
    ax.set_ylabel("requests / s")
    ax.set_title("2. throughput ceiling, 0 ms inference")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom")

    ax = axes[1][0]
    rows = results["efficiency"]
    labels = [f"N={r['gpus']}\nT={r['latency_ms']:g}" for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["kafka"]["efficiency"] for r in rows], 0.4, label="kafka")
    ax.bar(
        [x + 0.2 for x in xs],
        [r["reference"]["efficiency"] for r in rows],
        0.4,
        label="in-process",
        color="tab:gray",
    )
    ax.axhline(0.97, color="red", linestyle="--", linewidth=1, label="target 0.97")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_title("3. efficiency: achieved / (N/T)")
    ax.legend(fontsize=8)

    ax = axes[1][1]
    fk, fr = results["priority_flood"]["kafka"], results["priority_flood"]["reference"]
    groups = [
        ("kafka idle", fk["high_wait_idle_ms"]),
        ("kafka flood", fk["high_wait_flood_ms"]),
        ("in-proc idle", fr["high_wait_idle_ms"]),
        ("in-proc flood", fr["high_wait_flood_ms"]),
    ]
    for pos, pct in enumerate(("p50", "p99")):
        ax.bar([i + pos * 0.4 for i in range(4)], [g[1][pct] for g in groups], 0.4, label=pct)
    ax.axhline(
        fk["latency_ms"] + 10,
        color="red",
        linestyle="--",
        linewidth=1,
        label=f"target T+10 = {fk['latency_ms'] + 10:g} ms",
    )
    ax.set_xticks([i + 0.2 for i in range(4)], [g[0] for g in groups], fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title(f"4. high-priority wait, N={fk['gpus']}, T={fk['latency_ms']:g} ms")
    ax.legend(fontsize=8)

    fig.suptitle(f"Inference Allocator on {results['broker']}, {results['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
