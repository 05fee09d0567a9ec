"""Inference backends: what runs on a leased slot.

A backend has ``async infer(model_id, prompt, gpu_id) -> str | Completion``; one that sets
``accepts_params = True`` also gets the request's generation parameters as ``params``.
Optional: ``async run(request, gpu_id, on_text) -> Completion`` (the whole request: chat
messages, the API to call, and with ``on_text`` the text streamed as it comes; without it
a streamed request gets its text in one piece), ``async healthy() -> bool`` (checked while
its pool is down, and periodically), ``async close()``. ``mock`` is built in; ``openai``
is in ``openai_backend.py``; a custom class is named by
``INFERENCE_INFERENCE_BACKEND=package.module:Class`` and built with the ``Settings``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..config import Settings
from ..errors import AllocatorError, ConfigurationError
from ..schemas import RequestRecord

#: where a streamed request's text goes as it is generated
TextSink = Callable[[str], Awaitable[None]]


@dataclass(slots=True)
class Completion:
    """What a backend returns: the text, and where the server says, why it stopped and the
    tokens it counted (``prompt_tokens``, ``completion_tokens``, ``total_tokens``)."""

    text: str
    finish_reason: str | None = None
    usage: dict[str, int] | None = None


class UpstreamError(AllocatorError):
    """Raised when the inference server answered with an error; the request gets it."""


class UpstreamUnreachable(UpstreamError):
    """Raised when the inference server did not answer: its pool goes down until healthy."""

    retriable = True


@runtime_checkable
class InferenceBackend(Protocol):
    async def infer(self, model_id: str, prompt: str, gpu_id: int) -> str | Completion:
        """Run one inference on slot ``gpu_id`` and return the generated text."""
        ...


class MockBackend:
    """Sleeps ``latency_ms`` (plus ``model_load_ms`` when the slot last ran another model)
    and returns text derived only from the model and the prompt; streamed, the words come
    one by one, ``words_per_second`` of them (by default spread over the latency)."""

    def __init__(
        self, latency_ms: float, model_load_ms: float = 0.0, words_per_second: float = 0.0
    ):
        self.latency_s = latency_ms / 1000.0
        self.model_load_s = model_load_ms / 1000.0
        self.words_per_second = words_per_second
        self.loaded: dict[int, str] = {}
        self.model_loads = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> MockBackend:
        return cls(settings.mock_latency_ms, words_per_second=settings.mock_words_per_second)

    async def infer(self, model_id: str, prompt: str, gpu_id: int) -> str:
        await _sleep(self._load(model_id, gpu_id) + self.latency_s)
        return mock_output(model_id, prompt)

    async def run(
        self, request: RequestRecord, gpu_id: int, on_text: TextSink | None
    ) -> Completion:
        """``infer``, or streamed word by word; words count as tokens in ``usage``."""
        output = mock_output(request.model_id, request.prompt)
        prompt_words = len(request.prompt.split())
        output_words = len(output.split())
        usage = {
            "prompt_tokens": prompt_words,
            "completion_tokens": output_words,
            "total_tokens": prompt_words + output_words,
        }
        load = self._load(request.model_id, gpu_id)
        if on_text is None:
            await _sleep(load + self.latency_s)
            return Completion(output, "stop", usage)
        await _sleep(load)
        words = re.findall(r"\S+\s*", output)  # as many as output.split() has
        pause = 1 / self.words_per_second if self.words_per_second else self.latency_s / len(words)
        for word in words:
            await _sleep(pause)
            await on_text(word)
        return Completion(output, "stop", usage)

    def _load(self, model_id: str, gpu_id: int) -> float:
        """The seconds a model load costs: a cold slot, or one that ran another model."""
        seconds = 0.0
        if self.model_load_s > 0 and self.loaded.get(gpu_id) != model_id:
            seconds = self.model_load_s
            self.model_loads += 1
        self.loaded[gpu_id] = model_id
        return seconds


async def _sleep(seconds: float) -> None:
    """Never shorter than asked: uvloop's timers count from the loop's cached time and can
    fire early on a busy loop."""
    if seconds > 0:
        deadline = time.perf_counter() + seconds
        while (remaining := deadline - time.perf_counter()) > 0:  # noqa: ASYNC110
            await asyncio.sleep(remaining)


def mock_output(model_id: str, prompt: str) -> str:
    """The mock's deterministic completion of ``prompt`` by ``model_id``."""
    digest = hashlib.sha256(f"{model_id}\x00{prompt}".encode()).hexdigest()[:12]
    return f"[{model_id}] mock completion {digest} for: {prompt[:200]}"


def load_backend(settings: Settings) -> InferenceBackend:
    """The backend of the default fleet: ``mock``, or ``package.module:Class``."""
    spec = settings.inference_backend
    if spec == "mock":
        return MockBackend.from_settings(settings)
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise ConfigurationError(
            f"INFERENCE_INFERENCE_BACKEND={spec!r}: use 'mock' or 'package.module:Class'"
        )
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot load inference backend {spec!r}: {exc}") from None
    backend = cls.from_settings(settings) if hasattr(cls, "from_settings") else cls(settings)
    if not isinstance(backend, InferenceBackend):
        raise ConfigurationError(f"{spec!r} has no 'async infer(model_id, prompt, gpu_id)'")
    return backend
