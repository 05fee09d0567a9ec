"""The fleet file: what it accepts, and one clear line naming the pool for what it does not."""

from __future__ import annotations

import pytest

from inference_allocator.config import Settings
from inference_allocator.errors import ConfigurationError
from inference_allocator.fleet.backends import MockBackend
from inference_allocator.fleet.pools import Fleet
from inference_allocator.fleet.spec import load_fleet_spec, parse_fleet_file
from inference_allocator.schemas import Priority

GOOD = """
[[pools]]
name = "a100-llama"
backend = "openai"
base_url = "http://127.0.0.1:8000/v1"
models = ["llama-3-70b"]
slots = 8

[[pools]]
name = "sim"
backend = "mock"
models = ["*"]
slots = 4
latency_ms = 50
model_load_ms = 200
"""


def write(tmp_path, text: str):
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def test_a_fleet_file_declares_pools_and_their_slots(tmp_path):
    fleet = Fleet.from_spec(parse_fleet_file(write(tmp_path, GOOD)))
    assert [p.name for p in fleet.pools] == ["a100-llama", "sim"]
    assert fleet.total_slots == 12
    assert fleet.pool_of(0).name == "a100-llama" and fleet.pool_of(7).name == "a100-llama"
    assert fleet.pool_of(8).name == "sim" and fleet.pool_of(11).name == "sim"
    assert fleet.serves("llama-3-70b") and fleet.serves("anything")  # the mock pool takes any
    assert fleet.routed  # the openai pool runs one model only
    assert fleet.pools[0].endpoint == "http://127.0.0.1:8000/v1"


def test_without_a_file_the_fleet_is_gpu_count_mock_slots_for_every_model():
    settings = Settings(gpu_count=3, mock_latency_ms=7)
    fleet = Fleet.from_settings(settings)
    assert fleet.total_slots == 3 and not fleet.routed
    assert isinstance(fleet.pools[0].backend, MockBackend)
    assert fleet.pools[0].backend.latency_s == 0.007


@pytest.mark.parametrize(
    "text, message",
    [
        ("[[pools]]\nname = 'x'\nbackend = 'openai'\nmodels = ['m']\nslots = 2\n",
         "pool 'x': an openai pool needs base_url"),
        ("[[pools]]\nname = 'x'\nbackend = 'tgi'\nmodels = ['m']\nslots = 2\n",
         "pool 'x' backend: Input should be 'mock' or 'openai'"),
        ("[[pools]]\nname = 'x'\nbackend = 'mock'\nmodels = ['m']\nslots = 0\n",
         "pool 'x' slots: Input should be a number from 1 to 4096, or \"auto\""),
        ("[[pools]]\nbackend = 'mock'\nmodels = ['m']\nslots = 1\n",
         "pool #1 name: Field required"),
        ("[[pools]]\nname = 'x'\nbackend = 'mock'\nmodels = ['m']\nslots = 1\ngpus = 3\n",
         "pool 'x' gpus: Extra inputs are not permitted"),
        ("[[pools]]\nname = 'a'\nbackend = 'mock'\nmodels = ['m']\nslots = 1\n" * 2,
         "pool names must be unique: a"),
        ("pools = [", "not valid TOML"),
        ("", "pools: Field required"),
    ],
)  # fmt: skip
def test_an_invalid_fleet_file_is_one_line_naming_the_pool(tmp_path, text, message):
    path = write(tmp_path, text)
    with pytest.raises(ConfigurationError) as raised:
        parse_fleet_file(path)
    assert str(raised.value).startswith(f"fleet file {path}: ")
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_missing_fleet_file_says_so(tmp_path):
    settings = Settings(fleet_file=str(tmp_path / "nope.toml"))
    with pytest.raises(ConfigurationError, match="cannot read it"):
        load_fleet_spec(settings)


async def test_the_mock_charges_a_model_load_when_a_slot_switches_models():
    backend = MockBackend(latency_ms=0, model_load_ms=1)
    await backend.infer("a", "p", 0)  # cold slot: a load
    await backend.infer("a", "p", 0)  # warm: none
    await backend.infer("b", "p", 0)  # switch: a load
    await backend.infer("b", "p", 1)  # another cold slot: a load
    assert backend.model_loads == 3


OPENAI = "[[pools]]\nname = 'v'\nbackend = 'openai'\nbase_url = 'http://h:8000/v1'\n"


@pytest.mark.parametrize(
    "line, sent",
    [
        ("", {"high": None, "medium": None, "low": None}),
        ("engine_priority = true", {"high": 0, "medium": 1, "low": 2}),
        ("engine_priority = { high = -5, medium = 0, low = 20 }",
         {"high": -5, "medium": 0, "low": 20}),
    ],
)  # fmt: skip
def test_engine_priority_is_our_level_in_the_servers_convention(tmp_path, line, sent):
    path = write(tmp_path, f"{OPENAI}models = ['m']\nslots = 2\n{line}\n")
    [pool] = parse_fleet_file(path).pools
    assert {level.value: pool.engine_priority_of(level) for level in Priority} == sent


@pytest.mark.parametrize(
    "text, message",
    [
        (f"{OPENAI}models = ['m']\nslots = 1\nengine_priority = {{ high = 0 }}\n",
         "engine_priority names an integer for each of high, medium, low"),
        ("[[pools]]\nname = 'x'\nbackend = 'mock'\nmodels = ['m']\nslots = 1\n"
         "engine_priority = true\n", "engine_priority is for openai pools"),
    ],
)  # fmt: skip
def test_a_bad_engine_priority_is_refused(tmp_path, text, message):
    with pytest.raises(ConfigurationError, match=message):
        parse_fleet_file(write(tmp_path, text))
