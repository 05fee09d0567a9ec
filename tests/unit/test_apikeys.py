"""API key entries: parsing, refusal messages that never show a key, ceilings."""

from __future__ import annotations

import pytest

from inference_allocator.apikeys import Caller, KeyRing
from inference_allocator.errors import ConfigurationError
from inference_allocator.schemas import Priority

ALICE = "a" * 24
BATCH = "b" * 24


def test_entries_name_a_caller_with_its_ceiling():
    ring = KeyRing.load(f"{ALICE}:alice, {BATCH}:batch:low", None)
    assert len(ring) == 2
    assert ring.identify(ALICE) == Caller("alice", Priority.HIGH)
    assert ring.identify(BATCH) == Caller("batch", Priority.LOW)
    assert ring.identify("c" * 24) is None
    assert ring.identify(ALICE[:-1]) is None
    assert ring.identify("") is None and ring.identify(None) is None


def test_a_ceiling_allows_its_level_and_the_less_urgent_ones():
    medium = Caller("m", Priority.MEDIUM)
    assert [medium.allows(p) for p in Priority] == [False, True, True]


def test_no_entries_means_an_open_bridge():
    assert not KeyRing.load(None, None)
    assert not KeyRing.load("  ", None)


def test_a_file_adds_entries_with_comments(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# team keys\n{ALICE}:alice:medium  # on-call\n\n{BATCH}:batch:low\n")
    ring = KeyRing.load(None, str(path))
    assert ring.identify(ALICE) == Caller("alice", Priority.MEDIUM)
    assert ring.identify(BATCH) == Caller("batch", Priority.LOW)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ("shortkey:alice", "entry 1 (alice) has a key shorter than 16 characters"),
        (f"{ALICE}:alice:urgent", "entry 1 (alice) has max priority 'urgent'"),
        (f"{ALICE}", "entry 1 is not KEY:NAME[:MAX_PRIORITY]"),
        (f"{ALICE}:alice,{BATCH}:alice", "two API keys share a name"),
    ],
)
def test_a_bad_entry_is_refused_without_showing_a_key(entries, message):
    with pytest.raises(ConfigurationError) as refused:
        KeyRing.load(entries, None)
    assert message in str(refused.value)
    assert ALICE not in str(refused.value) and "shortkey" not in str(refused.value)


def test_an_unreadable_file_is_named(tmp_path):
    with pytest.raises(ConfigurationError, match="cannot read it"):
        KeyRing.load(None, str(tmp_path / "missing"))
