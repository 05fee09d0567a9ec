"""What the command line shows people: the cluster's status as tables, answers as lines
(``rich``: colour on a terminal, plain text in a pipe)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .schemas import PRIORITIES, ResponseRecord, SystemStatus

_STATUS_STYLE = {"ok": "green", "error": "red", "expired": "yellow", "cancelled": "magenta"}


def render_status(status: SystemStatus, console: Console) -> None:
    """The queue per priority, the pools, the workers and the tenants, as tables."""
    broker = (
        "[green]broker answers[/]"
        if status.broker_reachable
        else f"[red]broker does not answer[/] ({status.broker_error})"
    )
    console.print(
        f"{broker}; [bold]{status.queue_size}[/] waiting; GPU slots: "
        f"{status.gpus_available} free, {status.gpus_busy} busy, {status.gpus_expired} expired"
    )
    queue = Table(title="Queue", title_justify="left")
    queue.add_column("priority")
    queue.add_column("waiting", justify="right")
    for priority in PRIORITIES:
        queue.add_row(priority.value, str(status.queue_depth.get(priority, 0)))
    console.print(queue)

    pools = Table(title="Pools", title_justify="left")
    for column in ("pool", "endpoint", "models"):
        pools.add_column(column)
    for column in ("slots", "free", "busy", "down"):
        pools.add_column(column, justify="right")
    pools.add_column("up")
    for pool in status.pools:
        pools.add_row(
            pool.name,
            pool.endpoint or "-",
            ", ".join(pool.models),
            str(pool.slots),
            str(pool.free),
            str(pool.busy),
            str(pool.down),
            "[green]yes[/]" if pool.up else "[red]no[/]",
        )
    console.print(pools)

    workers = Table(title="Workers", title_justify="left")
    workers.add_column("worker")
    workers.add_column("slots", justify="right")
    workers.add_column("busy", justify="right")
    for worker in status.workers:
        workers.add_row(worker.worker_id, str(worker.gpus_total), str(worker.gpus_busy))
    if not status.workers:
        workers.add_row("[yellow](no live worker)[/]", "", "")
    console.print(workers)

    if status.tenants:
        window = next((t.window for t in status.tenants if t.window), None)
        served = f"tokens ({window})" if window else "tokens"
        tenants = Table(title="Tenants", title_justify="left")
        for column in ("tenant", "priority"):
            tenants.add_column(column)
        for column in ("running", served, "share"):
            tenants.add_column(column, justify="right")
        for tenant in status.tenants:
            tenants.add_row(
                tenant.tenant,
                tenant.priority.value,
                str(tenant.running),
                "-" if tenant.tokens is None else str(tenant.tokens),
                "-" if tenant.share is None else f"{tenant.share:.0%}",
            )
        console.print(tenants)


def answer_line(response: ResponseRecord, preview: int = 60) -> Text:
    """One answer as one line: when, status, priority, model, id, times, where, text."""
    when = time.strftime("%H:%M:%S", time.localtime((response.completed_at_ms or 0) / 1000))
    line = Text(f"{when} ")
    line.append(f"{response.status:<9}", style=_STATUS_STYLE.get(response.status, "bold"))
    priority = response.priority.value if response.priority else "-"
    line.append(f" {priority:<6} {response.model_id or '-'} {response.request_id}")
    if response.queue_time_ms is not None:
        line.append(f" waited {response.queue_time_ms:.0f} ms")
    if response.inference_time_ms is not None:
        line.append(f" ran {response.inference_time_ms:.0f} ms")
    if response.worker_id:
        slot = f"/{response.gpu_id}" if response.gpu_id is not None else ""
        line.append(f" on {response.worker_id}{slot}", style="dim")
    said = response.output if response.status == "ok" else response.error
    if said:
        text = " ".join(said.split())
        line.append(f"  {text[:preview]}{'…' if len(text) > preview else ''}", style="italic")
    return line
