"""The benchmark's results as a table, as JSON and as a PNG plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError


def merge_reference(measured: dict[str, Any], in_process: dict[str, Any]) -> dict[str, Any]:
    """One broker's figures beside the in-process reference's (measured once a run)."""
    merged = dict(measured)
    merged["efficiency"] = [
        {**row, "reference": ref}
        for row, ref in zip(measured["efficiency"], in_process["efficiency"], strict=True)
    ]
    if "reference" in in_process:  # a full run, not ``--costs``
        merged["reference"] = in_process["reference"]
        merged["priority_flood"] = {
            **measured["priority_flood"],
            "reference": in_process["priority_flood"],
        }
    merged["targets"] = targets(merged) if "reference" in in_process else cost_targets(merged)
    return merged


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets on one broker, each with the figure reached and whether it was met.

    Ratios to the thinnest pipeline on the same broker in the same run are the ones that
    hold on any machine; the absolute figures are the first benchmark's, kept to follow.
    """
    kafka, http = results["kafka_direct"], results["http"]
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float, target: float, higher_is_better: bool) -> None:
        met = value >= target if higher_is_better else value <= target
        rows.append({"target": name, "value": round(value, 4), "goal": target, "met": met})

    for path, data in (("http", http), ("kafka", kafka)):
        add(f"{path} overhead p50 (ms) <= 5", data["overhead_ms"]["p50"], 5, False)
        add(f"{path} overhead p99 (ms) <= 20", data["overhead_ms"]["p99"], 20, False)
    for row in results["efficiency"]:
        if row["gpus"] == 16 and row["latency_ms"] == 20:
            add("efficiency N=16 T=20 ms >= 0.97", row["kafka"]["efficiency"], 0.97, True)
            add(
                "efficiency N=16 T=20 ms / in-process >= 0.97",
                row["kafka"]["efficiency"] / row["reference"]["efficiency"],
                0.97,
                True,
            )
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
    real = results.get("real_model") or {}
    if "direct" in real:
        direct, allocator = real["direct"], real["allocator"]
        add(
            "real model: one client's p50 / llama-server directly <= 1.05",
            allocator["one_client_ms"]["p50"] / direct["one_client_ms"]["p50"],
            1.05,
            False,
        )
        add(
            f"real model: throughput at {direct['concurrency']} clients / directly >= 0.95",
            allocator["throughput_rps"] / direct["throughput_rps"],
            0.95,
            True,
        )
        if "streaming" in direct and "streaming" in allocator:
            ours, theirs = allocator["streaming"], direct["streaming"]
            add(
                "real model: time to first token added at p50 (ms) <= 15",
                ours["time_to_first_token_ms"]["p50"] - theirs["time_to_first_token_ms"]["p50"],
                15,
                False,
            )
            add(
                "real model: time between tokens added at p50 (ms) <= 2",
                ours["inter_token_ms"]["p50"] - theirs["inter_token_ms"]["p50"],
                2,
                False,
            )
        preempting = real.get("preemption")
        if preempting:
            add(
                "real model: a high's first token behind two long lows, with preemption "
                f"(ms) <= 1.5x idle + {preempting['preempt_after_ms']} ms",
                preempting["with"]["first_token_ms"],
                preempting["target_ms"],
                False,
            )
        if real.get("capacity"):
            rows += _capacity_targets("real model", real["capacity"])
    if results.get("capacity_mock"):
        rows += _capacity_targets("batching mock", results["capacity_mock"])
    rows += _fairness_targets("mock", results.get("fairness_mock"))
    rows += _fairness_targets("real model", real.get("fairness"))
    prefix = results.get("prefix_routing") or {}
    if "on" in prefix:
        add(
            "prefix routing on two llama-servers: time to first token p50, on / off <= 0.5",
            prefix["ttft_p50_ratio"],
            0.5,
            False,
        )
        add(
            "prefix routing on two llama-servers: throughput, on / off >= 1.3",
            prefix["throughput_ratio"],
            1.3,
            True,
        )
    rows += _batch_targets(results.get("batch"))
    return rows + cost_targets(results)


