"""Cache affinity (prefix routing): the prefix blocks, the per-server index, the choice among
servers, and the scheduler placing the request it chose; pure logic, no broker."""

from aiokafka import TopicPartition

from inference_allocator.fleet.pools import Fleet
from inference_allocator.fleet.spec import FleetSpec, PoolSpec
from inference_allocator.schemas import Priority, RequestRecord
from inference_allocator.streams.cache_affinity import (
    BLOCK_CHARS,
    MAX_BLOCKS,
    CacheAffinity,
    Option,
    Placement,
    PrefixIndex,
    prefix_blocks,
)
from inference_allocator.streams.scheduler import Running, Scheduler
from inference_allocator.streams.slots import SlotTable
from inference_allocator.streams.waiting import Pending

DOC_A = "".join(f"Paragraph {i} of the first document, on rivers and mills. " for i in range(40))
DOC_B = "".join(f"Paragraph {i} of the second document, on bridges and roads. " for i in range(40))


def ask(doc: str, question: str, *, session: str | None = None, tenant: str | None = None):
    return RequestRecord(
        model_id="m",
        prompt=f"{doc}\n{question}",
        session=session,
        tenant=tenant,
    )


def chat(*turns: str, model: str = "m") -> RequestRecord:
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": t} for i, t in enumerate(turns)
    ]
    return RequestRecord(model_id=model, prompt="rendered", messages=messages)


def affinity(*pools: str, imbalance: int = 8, capacity: int = 10_000) -> CacheAffinity:
    return CacheAffinity({p: capacity for p in pools}, imbalance)


# --- prefix blocks and the index -----------------------------------------------------


def test_requests_sharing_a_document_share_its_whole_blocks():
    one, two = prefix_blocks(ask(DOC_A, "Who built the mill?")), prefix_blocks(ask(DOC_A, "Why?"))
    shared = len(DOC_A) // BLOCK_CHARS
    assert one[:shared] == two[:shared]
    assert prefix_blocks(ask(DOC_B, "Who built the mill?"))[0] != one[0]


def test_a_block_stands_for_the_whole_prefix_before_it():
    # The same text at block 3 after another beginning is another block.
    first = prefix_blocks(RequestRecord(model_id="m", prompt="a" * 64 + "x" * 64 * 3))
    second = prefix_blocks(RequestRecord(model_id="m", prompt="b" * 64 + "x" * 64 * 3))
    assert set(first).isdisjoint(second)


def test_one_models_prefix_is_not_anothers():
    text = DOC_A
    assert (
        prefix_blocks(RequestRecord(model_id="m", prompt=text))[0]
        != prefix_blocks(RequestRecord(model_id="n", prompt=text))[0]
    )


def test_short_prompts_have_no_block_and_long_ones_are_counted_up_to_a_bound():
    assert prefix_blocks(RequestRecord(model_id="m", prompt="x" * (BLOCK_CHARS - 1))) == []
    assert len(prefix_blocks(RequestRecord(model_id="m", prompt="x" * BLOCK_CHARS * 2))) == 2
    huge = RequestRecord(model_id="m", prompt="y" * BLOCK_CHARS * (MAX_BLOCKS + 10))
    assert len(prefix_blocks(huge)) == MAX_BLOCKS


def test_a_chats_next_turn_extends_the_prefix_of_the_turn_before():
    first = prefix_blocks(chat(DOC_A, "An answer about mills.", "And the river?"))
    second = prefix_blocks(
        chat(DOC_A, "An answer about mills.", "And the river?", "It runs north.", "Why?")
    )
    assert second[: len(first)] == first


def test_the_index_matches_from_the_first_block_and_forgets_the_least_recent():
    index = PrefixIndex(capacity=4)
    index.add([1, 2, 3])
    assert index.matched([1, 2, 3, 9]) == 3
    assert index.matched([9, 1]) == 0  # counted from the first block
    index.add([7, 8])  # over capacity: the oldest go, last blocks first
    assert len(index) == 4
    assert index.matched([1, 2, 3]) == 2  # its last block went first
    assert index.matched([7, 8]) == 2


# --- which server ----------------------------------------------------------------------


