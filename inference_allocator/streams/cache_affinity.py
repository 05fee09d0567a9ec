"""Cache affinity: which of several servers of one model most likely holds a request's
context in its cache (vLLM's automatic prefix caching, SGLang's radix cache, llama.cpp's
per-slot prompt cache), so that it skips that part of the prefill.

Estimated from what this worker sent where, as the Gateway API inference extension's prefix
scorer and Ray Serve's ``PrefixCacheAffinityRouter`` estimate it; no server is asked:

* A request's **prefix blocks**: its prompt (its chat messages, rendered one way for every
  request) cut into blocks of ``BLOCK_CHARS`` characters, each hashed with the hash of the
  blocks before it, so that a block stands for the whole prefix up to its end. The first
  ``MAX_BLOCKS`` only; a last block that is not full is left out (servers cache whole
  blocks too).
* Per server (one pool each), an LRU of the blocks sent there, as big as the pool says its
  cache is (``prefix_cache_tokens``). A request's blocks go in last block first, so the
  first ones, which other requests share, are evicted last.
* **Which server** among those with a free slot that serve the request's model:
  1. its session's server (the one that ran the session's last turn), if it is one of them;
  2. else, among the servers that run at most ``max_imbalance`` requests more than the
     least busy one, the one holding the longest prefix of it, the least busy of those,
     then the fewest blocks (the most room), then the slot free the longest;
  3. with no prefix held by any of those, the one with the fewest blocks, so new
     prefixes spread over the caches, then the least busy.

Only the choice among free slots changes: which request goes next was decided before.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from ..fleet.pools import Fleet
from ..schemas import RequestRecord

#: characters per prefix block: prompts shorter than one block never match
BLOCK_CHARS = 64
#: blocks hashed per request: a longer prompt's match is counted up to here
MAX_BLOCKS = 512
#: characters per token, for sizing an index in blocks from a cache's size in tokens
CHARS_PER_TOKEN = 4
#: sessions remembered (the least recently used are forgotten)
MAX_SESSIONS = 65_536

Reason = Literal["session", "prefix", "spread"]


def prompt_text(request: RequestRecord) -> str:
    """The text a request's prefix blocks are cut from: its chat messages (role and
    content, in order), or its prompt."""
    if not request.messages:
        return request.prompt
    parts = []
    for message in request.messages:
        content = message.get("content")
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False, sort_keys=True)
        parts.append(f"{message.get('role', 'user')}\x1f{content}\x1e")
    return "".join(parts)


def prefix_blocks(request: RequestRecord) -> list[int]:
    """The chained hashes of the request's whole prefix blocks (seeded with its model: one
    model's cache is no use to another's)."""
    text = prompt_text(request)
    count = min(len(text) // BLOCK_CHARS, MAX_BLOCKS)
    chained = hash(request.model_id)
    blocks = []
    for start in range(0, count * BLOCK_CHARS, BLOCK_CHARS):
        chained = hash((chained, text[start : start + BLOCK_CHARS]))
        blocks.append(chained)
    return blocks


class PrefixIndex:
    """The prefix blocks one server was sent lately, at most ``capacity`` (LRU)."""

    def __init__(self, capacity: int):
        self.capacity = max(1, capacity)
        self._blocks: OrderedDict[int, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._blocks)

    def matched(self, blocks: list[int]) -> int:
        """How many of ``blocks``, from the first, it holds."""
        held = self._blocks
        for count, block in enumerate(blocks):
            if block not in held:
                return count
        return len(blocks)

    def add(self, blocks: list[int]) -> None:
        """Remember ``blocks`` as sent now (last first: the shared first ones stay longest)."""
        held = self._blocks
        for block in reversed(blocks):
            if block in held:
                held.move_to_end(block)
            else:
                held[block] = None
        while len(held) > self.capacity:
            held.popitem(last=False)


@dataclass(frozen=True, slots=True)
class Option:
    """A server a request may go to: its pool, the slot it would take there (its longest
    free), and how many requests the pool runs now."""

    pool: str
    gpu_id: int
    busy: int


@dataclass(frozen=True, slots=True)
class Placement:
    """Where a request went and why: of its prompt's ``prompt_chars`` (in whole blocks),
    the first ``matched_chars`` were held there, by this worker's estimate."""

    option: Option
    reason: Reason
    matched_chars: int
    prompt_chars: int


