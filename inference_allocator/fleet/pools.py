"""The fleet at run time: pools with their backends, which slot belongs to which pool, and
whether each pool's server is up."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from ..config import Settings
from ..schemas import RequestRecord
from .backends import Completion, InferenceBackend, MockBackend, TextSink, load_backend
from .spec import ANY_MODEL, FleetSpec, PoolSpec, load_fleet_spec

log = logging.getLogger(__name__)


@dataclass
class Pool:
    """Slots ``gpu_ids`` of one backend; ``up`` is False while its server does not answer."""

    spec: PoolSpec
    backend: InferenceBackend
    gpu_ids: range
    up: bool = True
    down_reason: str | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def any_model(self) -> bool:
        return ANY_MODEL in self.spec.models

    @property
    def loads_models(self) -> bool:
        """Whether a slot switching models costs a load (warm affinity applies)."""
        return self.spec.model_load_ms > 0

    @property
    def can_go_down(self) -> bool:
        """Whether its server's health is checked (it can be down)."""
        return hasattr(self.backend, "healthy")

    @property
    def endpoint(self) -> str | None:
        return self.spec.base_url

    def serves(self, model_id: str) -> bool:
        return self.spec.serves(model_id)

    async def infer(self, gpu_id: int, request: RequestRecord) -> Completion:
        """Run ``request`` on slot ``gpu_id``; its ``params`` go to backends that take them."""
        backend = self.backend
        if request.params and getattr(backend, "accepts_params", False):
            result = await backend.infer(  # type: ignore[call-arg]
                request.model_id, request.prompt, gpu_id, params=request.params
            )
        else:
            result = await backend.infer(request.model_id, request.prompt, gpu_id)
        return result if isinstance(result, Completion) else Completion(str(result))

    async def run(
        self, gpu_id: int, request: RequestRecord, on_text: TextSink | None = None
    ) -> Completion:
        """Run ``request`` on slot ``gpu_id``; with ``on_text``, its text is streamed there
        as it is generated (in one piece from a backend that cannot stream)."""
        run = getattr(self.backend, "run", None)
        if run is not None:
            completion: Completion = await run(request, gpu_id, on_text)
            return completion
        completion = await self.infer(gpu_id, request)
        if on_text is not None and completion.text:
            await on_text(completion.text)
        return completion

    def mark_down(self, reason: str) -> bool:
        """Take the pool out of dispatch; True if it was up."""
        was_up, self.up, self.down_reason = self.up, False, reason
        return was_up

    def mark_up(self) -> bool:
        was_down, self.up, self.down_reason = not self.up, True, None
        return was_down


class Fleet:
    """Every pool of one worker, slots numbered 0..N-1 across pools in file order."""

    def __init__(self, pools: list[Pool]):
        self.pools = pools
        self._by_gpu = {gpu: pool for pool in pools for gpu in pool.gpu_ids}
        # Asked of every request fetched: answered from these, not pool by pool.
        self._any_model = any(pool.any_model for pool in pools)
        self._served = frozenset(m for pool in pools for m in pool.spec.models)

    @classmethod
    def from_settings(cls, settings: Settings, backend: InferenceBackend | None = None) -> Fleet:
        """The fleet of ``INFERENCE_FLEET_FILE``; without one, GPU_COUNT slots of ``backend``
        (default: ``INFERENCE_INFERENCE_BACKEND``) serving every model."""
        spec = load_fleet_spec(settings)
        if settings.fleet_file is None:
            pool = spec.pools[0]
            return cls([Pool(pool, backend or load_backend(settings), range(pool.slot_count))])
        return cls.from_spec(spec)

    @classmethod
    def from_spec(cls, spec: FleetSpec) -> Fleet:
        pools: list[Pool] = []
        first = 0
        for pool in spec.pools:
            pools.append(Pool(pool, build_backend(pool), range(first, first + pool.slot_count)))
            first += pool.slot_count
        return cls(pools)

    @property
    def total_slots(self) -> int:
        return sum(len(p.gpu_ids) for p in self.pools)

    def pool_of(self, gpu_id: int) -> Pool:
        return self._by_gpu[gpu_id]

    def serves(self, model_id: str) -> bool:
        """Whether some pool runs ``model_id``."""
        return self._any_model or model_id in self._served

    @property
    def models(self) -> list[str]:
        """The model names the fleet serves (``*`` where a pool takes any)."""
        return sorted({m for pool in self.pools for m in pool.spec.models})

    @property
    def routed(self) -> bool:
        """Whether some slot cannot run some model: dispatch must then match by model."""
        return not all(pool.any_model for pool in self.pools)

    async def close(self) -> None:
        for pool in self.pools:
            close = getattr(pool.backend, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    await close()


def build_backend(spec: PoolSpec) -> InferenceBackend:
    if spec.backend == "openai":
        from .openai_backend import OpenAIBackend  # aiohttp only where used

        return OpenAIBackend(spec)
    if spec.capacity is not None:
        from .batching_mock import BatchingMockBackend

        return BatchingMockBackend(
            spec.capacity, spec.token_ms, spec.batch_cost, spec.tokens, spec.says_load
        )
    return MockBackend(spec.latency_ms, spec.model_load_ms, spec.words_per_second)