def test_a_request_goes_where_its_document_went():
    a = affinity("one", "two")
    options = [Option("one", 0, 0), Option("two", 2, 0)]
    assert a.place(ask(DOC_A, "q1"), options).pool == "one"  # none held: the first
    assert a.place(ask(DOC_B, "q1"), options).pool == "two"  # the emptier cache
    for question in ("q2", "q3", "q4"):
        assert a.place(ask(DOC_B, question), options).pool == "two"
        assert a.place(ask(DOC_A, question), options).pool == "one"


def test_the_longest_held_prefix_wins_and_a_tie_goes_to_the_less_busy():
    a = affinity("one", "two")
    a.record("one", ask(DOC_A[:1000], "q"))
    a.record("two", ask(DOC_A, "q"))
    options = [Option("one", 0, 0), Option("two", 2, 1)]
    assert a.place(ask(DOC_A, "next"), options).pool == "two"  # more of it, though busier
    a.record("one", ask(DOC_B, "q"))
    a.record("two", ask(DOC_B, "q"))
    assert a.place(ask(DOC_B, "next"), options).pool == "one"


def test_a_hot_prefix_moves_on_once_its_server_runs_too_many_more():
    a = affinity("one", "two", imbalance=2)
    a.record("one", ask(DOC_A, "q"))
    assert a.place(ask(DOC_A, "q"), [Option("one", 0, 2), Option("two", 9, 0)]).pool == "one"
    assert a.place(ask(DOC_A, "q"), [Option("one", 0, 3), Option("two", 9, 0)]).pool == "two"


def test_a_session_goes_back_to_its_last_server_while_it_has_room():
    a = affinity("one", "two")
    options = [Option("one", 0, 0), Option("two", 2, 0)]
    a.record("two", ask(DOC_A, "first turn", session="s1"))
    a.record("one", ask(DOC_B, "q"))
    # Its session beats the prefix another server holds.
    assert a.place(ask(DOC_B, "second turn", session="s1"), options).pool == "two"
    # No room there: another, and the session follows it.
    assert a.place(ask(DOC_B, "third", session="s1"), [Option("one", 0, 0)]).pool == "one"
    assert a.place(ask(DOC_A, "fourth", session="s1"), options).pool == "one"


def test_two_tenants_sessions_of_one_name_are_two_sessions():
    a = affinity("one", "two")
    options = [Option("one", 0, 0), Option("two", 2, 0)]
    a.record("two", ask("x", "q", session="chat", tenant="team-a"))
    assert a.place(ask("y", "q", session="chat", tenant="team-a"), options).pool == "two"
    assert a.place(ask("y", "q", session="chat", tenant="team-b"), options).pool == "one"


def test_each_placement_is_observed_with_its_reason_and_matched_length():
    seen: list[Placement] = []
    a = CacheAffinity({"one": 1000, "two": 1000}, 8, observe=seen.append)
    options = [Option("one", 0, 0), Option("two", 2, 0)]
    a.place(ask(DOC_A, "q"), options)
    a.place(ask(DOC_A, "q2"), options)
    a.place(ask(DOC_B, "q", session="s"), options)
    a.place(ask(DOC_A, "q", session="s"), options)
    assert [p.reason for p in seen] == ["spread", "prefix", "spread", "session"]
    assert seen[0].matched_chars == 0
    assert seen[1].matched_chars == len(DOC_A) // BLOCK_CHARS * BLOCK_CHARS
    assert seen[1].prompt_chars >= seen[1].matched_chars


# --- the scheduler places what it chose --------------------------------------------------


def replicas(*pools: tuple[str, list[str], int], routing: bool = True) -> Fleet:
    specs = [
        PoolSpec(name=n, backend="mock", models=m, slots=s, prefix_routing=routing)
        for n, m, s in pools
    ]
    return Fleet.from_spec(FleetSpec(pools=specs))


def routed(pools: Fleet, **kwargs) -> Scheduler:
    slots = SlotTable("w", pools.total_slots, 10_000)
    return Scheduler(pools, slots, affinity=CacheAffinity.for_fleet(pools, 8), **kwargs)


