"""Serving the bridge with uvicorn, with clear errors for a taken port or a missing broker."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

import uvicorn

from ..config import Settings
from ..ports import check_port_free
from .app import create_app
from .bridge import Bridge


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # uvicorn re-raises a captured SIGTERM after shutdown, which would kill the process
        # before the bridge's Kafka clients close; a graceful exit is all we want.
        # A second signal (Ctrl-C reaches the whole process group, then `dev` sends
        # SIGTERM) must not turn into uvicorn's forced exit.
        loop = asyncio.get_running_loop()
        signals = (signal.SIGINT, signal.SIGTERM)

        def exit_once(signum: int) -> None:
            if not self.should_exit:
                self.handle_exit(signum, None)

        for signum in signals:
            loop.add_signal_handler(signum, exit_once, signum)
        try:
            yield
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)


async def serve(settings: Settings, host: str, port: int) -> None:
    """Run a bridge on ``host:port`` until SIGINT/SIGTERM."""
    check_port_free(host, port, "bridge", "--port")
    bridge = Bridge(settings)
    app = create_app(settings, bridge)  # first: a bad API key entry is refused at once
    await bridge.start()  # before uvicorn, so an unreachable broker is one clear error
    try:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="on",
        )
        await _Server(config).serve()
    finally:
        await bridge.stop()
