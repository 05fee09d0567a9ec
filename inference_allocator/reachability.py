"""Whether the broker answers, as a reader's periodic requests find it.

A bridge asks the broker something every ``INFERENCE_STATUS_REFRESH_MS`` (the backlog's
high watermarks and the workers' commits), each bounded by ``PROBE_TIMEOUT_S``. Their
outcome is the bridge's one view of the broker: while it is unreachable, new requests get
503 at once instead of waiting out a produce timeout, the status says so within a second,
and ``/readyz`` fails. Records the reader's consumers receive are answers too: the broker
is up again as soon as one arrives, and a probe that went unanswered while one arrived does
not count. The change is logged once each way, never once per attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time

from .errors import BrokerUnavailable

log = logging.getLogger(__name__)

#: the longest a periodic request to the broker may take before it counts as unanswered
PROBE_TIMEOUT_S = 1.0


class Reachability:
    """Up until a request goes unanswered; up again at the next answered one."""

    def __init__(self, bootstrap_servers: str):
        self.bootstrap_servers = bootstrap_servers
        self.up = True
        self.since = time.monotonic()
        self.last_error = ""
        self.last_answer = float("-inf")  # monotonic time of the last answer
        self._lost: asyncio.Future[None] | None = None

    def answered(self) -> None:
        self.last_answer = time.monotonic()
        if not self.up:
            log.warning(
                "the Kafka broker at %s answers again (unreachable for %.1f s)",
                self.bootstrap_servers,
                time.monotonic() - self.since,
            )
            self.up, self.since, self.last_error = True, time.monotonic(), ""
            self._lost = None

    def unanswered(self, exc: BaseException, asked_at: float | None = None) -> None:
        """A request asked at ``asked_at`` (monotonic) failed or timed out; it does not
        count if the broker answered something else since."""
        if asked_at is not None and self.last_answer >= asked_at:
            return
        self.last_error = str(exc) or type(exc).__name__
        if self.up:
            log.error(
                "the Kafka broker at %s does not answer (%s); refusing new requests until it does",
                self.bootstrap_servers,
                self.last_error,
            )
            self.up, self.since = False, time.monotonic()
            if self._lost is not None and not self._lost.done():
                self._lost.set_result(None)

    def require(self) -> None:
        """Raise ``BrokerUnavailable`` while the broker does not answer."""
        if not self.up:
            raise self.error()

    def error(self) -> BrokerUnavailable:
        return BrokerUnavailable(
            f"the Kafka broker at {self.bootstrap_servers} is unreachable "
            f"(for {time.monotonic() - self.since:.1f} s: {self.last_error}); retry later"
        )

    def lost(self) -> asyncio.Future[None]:
        """A future done when the broker stops answering (already done while it is down)."""
        if self._lost is None:
            self._lost = asyncio.get_running_loop().create_future()
            if not self.up:
                self._lost.set_result(None)
        return self._lost
