"""Inference backends: what runs on a leased GPU slot.

A backend is any object with ``async infer(model_id, prompt, gpu_id) -> str``. Select one
with ``INFERENCE_INFERENCE_BACKEND``: ``mock`` (default) or ``package.module:Class``; the
class is built with the ``Settings``.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import time
from typing import Protocol, runtime_checkable

from ..config import Settings
from ..errors import ConfigurationError


@runtime_checkable
class InferenceBackend(Protocol):
    async def infer(self, model_id: str, prompt: str, gpu_id: int) -> str:
        """Run one inference on GPU ``gpu_id`` and return the generated text."""
        ...


class MockBackend:
    """Sleeps ``latency_ms`` and returns text derived only from the model and the prompt."""

    def __init__(self, latency_ms: float):
        self.latency_s = latency_ms / 1000.0

    @classmethod
    def from_settings(cls, settings: Settings) -> MockBackend:
        return cls(settings.mock_latency_ms)

    async def infer(self, model_id: str, prompt: str, gpu_id: int) -> str:
        if self.latency_s > 0:
            # Never shorter than asked: uvloop's timers count from the loop's cached time
            # and can fire early on a busy loop.
            deadline = time.perf_counter() + self.latency_s
            while (remaining := deadline - time.perf_counter()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(remaining)
        return mock_output(model_id, prompt)


def mock_output(model_id: str, prompt: str) -> str:
    """The mock's deterministic completion of ``prompt`` by ``model_id``."""
    digest = hashlib.sha256(f"{model_id}\x00{prompt}".encode()).hexdigest()[:12]
    return f"[{model_id}] mock completion {digest} for: {prompt[:200]}"


def load_backend(settings: Settings) -> InferenceBackend:
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