def _capacity_targets(where: str, capacity: dict[str, Any]) -> list[dict[str, Any]]:
    auto = capacity["auto"]
    return [
        {
            "target": f"{where}: slots = auto, throughput / the right fixed slots >= 0.95",
            "value": auto["throughput_ratio_to_right"],
            "goal": 0.95,
            "met": auto["throughput_ratio_to_right"] >= 0.95,
        },
        {
            "target": f"{where}: slots = auto, highs' first token p99 / the right slots <= 1.2",
            "value": auto["high_p99_ratio_to_right"],
            "goal": 1.2,
            "met": auto["high_p99_ratio_to_right"] <= 1.2,
        },
    ]


def _capacity_lines(where: str, capacity: dict[str, Any]) -> list[str]:
    lines = [
        f"   {where}: a low flood and streamed highs; the server runs "
        f"{capacity['right_slots']} at once. Flood req/s, highs' first token p50/p99 (ms)"
    ]
    for name in ("too_high", "right", "auto"):
        data = capacity[name]
        first = data["high_first_token_ms"]
        lines.append(
            f"   slots {name:<10}{data['throughput_rps']:>9.2f}{first['p50']:>10.1f}"
            f"{first['p99']:>10.1f}"
        )
    return lines


def _fairness_targets(where: str, fairness: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not fairness:
        return []
    rows = []

    def add(name: str, value: float, met: bool) -> None:
        rows.append({"target": f"fair shares on the {where}: {name}", "value": value,
                     "goal": name.rsplit(" ", 1)[-1], "met": met})  # fmt: skip

    b = fairness["on"]["share_b"]
    add("B's share of tokens, A offering 10x, >= 0.45", b, b >= 0.45)
    ratio = fairness["throughput_ratio"]
    add("throughput, on / off >= 0.97", ratio, ratio >= 0.97)
    if "weighted" in fairness:
        b = fairness["weighted"]["share_b"]
        add("weights 2:1, B's share 0.33 within 0.05", b, abs(b - 1 / 3) <= 0.05)
    if "leader_killed" in fairness:
        b = fairness["leader_killed"]["share_b"]
        add("the leader killed mid-run, B's share 0.5 within 0.05", b, abs(b - 0.5) <= 0.05)
    return rows


def _batch_targets(batch: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not batch:
        return []
    lines = batch["lines"]
    return [
        _row(f"{lines}-line batch beside interactive traffic: high wait p99, with / without "
             "<= 1.1", batch["high_p99_ratio"], 1.1, False),
        _row(f"{lines}-line batch: interactive low wait p99, with / without <= 1.5",
             batch["low_p99_ratio"], 1.5, False),
        _row(f"{lines}-line batch: the slots' busy share while it runs >= 0.9",
             batch["with_batch"]["busy_share"], 0.9, True),
    ]  # fmt: skip


def _row(name: str, value: float, goal: float, higher_is_better: bool) -> dict[str, Any]:
    met = value >= goal if higher_is_better else value <= goal
    return {"target": name, "value": round(value, 4), "goal": goal, "met": met}


def _batch_lines(batch: dict[str, Any] | None) -> list[str]:
    lines = ["", "6e. A batch beside interactive traffic (the Batch API)"]
    if not batch:
        return [*lines, "   not measured"]
    shared = batch["with_batch"]
    lines.append(
        f"   {batch['slots']} mock slots of {batch['latency_ms']} ms; high and low requests at "
        f"{batch['rate_per_level']}/s each; then a {batch['lines']}-line batch at low"
    )
    lines.append("   waits (ms)        high p50   p99    low p50   p99")
    for name in ("alone", "with_batch"):
        waits = batch[name]["waits"]
        lines.append(
            f"   {name:<16}{waits['high']['p50']:>9.1f}{waits['high']['p99']:>7.1f}"
            f"{waits['low']['p50']:>10.1f}{waits['low']['p99']:>7.1f}"
        )
    lines.append(
        f"   the batch: {shared['completed']}/{batch['lines']} lines in "
        f"{shared['completion_s']:.1f} s; the slots busy {shared['busy_share']:.3f} of its "
        f"{shared['window_s']:.1f} s; the idle capacity it had would take {shared['best_s']:.1f} "
        f"s at best ({shared['idle_capacity_use']:.2f} of it used)"
    )
    return lines


def _fairness_lines(where: str, fairness: dict[str, Any] | None) -> list[str]:
    if not fairness:
        return []
    lines = [
        f"   fair shares on the {where}: tenant A offers {fairness['ratio']}x tenant B's "
        "requests, both backlogged; shares of tokens A/B, answers/s"
    ]
    for name in ("off", "on", "weighted", "leader_killed"):
        if name in fairness:
            data = fairness[name]
            lines.append(
                f"   {name:<14}{data['share_a']:>7.3f}{data['share_b']:>7.3f}"
                f"{data['answers_per_s']:>9.2f}"
            )
    return lines


def _prefix_lines(prefix: dict[str, Any]) -> list[str]:
    lines = ["", "6c. Prefix routing: two llama-servers of one model, questions about documents"]
    if "on" not in prefix:
        return [*lines, f"   skipped: {prefix.get('skipped', 'not measured')}"]
    lines.append(
        f"   {prefix['questions']} questions about {prefix['documents']} documents, "
        f"{prefix['clients']} clients; first token p50/p99 (ms), questions/s, the servers' "
        "cache hits (cached / prompt tokens), prompt tokens they processed"
    )
    for name in ("off", "on"):
        data = prefix[name]
        first = data["time_to_first_token_ms"]
        lines.append(
            f"   routing {name:<5}{first['p50']:>9.1f}{first['p99']:>9.1f}"
            f"{data['throughput_qps']:>8.3f}{data['cache_hit_rate']:>7.2f}"
            f"{data['prefilled_tokens']:>8}"
        )
    return lines


def cost_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """What a request costs against the thin pipeline, the OpenAI path against calling the
    server directly (issue 26), and what an idle stack and a refusal cost (issue 12)."""
    rows: list[dict[str, Any]] = []

    def add(name: str, value: float, target: float, higher_is_better: bool) -> None:
        met = value >= target if higher_is_better else value <= target
        rows.append({"target": name, "value": round(value, 4), "goal": target, "met": met})

    http, thin = results.get("http"), results.get("thin")
    if http and thin:
        add(
            f"http throughput at {http['concurrency']} clients / thin pipeline >= 0.8",
            http["throughput_rps"] / thin["throughput_rps"],
            0.8,
            True,
        )
        lone = thin["one_client_ms"]["p50"]
        add("one client's p50 latency / thin pipeline <= 1.2",
            http["one_client_ms"]["p50"] / lone, 1.2, False)  # fmt: skip
        path = results.get("openai_path")
        if path:
            add("openai path: one client's p50 added / thin one client's p50 <= 1.2",
                path["added_p50_ms"] / lone, 1.2, False)  # fmt: skip
            add("openai path: first token added at p50 / thin one client's p50 <= 1.5",
                path["first_token_added_p50_ms"] / lone, 1.5, False)  # fmt: skip
    for row in results["efficiency"]:
        n, t = row["gpus"], row["latency_ms"]
        goal = 0.95 if t >= 20 else 0.9 if (n, t) == (64, 5) else None
        if goal is not None and n <= 64:
            add(
                f"efficiency N={n} T={t:g} ms / in-process >= {goal:g}",
                row["kafka"]["efficiency"] / row["reference"]["efficiency"],
                goal,
                True,
            )
    idle = results.get("idle")
    if idle:
        add("idle: the whole stack (% of one core) <= 5", idle["cpu_percent"]["total"], 5, False)
    refusing = results.get("refusing")
    if refusing and refusing["phases"][-1]["refused"]:
        add(
            "refusing: bridge CPU per refusal / per admitted <= 0.1",
            refusing["cpu_per_refused_ms"] / refusing["cpu_per_admitted_ms"],
            0.1,
            False,
        )
        flood = refusing["phases"][-1]
        add(
            "refusing: refused p50 / admitted p50 under flood <= 0.1",
            flood["refused_ms"]["p50"] / flood["admitted_ms"]["p50"],
            0.1,
            False,
        )
    return rows


# The ways a request is served, as (label, key in the results).
_PATHS = (
    ("http", "http"),
    ("http exactly-once", "http_exactly_once"),  # only where the broker has transactions
    ("thin pipeline", "thin"),
    ("kafka-direct", "kafka_direct"),
    ("in-process", "reference"),
)


def _paths(results: dict[str, Any]) -> list[tuple[str, str]]:
    return [(name, key) for name, key in _PATHS if key in results]


def _efficiency_lines(results: dict[str, Any], number: str) -> list[str]:
    lines = [
        "",
        f"{number} Allocator efficiency under a backlog: achieved / (N / T), steady state "
        "(whole run with ramp and drain); idle gap release->lease (ms); the worker's CPU "
        "per request (ms)",
        f"   {'N':>3} {'T ms':>5} {'limit/s':>8} {'kafka':>15} {'in-process':>15} {'ratio':>6}"
        f" {'gap p50':>8} {'gap p99':>8} {'ref p50':>8} {'ref p99':>8} {'CPU/req':>8}",
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
            f" {k.get('worker_cpu_per_request_ms', float('nan')):>8.3f}"
        )
    return lines


def _cost_lines(results: dict[str, Any], idle_number: str, refusing_number: str) -> list[str]:
    lines: list[str] = []
    idle = results.get("idle")
    if idle:
        cpu = idle["cpu_percent"]
        lines += [
            "",
            f"{idle_number} Idle cost: the whole stack left alone for {idle['quiet_s']:g} s "
            "(% of one core), then lone requests after a quiet period",
            "   " + "  ".join(f"{name} {share:.2f}" for name, share in cpu.items()),
            f"   first request after the quiet period, then after {idle['lull_s']:g} s lulls "
            f"(ms): {', '.join(f'{v:.1f}' for v in idle['first_after_quiet_ms'])}; "
            f"back to back p50 {idle['warm_ms']['p50']:.2f}",
        ]
    refusing = results.get("refusing")
    if refusing:
        lines += [
            "",
            f"{refusing_number} Refusing: N={refusing['gpus']}, "
            f"T={refusing['latency_ms']:g} ms, queue {refusing['queue_max_size']}; offered at "
            "1/4, 3/4 and 10 times the capacity",
            f"   {'offered/s':>10}{'admitted':>10}{'refused':>9}{'bridge CPU s':>14}"
            f"{'admitted p50':>14}{'refused p50':>13} (ms)",
        ]
        for phase in refusing["phases"]:
            other = ", ".join(f"{n} {what}" for what, n in phase.get("other", {}).items())
            lines.append(
                f"   {phase['offered_rps']:>10g}{phase['admitted']:>10}{phase['refused']:>9}"
                f"{phase['bridge_cpu_s']:>14.2f}{phase['admitted_ms']['p50']:>14.1f}"
                f"{phase['refused_ms']['p50']:>13.2f}" + (f"   other: {other}" if other else "")
            )
        lines.append(
            f"   bridge CPU per admitted request {refusing['cpu_per_admitted_ms']:.3f} ms, "
            f"per refused request {refusing['cpu_per_refused_ms']:.3f} ms, base "
            f"{refusing['bridge_base_cpu_percent']:.1f} % of a core"
        )
    return lines


def _target_lines(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    lines += ["", "Targets"]
    for row in results["targets"]:
        mark = "met" if row["met"] else "MISSED"
        lines.append(f"   {mark:<7} {row['target']:<52} {row['value']:>10g}")
    return lines


def _request_cost_lines(results: dict[str, Any], number: str) -> list[str]:
    """The HTTP path against the thin pipeline: one client, the ceiling, CPU per request."""
    http, thin = results.get("http"), results.get("thin")
    if not (http and thin):
        return []
    lines = [
        "",
        f"{number} A request's cost, 0 ms inference: one client at a time (ms), then the "
        f"ceiling at {http['concurrency']} clients (req/s); ratio = to the thin pipeline",
        f"   {'path':<18}{'p50':>9}{'p99':>9}{'req/s':>9}",
    ]
    for name, key in (("http", "http"), ("thin pipeline", "thin")):
        o, rps = results[key]["one_client_ms"], results[key]["throughput_rps"]
        ratio = ""
        if key == "http":
            ratio = (
                f"   p50 {_ratio(o['p50'], thin['one_client_ms']['p50'])}, "
                f"req/s {_ratio(rps, thin['throughput_rps'])}"
            )
        lines.append(f"   {name:<18}{o['p50']:>9.2f}{o['p99']:>9.2f}{rps:>9.0f}{ratio}")
    return lines + _cpu_lines(results)


def _openai_path_lines(results: dict[str, Any], number: str) -> list[str]:
    path = results.get("openai_path")
    if not path:
        return []
    lone = results["thin"]["one_client_ms"]["p50"] if "thin" in results else 0.0
    lines = [
        "",
        f"{number} The OpenAI path: one client's /v1/chat/completions ({path['tokens']} "
        "tokens) to a server that answers at once, directly and through the allocator (ms); "
        "added = through minus directly, ratio = to the thin pipeline's one-client p50",
        f"   {'':<24}{'p50':>9}{'p99':>9}{'added p50':>11}{'ratio':>8}",
    ]
    for label, key, added in (
        ("answered whole", "whole_ms", path["added_p50_ms"]),
        ("streamed: first token", "first_token_ms", path["first_token_added_p50_ms"]),
    ):
        for where in ("direct", "allocator"):
            o = path[where][key]
            extra = f"{added:>11.2f}{_ratio(added, lone):>8}" if where == "allocator" else ""
            lines.append(f"   {label + ', ' + where:<24}{o['p50']:>9.2f}{o['p99']:>9.2f}{extra}")
    return lines


def cost_table(results: dict[str, Any]) -> str:
    """``bench --costs``: per broker, what a request costs (HTTP and OpenAI paths), the
    efficiency where it costs, the idle stack, refusing."""
    lines = [
        f"Inference Allocator benchmark, costs only ({'quick' if results['quick'] else 'full'}),"
        f" {results['cores']} cores, Python {results['python']}; brokers measured one after "
        "the other"
    ]
    for data in results["brokers"]:
        lines += ["", "=" * 100, f"broker: {data['broker']}", "=" * 100]
        lines += _request_cost_lines(data, "1.")
        lines += _openai_path_lines(data, "2.")
        lines += _efficiency_lines(data, "3.")
        lines += _cost_lines(data, "4.", "5.")
        lines += _target_lines(data)
    return "\n".join(lines)


def _ratio(value: float, reference: float) -> str:
    return f"{value / reference:.2f}x" if reference else "-"


def table(results: dict[str, Any]) -> str:
    """Every broker's figures, then the headline figures side by side."""
    brokers = results["brokers"]
    lines = [
        f"Inference Allocator benchmark ({'quick' if results['quick'] else 'full'}), "
        f"{results['cores']} cores, Python {results['python']}; brokers measured one "
        "after the other"
    ]
    for data in brokers:
        lines += ["", "=" * 100, f"broker: {data['broker']}", "=" * 100, _broker_table(data)]
    if len(brokers) > 1:
        lines += ["", _side_by_side(brokers)]
    return "\n".join(lines)


def _side_by_side(brokers: list[dict[str, Any]]) -> str:
    names = [b["broker"] for b in brokers]
    width = max(24, *(len(n) + 2 for n in names))
    rows: list[tuple[str, list[str]]] = [
        ("http one client p50 (ms)", [f"{b['http']['one_client_ms']['p50']:.2f}" for b in brokers]),
        ("thin one client p50 (ms)", [f"{b['thin']['one_client_ms']['p50']:.2f}" for b in brokers]),
        (
            f"http req/s, {brokers[0]['http']['concurrency']} clients",
            [f"{b['http']['throughput_rps']:.0f}" for b in brokers],
        ),
        (
            f"thin req/s, {brokers[0]['thin']['concurrency']} clients",
            [f"{b['thin']['throughput_rps']:.0f}" for b in brokers],
        ),
        ("http overhead p50 (ms)", [f"{b['http']['overhead_ms']['p50']:.2f}" for b in brokers]),
        ("http overhead p99 (ms)", [f"{b['http']['overhead_ms']['p99']:.2f}" for b in brokers]),
        (
            "kafka overhead p50 (ms)",
            [f"{b['kafka_direct']['overhead_ms']['p50']:.2f}" for b in brokers],
        ),
        ("kafka-direct req/s", [f"{b['kafka_direct']['throughput_rps']:.0f}" for b in brokers]),
    ]
    for target in brokers[0]["targets"]:
        row = next(t for t in brokers[0]["targets"] if t["target"] == target["target"])
        values = []
        for b in brokers:
            mine = next(t for t in b["targets"] if t["target"] == row["target"])
            values.append(f"{mine['value']:g} {'met' if mine['met'] else 'MISSED'}")
        rows.append((row["target"], values))
    label = max(len(r[0]) for r in rows) + 2
    out = ["Side by side", "   " + " " * label + "".join(f"{n:>{width}}" for n in names)]
    out += [
        "   " + f"{name:<{label}}" + "".join(f"{v:>{width}}" for v in values)
        for name, values in rows
    ]
    return "\n".join(out)


def _cpu_lines(results: dict[str, Any]) -> list[str]:
    """CPU per request of each process under the throughput ceiling, where measured."""
    names = ("broker", "worker", "bridge", "load generator")
    rows = []
    for name, key in _paths(results):
        cpu = results[key].get("cpu_per_request_ms")
        if cpu:
            cells = "".join(f"{cpu[n]:>10.3f}" if n in cpu else f"{'-':>10}" for n in names)
            rows.append(f"   {name:<18}{cells}{sum(cpu.values()):>10.3f}")
    if not rows:
        return []
    header = "".join(f"{n.split()[0]:>10}" for n in names)
    return ["", "   CPU per request under the ceiling (ms)", f"   {'':<18}{header}{'total':>10}",
            *rows]  # fmt: skip


def _broker_table(results: dict[str, Any]) -> str:
    ref, thin = results["reference"], results["thin"]
    lines = [
        "1. Pipeline overhead, 0 ms inference, "
        f"{results['http']['overhead_ms']['n']} requests at a steady offered load (ms); "
        "ratio p50 = to the thin pipeline / to in-process",
        f"   {'path':<18}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}   ratio p50",
    ]
    http = results["http"]
    for name, key in _paths(results):
        o = results[key]["overhead_ms"]
        ratio = ""
        if key not in ("reference", "thin"):
            ratio = (
                f"   {_ratio(o['p50'], thin['overhead_ms']['p50'])} / "
                f"{_ratio(o['p50'], ref['overhead_ms']['p50'])}"
            )
        lines.append(
            f"   {name:<18}{o['p50']:>9.2f}{o['p90']:>9.2f}{o['p99']:>9.2f}{o['max']:>9.2f}{ratio}"
        )
    lines += ["", "   One client at a time, end to end (ms); ratio = to the thin pipeline"]
    for name, key in _paths(results):
        o = results[key]["one_client_ms"]
        ratio = ""
        if key == "http":
            ratio = f"   {_ratio(o['p50'], thin['one_client_ms']['p50'])}"
        elif key == "http_exactly_once":
            ratio = f"   {_ratio(o['p50'], http['one_client_ms']['p50'])} of http"
        lines.append(
            f"   {name:<18}{o['p50']:>9.2f}{o['p90']:>9.2f}{o['p99']:>9.2f}{o['max']:>9.2f}{ratio}"
        )
    lines += ["", "2. Throughput ceiling, 0 ms inference (req/s; ratio = to the thin pipeline)"]
    for name, key in _paths(results):
        rps = results[key]["throughput_rps"]
        clients = results[key]["concurrency"]
        ratio = ""
        if key == "http":
            ratio = f"   {_ratio(rps, thin['throughput_rps'])}"
        elif key == "http_exactly_once":
            ratio = f"   {_ratio(rps, http['throughput_rps'])} of http"
        lines.append(f"   {name:<18}{rps:>9.0f}  {clients:>4} clients{ratio}")
    lines += _cpu_lines(results)
    lines += _openai_path_lines(results, "2b.")
    lines += _efficiency_lines(results, "3.")
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
    lines += [
        "",
        "5. Warm affinity: a slot loading a model (20 ms) on a switch, 10 ms inferences, "
        "two models interleaved",
    ]
    for row in results.get("affinity", []):
        lines.append(
            f"   window {row['window']}: {row['model_loads']:>4} model loads for "
            f"{row['requests']} requests, {row['throughput_rps']:>7.1f} req/s"
        )
    real = results.get("real_model") or {}
    lines += [
        "",
        "6. Real model: llama-server (llama.cpp, SmolLM2) directly and through the allocator",
    ]
    if "direct" in real:
        lines.append(
            f"   {real['params']}; one client p50/p90 (ms), then req/s with "
            f"{real['direct']['concurrency']} clients on its 2 parallel slots"
        )
        for name in ("direct", "allocator"):
            data = real[name]
            one = data["one_client_ms"]
            lines.append(
                f"   {name:<14}{one['p50']:>9.1f}{one['p90']:>9.1f}"
                f"{data['throughput_rps']:>10.2f} req/s"
            )
        if "streaming" in real["direct"]:
            lines.append(
                f"   streamed ({real['direct']['streaming']['max_tokens']} tokens, one at a "
                "time, the openai client): time to first token p50/p90, between tokens "
                "p50/p90 (ms)"
            )
            for name in ("direct", "allocator"):
                data = real[name].get("streaming")
                if data:
                    first, gap = data["time_to_first_token_ms"], data["inter_token_ms"]
                    lines.append(
                        f"   {name:<14}{first['p50']:>9.1f}{first['p90']:>9.1f}"
                        f"{gap['p50']:>9.2f}{gap['p90']:>9.2f}"
                    )
        preempting = real.get("preemption")
        if preempting:
            idle = preempting["idle_first_token_ms"]["p50"]
            lines.append(
                f"   a high behind two lows of {preempting['low_tokens']} tokens, first token "
                f"(ms); idle server {idle:.1f}"
            )
            for name in ("with", "without"):
                data = preempting[name]
                lines.append(
                    f"   {name + ' preemption':<20}{data['first_token_ms']:>9.1f} "
                    f"({data['ratio_to_idle']:.1f}x idle); lows completed "
                    f"{data['lows_completed']}/2, preemptions {data['preemptions']}"
                )
        if real.get("capacity"):
            lines += _capacity_lines("capacity", real["capacity"])
    else:
        lines.append(f"   skipped: {real.get('skipped', 'not measured')}")
    if results.get("capacity_mock"):
        lines += ["", "6b. Capacity on the batching mock (slots too high, right, auto)"]
        lines += _capacity_lines("mock", results["capacity_mock"])
    lines += _prefix_lines(results.get("prefix_routing") or {})
    lines += ["", "6d. Fair shares between tenants"]
    lines += _fairness_lines("mock", results.get("fairness_mock"))
    lines += _fairness_lines("real model", (results.get("real_model") or {}).get("fairness"))
    lines += _batch_lines(results.get("batch"))
    lines += _cost_lines(results, "7.", "8.")
    lines += _target_lines(results)
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
    """One row of four panels per broker."""
    plt = _pyplot()
    brokers = results["brokers"]
    fig, grid = plt.subplots(len(brokers), 4, figsize=(20, 4.8 * len(brokers)), squeeze=False)
    for axes, data in zip(grid, brokers, strict=True):
        _plot_broker(axes, data)
    fig.suptitle(f"Inference Allocator benchmark, {results['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_broker(axes: Any, results: dict[str, Any]) -> None:
    # Only the paths this broker measured (exactly-once needs transactions).
    names = [name for name, key in _PATHS if key in results]
    keys = [key for _, key in _PATHS if key in results]
    broker = results["broker"]

    ax = axes[0]
    for pos, pct in enumerate(("p50", "p90", "p99")):
        values = [results[k]["overhead_ms"][pct] for k in keys]
        ax.bar([i + pos * 0.27 for i in range(len(keys))], values, width=0.27, label=pct)
    ax.set_xticks([i + 0.27 for i in range(len(keys))], names, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title(f"{broker}\n1. pipeline overhead, 0 ms inference", fontsize=10)
    ax.legend(fontsize=8)

    ax = axes[1]
    values = [results[k]["throughput_rps"] for k in keys]
    ax.bar(names, values, color=[f"C{i}" for i in range(len(names))])
    ax.set_yscale("log")
    ax.set_ylabel("requests / s (log)")
    ax.set_title("2. throughput ceiling, 0 ms inference", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.0f}", ha="center", va="bottom", fontsize=8)

    ax = axes[2]
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
    ax.set_title("3. efficiency: achieved / (N/T)", fontsize=10)
    ax.legend(fontsize=8)

    ax = axes[3]
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
    ax.set_title(f"4. high-priority wait, N={fk['gpus']}, T={fk['latency_ms']:g} ms", fontsize=10)
    ax.legend(fontsize=8)
