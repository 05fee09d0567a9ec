"""The event loop every command runs on: uvloop where it is installed, the garbage collector
tuned for a long-running server, SIGINT/SIGTERM turned into a graceful stop; and how a
background task is stopped."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Coroutine
from typing import Any

from . import logs


def run_until_signalled(coro: Coroutine[Any, Any, Any]) -> Any:
    """Run until done, or until SIGINT/SIGTERM cancels it (its cleanup still runs)."""

    async def main() -> Any:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None

        def stop() -> None:
            # Only the first signal cancels: a second one (Ctrl-C reaches the whole process
            # group, then `dev` sends SIGTERM) must not interrupt the graceful shutdown.
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
                loop.add_signal_handler(signum, lambda: None)
            task.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop)
        try:
            return await coro
        except asyncio.CancelledError:
            return None

    return run_loop(main())


def run_loop(coro: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run`` on uvloop where it is installed (a faster loop for every hop), with
    the garbage collector tuned for a long-running server (``tune_gc``)."""
    tune_gc()
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.get_loop().set_exception_handler(logs.loop_exception)
        return runner.run(coro)


def tune_gc() -> None:
    """What is alive once the modules are loaded is frozen (no collection walks it again),
    and a young collection comes after 20,000 allocations instead of CPython's 700: with
    the defaults a worker under load spent a measurable share of each request collecting
    (BENCHMARKS.md's history has the figures). Cyclic garbage lives a little longer;
    memory stays bounded (``bench --costs`` measures it)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel a background task (a follower's loop) and wait until it has ended; an error
    it ended with is raised here."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