def waiting(request: RequestRecord, name: str, timestamp: int, priority=Priority.MEDIUM) -> Pending:
    request = request.model_copy(update={"request_id": name, "priority": priority})
    tp = TopicPartition(f"x.requests.{priority.value}", 0)
    return Pending(priority, tp, timestamp, timestamp, request, name)


def run(s: Scheduler, *items: Pending) -> list[tuple[str, str]]:
    """Match each, one at a time, and free its slot again: (request, pool) in order."""
    placed = []
    for item in items:
        s.waiting.push(item)
        gpu_id, taken = s.match()
        placed.append((taken.request_id, s.fleet.pool_of(gpu_id).name))
        s.slots.take(gpu_id)
        s.slots.release(gpu_id)
    return placed


def test_affinity_is_built_only_for_two_or_more_pools_that_route_by_prefix():
    assert CacheAffinity.for_fleet(replicas(("a", ["m"], 2)), 8) is None
    assert (
        CacheAffinity.for_fleet(replicas(("a", ["m"], 2), ("b", ["m"], 2), routing=False), 8)
        is None
    )
    both = replicas(("a", ["m"], 2), ("b", ["m"], 2))
    assert routed(both).routed  # matched by pool, even though both serve every request


def test_each_document_stays_on_the_server_it_first_went_to():
    s = routed(replicas(("a", ["m"], 2), ("b", ["m"], 2)))
    placed = run(
        s,
        *(waiting(ask(doc, f"q{i}"), f"{name}{i}", i) for i in range(4) for doc, name in
          ((DOC_A, "A"), (DOC_B, "B"))),
    )  # fmt: skip
    pools = {name[0]: set() for name, _ in placed}
    for name, pool in placed:
        pools[name[0]].add(pool)
    assert pools == {"A": {"a"}, "B": {"b"}}


def test_without_prefix_routing_the_longest_free_slot_takes_it():
    pools = replicas(("a", ["m"], 2), ("b", ["m"], 2), routing=False)
    s = Scheduler(pools, SlotTable("w", pools.total_slots, 10_000))
    placed = run(s, *(waiting(ask(DOC_A, f"q{i}"), f"A{i}", i) for i in range(4)))
    assert [pool for _, pool in placed] == ["a", "a", "b", "b"]


def test_placement_never_changes_which_request_goes_first():
    s = routed(replicas(("a", ["m"], 1), ("b", ["m"], 1)))
    s.affinity.record("b", ask(DOC_B, "q"))
    s.waiting.push(waiting(ask(DOC_B, "low"), "low", 1, Priority.LOW))
    s.waiting.push(waiting(ask(DOC_A, "high"), "high", 2, Priority.HIGH))
    first = s.match()
    assert first[1].request_id == "high"
    s.slots.take(first[0])
    gpu_id, second = s.match()
    assert second.request_id == "low"


def test_a_request_is_not_moved_to_a_pool_that_serves_a_model_its_own_does_not():
    # b also serves "n": a high "n" request waiting there must keep b's slot.
    s = routed(replicas(("a", ["m"], 1), ("b", ["m", "n"], 1)))
    s.affinity.record("b", ask(DOC_A, "q"))  # b holds its prefix, a's slot is free longest
    s.waiting.push(waiting(ask(DOC_A, "m request"), "m1", 1))
    gpu_id, taken = s.match()
    assert taken.request_id == "m1" and s.fleet.pool_of(gpu_id).name == "a"


def test_a_preemption_records_the_prefix_where_it_runs():
    s = routed(replicas(("a", ["m"], 1), ("b", ["m"], 1)), preempt_after_ms=0, clock=lambda: 100)
    for gpu_id in (0, 1):
        s.slots.take(gpu_id)
    s.waiting.push(waiting(ask(DOC_A, "urgent"), "high", 50, Priority.HIGH))
    runs = [Running(0, Priority.LOW, 10), Running(1, Priority.LOW, 20)]
    gpu_id, taken = s.preemption(runs)
    assert (gpu_id, taken.request_id) == (1, "high")
    assert s.affinity.indexes["b"].matched(prefix_blocks(ask(DOC_A, "later"))) > 0
