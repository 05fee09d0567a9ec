"""What the dashboard shows, kept by a bridge: the queue depth of the last minutes (sampled
every second), the latest closed statistics windows (``<prefix>.stats``, which the reader
follows once somebody opened the dashboard or asked for the status), and the picture of
now."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import TYPE_CHECKING, Any

from ..schemas import ResponseRecord, now_ms

if TYPE_CHECKING:
    from .bridge import Bridge

log = logging.getLogger(__name__)

HISTORY_S = 300
RECENT = 20


class Board:
    def __init__(self, bridge: Bridge):
        self.bridge = bridge
        self.history: deque[dict[str, int]] = deque(maxlen=HISTORY_S)
        self.watchers = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._sample(), name="board-sampler"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def watch(self) -> None:
        """A dashboard opened: the statistics windows are read from now on."""
        self.watchers += 1
        await self.bridge.reader.stats.ensure_started()

    def unwatch(self) -> None:
        self.watchers -= 1

    async def _sample(self) -> None:
        while True:
            depth = self.bridge.reader.status().queue_depth
            self.history.append({"t": now_ms(), **{p.value: n for p, n in depth.items()}})
            await asyncio.sleep(1.0)

    def picture(self) -> dict[str, Any]:
        """Everything the page shows, now."""
        reader = self.bridge.reader
        status = reader.status()
        return {
            "broker_reachable": status.broker_reachable,
            "queue_size": status.queue_size,
            "queue_depth": {p.value: n for p, n in status.queue_depth.items()},
            "gpus": {
                "available": status.gpus_available,
                "busy": status.gpus_busy,
                "expired": status.gpus_expired,
            },
            "workers": len(status.workers),
            "slots": slots_of(self.bridge),
            "queue_history": list(self.history),
            "stats": reader.stats.windows(),
            "recent": recent_answers(reader.results.newest(RECENT)),
        }


def recent_answers(raw: list[bytes]) -> list[dict[str, Any]]:
    """The newest answers (``raw``, newest first), decoded for the page."""
    shown = []
    for value in raw:
        try:
            answer = ResponseRecord.model_validate_json(value)
        except ValueError:
            continue
        shown.append(
            answer.model_dump(
                include={
                    "request_id", "model_id", "priority", "status", "queue_time_ms",
                    "inference_time_ms", "worker_id", "gpu_id", "completed_at_ms",
                    "preemptions",
                }
            )
        )  # fmt: skip
    return shown


def slots_of(bridge: Any) -> list[dict[str, Any]]:
    now = now_ms()
    rows = []
    for slot in sorted(bridge.reader.slot_view.live(now), key=lambda s: s.slot_id):
        leased = slot.state == "leased"
        rows.append(
            {
                "worker": slot.worker_id,
                "pool": slot.pool or "mock",
                "gpu": slot.gpu_id,
                "state": slot.state,
                "model": slot.model,
                "request_id": slot.request_id if leased else None,
                "priority": slot.priority.value if leased and slot.priority else None,
                "for_ms": now - slot.leased_at_ms if leased and slot.leased_at_ms else None,
            }
        )
    return rows