class CacheAffinity:
    """The prefix indexes of the pools that route by prefix, and the sessions' servers."""

    def __init__(
        self,
        capacity_blocks: Mapping[str, int],
        max_imbalance: int,
        *,
        observe: Callable[[Placement], None] | None = None,
    ):
        self.indexes = {pool: PrefixIndex(blocks) for pool, blocks in capacity_blocks.items()}
        self.max_imbalance = max_imbalance
        self.observe = observe  # told of every placement (the worker's metrics)
        self._sessions: OrderedDict[tuple[str | None, str], str] = OrderedDict()

    @classmethod
    def for_fleet(
        cls,
        fleet: Fleet,
        max_imbalance: int,
        observe: Callable[[Placement], None] | None = None,
    ) -> CacheAffinity | None:
        """For the fleet's pools that route by prefix; None when fewer than two do (there is
        no choice to make)."""
        capacity = {
            pool.name: pool.spec.prefix_cache_tokens * CHARS_PER_TOKEN // BLOCK_CHARS
            for pool in fleet.pools
            if pool.spec.routes_by_prefix
        }
        if len(capacity) < 2:
            return None
        return cls(capacity, max_imbalance, observe=observe)

    def routes(self, pool: str) -> bool:
        """Whether ``pool``'s requests are placed here."""
        return pool in self.indexes

    def place(self, request: RequestRecord, options: list[Option]) -> Option:
        """The option ``request`` takes (``options``: longest-free slot first), remembered
        as where its prefix and its session now are."""
        blocks = prefix_blocks(request)
        session = _session_key(request)
        pinned = self._sessions.get(session) if session is not None else None
        chosen = next((o for o in options if o.pool == pinned), None)
        if chosen is not None:
            placement = _placement(chosen, "session", self._matched(chosen.pool, blocks), blocks)
        else:
            placement = self._by_prefix(blocks, options)
        self.record(placement.option.pool, request, blocks)
        if self.observe is not None:
            self.observe(placement)
        return placement.option

    def record(self, pool: str, request: RequestRecord, blocks: list[int] | None = None) -> None:
        """Remember that ``request`` went to ``pool`` (its prefix, its session)."""
        index = self.indexes.get(pool)
        if index is None:
            return
        index.add(prefix_blocks(request) if blocks is None else blocks)
        session = _session_key(request)
        if session is not None:
            self._sessions[session] = pool
            self._sessions.move_to_end(session)
            if len(self._sessions) > MAX_SESSIONS:
                self._sessions.popitem(last=False)

    def _matched(self, pool: str, blocks: list[int]) -> int:
        index = self.indexes.get(pool)
        return index.matched(blocks) if index is not None else 0

    def _by_prefix(self, blocks: list[int], options: list[Option]) -> Placement:
        least = min(o.busy for o in options)
        balanced = [o for o in options if o.busy - least <= self.max_imbalance]
        held = [(self._matched(o.pool, blocks), o) for o in balanced]
        longest = max(matched for matched, _ in held)
        if longest:
            best = [o for matched, o in held if matched == longest]
            chosen = min(best, key=lambda o: (o.busy, self._size(o.pool)))
            return _placement(chosen, "prefix", longest, blocks)
        chosen = min(balanced, key=lambda o: (self._size(o.pool), o.busy))
        return _placement(chosen, "spread", 0, blocks)

    def _size(self, pool: str) -> int:
        index = self.indexes.get(pool)
        return len(index) if index is not None else 0


def _placement(option: Option, reason: Reason, matched: int, blocks: list[int]) -> Placement:
    return Placement(option, reason, matched * BLOCK_CHARS, len(blocks) * BLOCK_CHARS)


def _session_key(request: RequestRecord) -> tuple[str | None, str] | None:
    """A session is one tenant's: two tenants' sessions of one name are two sessions."""
    return (request.tenant, request.session) if request.session else None
