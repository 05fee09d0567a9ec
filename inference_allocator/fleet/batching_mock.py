"""A mock inference server that batches as real LLM servers do, to measure capacity and
preemption without a GPU.

It runs up to ``capacity`` requests together (its KV cache) and queues the rest itself,
FIFO, as vLLM, SGLang, TGI and llama.cpp do once full. Every step of the engine makes one
token for every running request and takes ``token_ms * (1 + batch_cost * (n - 1))`` for
``n`` running: a batch of more requests makes more tokens a second in all, and each of its
requests slower. A request makes ``max_tokens`` tokens (its params), else ``tokens``.

``server_report()`` says how many it runs and how many wait, as vLLM's ``/metrics`` do
(``num_requests_running``, ``num_requests_waiting``); with ``says_load = false`` it says
nothing, as a server without metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field

from ..schemas import RequestRecord
from .backends import Completion, TextSink, _sleep, mock_output
from .capacity import ServerReport


@dataclass(eq=False)
class _Sequence:
    """One request in the engine: the tokens it still has to make, and where they go."""

    remaining: int
    tokens: asyncio.Queue[str | None] = field(default_factory=asyncio.Queue)


class BatchingMockBackend:
    def __init__(
        self,
        capacity: int,
        token_ms: float,
        batch_cost: float = 0.1,
        tokens: int = 64,
        says_load: bool = True,
    ):
        self.capacity = capacity
        self.token_s = token_ms / 1000
        self.batch_cost = batch_cost
        self.tokens = tokens
        self.says_load = says_load
        self._running: list[_Sequence] = []
        self._queue: deque[_Sequence] = deque()
        self._engine: asyncio.Task[None] | None = None

    async def infer(self, model_id: str, prompt: str, gpu_id: int) -> str:
        completion = await self.run(RequestRecord(model_id=model_id, prompt=prompt), gpu_id, None)
        return completion.text

    async def run(
        self, request: RequestRecord, gpu_id: int, on_text: TextSink | None
    ) -> Completion:
        """Queue the request in the engine and wait for its tokens (given to ``on_text``
        as they come); cancelled, it leaves the engine (the server stops generating)."""
        wanted = int((request.params or {}).get("max_tokens") or self.tokens)
        sequence = _Sequence(max(1, wanted))
        self._queue.append(sequence)
        while self._queue and len(self._running) < self.capacity:
            self._running.append(self._queue.popleft())  # room: it runs from this step
        if self._engine is None or self._engine.done():
            self._engine = asyncio.create_task(self._run_engine(), name="batching-mock")
        words = mock_output(request.model_id, request.prompt).split()
        made: list[str] = []
        try:
            while await sequence.tokens.get() is not None:
                word = words[len(made) % len(words)] + " "
                made.append(word)
                if on_text is not None:
                    await on_text(word)
        finally:
            with contextlib.suppress(ValueError):
                self._running.remove(sequence)
            with contextlib.suppress(ValueError):
                self._queue.remove(sequence)
        prompt_tokens = len(request.prompt.split())
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(made),
            "total_tokens": prompt_tokens + len(made),
        }
        return Completion("".join(made).rstrip(), "length", usage)

    async def server_report(self) -> ServerReport | None:
        """The requests it runs and those waiting in its own queue, as vLLM's ``/metrics``
        say them; None with ``says_load`` off."""
        if not self.says_load:
            return None
        return ServerReport(running=len(self._running), waiting=len(self._queue))

    async def _run_engine(self) -> None:
        while self._running or self._queue:
            while self._queue and len(self._running) < self.capacity:
                self._running.append(self._queue.popleft())
            batch = list(self._running)
            await _sleep(self.token_s * (1 + self.batch_cost * (len(batch) - 1)))
            for sequence in batch:
                if sequence not in self._running:
                    continue  # cancelled during the step
                sequence.remaining -= 1
                sequence.tokens.put_nowait("t")
                if sequence.remaining <= 0:
                    self._running.remove(sequence)
                    sequence.tokens.put_nowait(None)
