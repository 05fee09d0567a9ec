"""The fleet file (``INFERENCE_FLEET_FILE``, TOML): pools of slots, each behind one backend.

::

    [[pools]]
    name = "a100-llama"               # in status, slot ids and metrics
    backend = "openai"                # an OpenAI-compatible server (vLLM, TGI, SGLang, ...)
    base_url = "http://10.0.0.5:8000/v1"
    api_key_env = "VLLM_API_KEY"      # optional: the key is read from this variable
    models = ["llama-3-70b"]
    slots = 8                         # concurrent requests this server should get

    [[pools]]
    name = "sim"
    backend = "mock"
    models = ["*"]                    # any model
    slots = 4
    latency_ms = 50
    model_load_ms = 0                 # charged when a slot switches models

Without a file the fleet is one mock pool of ``INFERENCE_GPU_COUNT`` slots serving every
model, as before fleets existed.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..config import Settings
from ..errors import ConfigurationError
from ..schemas import PRIORITIES, Priority

ANY_MODEL = "*"


class PoolSpec(BaseModel):
    """One ``[[pools]]`` table."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")
    backend: Literal["mock", "openai"]
    models: list[str] = Field(min_length=1)
    #: requests in flight at once; "auto": as many as the server runs without queueing
    #: them itself, found from the server (up to ``max_slots``)
    slots: int | Literal["auto"]
    max_slots: int = Field(64, ge=1, le=4096)
    # openai
    base_url: str | None = None
    api_key_env: str | None = None
    timeout_seconds: float = Field(600.0, gt=0)
    health_interval_seconds: float = Field(2.0, gt=0)
    #: send each request's level to the server as its own ``priority`` (vLLM's
    #: ``--scheduling-policy priority``: an integer, lower is more urgent): true for
    #: high 0, medium 1, low 2, or a table of the integers by level
    engine_priority: bool | dict[Priority, int] = False
    #: call the server streamed even for a request that is not (the text is gathered
    #: here): a server notices a closed connection at its next token, where llama-server
    #: looks at a request that is not streamed once a second; costs the worker a parse per
    #: token
    stream_upstream: bool = False
    # any backend
    #: a streamed request that has sent text to its client may be preempted too (its
    #: client's stream then ends in an error: text already relayed cannot be taken back)
    preempt_streams: bool = False
    #: among pools that serve a request's model and have a free slot, prefer the one whose
    #: server likely holds the longest prefix of its prompt, or its session's last turn, in
    #: its cache (default: on for openai pools; mock pools cache nothing)
    prefix_routing: bool | None = None
    #: how many tokens of prompts the server's cache holds (vLLM logs its "KV cache size";
    #: llama.cpp: context size, plus --cache-ram): what this worker remembers sending there
    prefix_cache_tokens: int = Field(262_144, ge=1, le=1 << 30)
    # mock
    latency_ms: float = Field(50.0, ge=0)
    model_load_ms: float = Field(0.0, ge=0)
    words_per_second: float = Field(
        0.0, ge=0, description="streamed words per second (0: spread over latency_ms)"
    )
    # mock that batches like a real server (with ``capacity``): see batching_mock.py
    capacity: int | None = Field(None, ge=1, le=4096)
    token_ms: float = Field(20.0, gt=0)
    batch_cost: float = Field(0.1, ge=0)
    tokens: int = Field(64, ge=1)
    says_load: bool = True

    @field_validator("slots", mode="before")
    @classmethod
    def _slot_count(cls, value: object) -> object:
        if value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 4096:
            raise PydanticCustomError("slots", 'Input should be a number from 1 to 4096, or "auto"')
        return value

    @model_validator(mode="after")
    def _backend_fields(self) -> PoolSpec:
        if self.backend == "openai":
            if not self.base_url:
                raise ValueError("an openai pool needs base_url (e.g. http://host:8000/v1)")
            if not self.base_url.startswith(("http://", "https://")):
                raise ValueError(f"base_url {self.base_url!r} is not an http(s) URL")
            if ANY_MODEL in self.models:
                raise ValueError("an openai pool names its models; '*' is for mock pools")
        if any(not m.strip() for m in self.models):
            raise ValueError("model names must not be empty")
        if self.capacity is not None and self.backend != "mock":
            raise ValueError("capacity (a batching mock) is for mock pools")
        if self.stream_upstream and self.backend != "openai":
            raise ValueError("stream_upstream is for openai pools")
        if self.engine_priority and self.backend != "openai":
            raise ValueError("engine_priority is for openai pools (the server's own queue)")
        if isinstance(self.engine_priority, dict) and set(self.engine_priority) != set(PRIORITIES):
            raise ValueError("engine_priority names an integer for each of high, medium, low")
        return self

    def engine_priority_of(self, level: Priority | None) -> int | None:
        """The integer sent to the server as the request's ``priority``; None: none sent."""
        if not self.engine_priority or level is None:
            return None
        if isinstance(self.engine_priority, dict):
            return self.engine_priority[level]
        return level.rank

    def serves(self, model_id: str) -> bool:
        return ANY_MODEL in self.models or model_id in self.models

    @property
    def routes_by_prefix(self) -> bool:
        """Whether requests are placed by prefix (``prefix_routing``, default: openai)."""
        return self.backend == "openai" if self.prefix_routing is None else self.prefix_routing

    @property
    def auto(self) -> bool:
        """Whether its capacity is found from the server (``slots = "auto"``)."""
        return self.slots == "auto"

    @property
    def slot_count(self) -> int:
        """How many slots it has: ``slots``, or ``max_slots`` for ``auto``."""
        return self.max_slots if self.slots == "auto" else self.slots

    def api_key(self) -> str:
        """The key from ``api_key_env``; servers without auth accept any placeholder."""
        if not self.api_key_env:
            return "none"
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigurationError(
                f"pool {self.name!r}: api_key_env names {self.api_key_env}, which is not set"
            )
        return key


class FleetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pools: list[PoolSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> FleetSpec:
        names = [p.name for p in self.pools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"pool names must be unique: {', '.join(duplicates)}")
        return self

    @property
    def total_slots(self) -> int:
        return sum(p.slot_count for p in self.pools)


def default_fleet(settings: Settings) -> FleetSpec:
    """Today's behaviour without a fleet file: GPU_COUNT mock slots serving every model."""
    return FleetSpec(
        pools=[
            PoolSpec(
                name="mock",
                backend="mock",
                models=[ANY_MODEL],
                slots=settings.gpu_count,
                latency_ms=settings.mock_latency_ms,
                words_per_second=settings.mock_words_per_second,
            )
        ]
    )


def load_fleet_spec(settings: Settings) -> FleetSpec:
    """The fleet of ``INFERENCE_FLEET_FILE``, or the default; one clear line when invalid."""
    if settings.fleet_file is None:
        return default_fleet(settings)
    return parse_fleet_file(Path(settings.fleet_file))


def parse_fleet_file(path: Path) -> FleetSpec:
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigurationError(f"fleet file {path}: cannot read it ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"fleet file {path}: not valid TOML ({exc})") from None
    try:
        return FleetSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigurationError(f"fleet file {path}: {_describe(exc, data)}") from None


def _describe(exc: ValidationError, data: object) -> str:
    """The first problem, naming the pool it is in."""
    err = exc.errors(include_url=False)[0]
    loc = list(err["loc"])
    where = ""
    if len(loc) >= 2 and loc[0] == "pools" and isinstance(loc[1], int):
        pools = data.get("pools") if isinstance(data, dict) else None
        pool = pools[loc[1]] if isinstance(pools, list) and loc[1] < len(pools) else {}
        name = pool.get("name") if isinstance(pool, dict) else None
        where = f"pool {name!r}" if name else f"pool #{loc[1] + 1}"
        loc = loc[2:]
    field = ".".join(str(x) for x in loc if not str(x).startswith("function-after"))
    message = str(err["msg"]).removeprefix("Value error, ")
    subject = " ".join(x for x in (where, field) if x)
    return f"{subject}: {message}" if subject else message
