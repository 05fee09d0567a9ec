"""Inference backends: what runs on a leased slot.

A backend has ``async infer(model_id, prompt, gpu_id) -> str | Completion``; one that sets
``accepts_params = True`` also gets the request's generation parameters as ``params``.
Optional: ``async healthy() -> bool`` (checked while its pool is down, and periodically),
``async close()``. ``mock`` is built in; ``openai`` is in ``openai_backend.py``; a custom
class is named by ``INFERENCE_INFERENCE_BACKEND=package.module:Class`` and built with the
``Settings``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import time
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ..config import Settings
from ..errors import AllocatorError, ConfigurationError


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
    and returns text derived only from the model and the prompt."""

    def __init__(self, latency_ms: float, model_load_ms: float = 0.0):
        self.latency_s = latency_ms / 1000.0
        self.model_load_s = model_load_ms / 1000.0
        self.loaded: dict[int, str] = {}
        self.model_loads = 0

    @classmethod
    def from_settings(cls, settings: Settings) -> MockBackend:
        return cls(settings.mock_latency_ms)

    async def infer(self, model_id: str, prompt: str, gpu_id: int) -> str:
        seconds = self.latency_s
        if self.model_load_s > 0 and self.loaded.get(gpu_id) != model_id:
            seconds += self.model_load_s  # a cold slot, or one that ran another model
            self.model_loads += 1
        self.loaded[gpu_id] = model_id
        if seconds > 0:
            # Never shorter than asked: uvloop's timers count from the loop's cached time
            # and can fire early on a busy loop.
            deadline = time.perf_counter() + seconds
            while (remaining := deadline - time.perf_counter()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(remaining)
        return mock_output(model_id, prompt)


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
