"""CPU time of processes (with their children) from ``/proc``, for the cost figures."""

from __future__ import annotations

import os
import time
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")


def _stats() -> dict[int, tuple[int, float]]:
    """Every process: its parent and the CPU seconds it used."""
    found: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()
        found[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK)
    return found


def tree_seconds(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds used so far by each named process and its descendants."""
    stats = _stats()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    used: dict[str, float] = {}
    for name, root in pids.items():
        total, todo = 0.0, [root]
        while todo:
            pid = todo.pop()
            if pid in stats:
                total += stats[pid][1]
            todo.extend(children.get(pid, ()))
        used[name] = total
    return used


class CpuWindow:
    """CPU used by named processes between ``start`` and ``stop``."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self._before: dict[str, float] = {}
        self._started = 0.0
        self.seconds: dict[str, float] = {}
        self.wall_s = 0.0

    def start(self) -> CpuWindow:
        self._before = tree_seconds(self.pids)
        self._started = time.monotonic()
        return self

    def stop(self) -> CpuWindow:
        after = tree_seconds(self.pids)
        self.wall_s = time.monotonic() - self._started
        self.seconds = {name: after[name] - self._before[name] for name in self.pids}
        return self

    def percent(self) -> dict[str, float]:
        """Each process's share of one core over the window, and the total."""
        shares = {name: round(100 * s / self.wall_s, 2) for name, s in self.seconds.items()}
        shares["total"] = round(sum(shares.values()), 2)
        return shares
