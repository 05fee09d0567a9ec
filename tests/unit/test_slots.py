"""SlotTable: never more leases than slots, blocking acquire, release wakes a waiter."""

import asyncio
import json

import pytest

from inference_allocator.schemas import Priority, SlotRecord
from inference_allocator.streams.slots import SlotInfo, SlotTable


def table(count: int = 2) -> SlotTable:
    return SlotTable("w1", count, lease_ttl_ms=60_000)


async def test_acquire_hands_out_each_slot_once():
    slots = table(3)
    got = [await slots.acquire() for _ in range(3)]
    assert sorted(got) == [0, 1, 2]
    assert slots.available == 0 and slots.busy == 3


async def test_acquire_blocks_when_all_slots_are_taken_and_release_wakes_it():
    slots = table(1)
    first = await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0.05)
    assert not waiter.done()  # blocked, not failed or spinning
    slots.release(first)
    assert await asyncio.wait_for(waiter, 5) == first
    assert slots.available == 0


async def test_waiters_are_served_in_arrival_order():
    slots = table(1)
    gpu = await slots.acquire()
    order: list[int] = []

    async def take(n: int) -> None:
        await slots.acquire()
        order.append(n)

    tasks = [asyncio.create_task(take(n)) for n in range(3)]
    await asyncio.sleep(0.01)
    for _ in range(3):
        slots.release(gpu)
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2]


async def test_concurrent_users_never_exceed_the_slot_count():
    slots = table(3)
    in_use = 0
    peak = 0

    async def job() -> None:
        nonlocal in_use, peak
        gpu = await slots.acquire()
        in_use += 1
        peak = max(peak, in_use)
        await asyncio.sleep(0.001)
        in_use -= 1
        slots.release(gpu)

    await asyncio.gather(*(job() for _ in range(50)))
    assert peak == 3
    assert slots.available == 3


async def test_a_cancelled_waiter_does_not_swallow_a_slot():
    slots = table(1)
    gpu = await slots.acquire()
    waiter = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0.01)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    slots.release(gpu)
    assert slots.available == 1


async def test_lease_and_release_produce_slot_records_with_expiry():
    slots = table(2)
    gpu = await slots.acquire()
    lease, state = slots.lease(gpu, "req-1", Priority.HIGH)
    leased = state.record()
    assert state.state == leased.state == "leased" and leased.request_id == "req-1"
    assert leased.slot_id == f"w1/mock/{gpu}" and leased.priority == Priority.HIGH
    assert leased.expires_at_ms == lease.leased_at_ms + 60_000
    freed = slots.release(gpu).record()
    assert freed.state == "free" and freed.request_id is None
    assert [r.state for r in slots.snapshot()] == ["free", "free"]


async def test_snapshot_renews_every_expiry():
    slots = SlotTable("w1", 2, lease_ttl_ms=1_000)
    gpu = await slots.acquire()
    lease, first = slots.lease(gpu, "req-1", Priority.LOW)
    await asyncio.sleep(0.02)
    renewed = {r.gpu_id: r for r in (s.record() for s in slots.snapshot())}
    assert (
        renewed[gpu].state == "leased" and renewed[gpu].expires_at_ms > first.record().expires_at_ms
    )
    assert renewed[1 - gpu].state == "free" and renewed[1 - gpu].expires_at_ms is not None


async def test_counts_match_the_snapshot_and_renew_nothing():
    slots = SlotTable("w1", 4, lease_ttl_ms=1_000)
    leased, _ = slots.lease(await slots.acquire(), "req-1", Priority.LOW)
    slots.set_down(range(2, 4), down=True)
    expires = leased.expires_at_ms
    await asyncio.sleep(0.02)
    assert slots.counts() == {"free": 1, "leased": 1, "down": 2, "parked": 0}
    assert leased.expires_at_ms == expires  # only the heartbeat's snapshot renews it
    states = [s.state for s in slots.snapshot()]
    counted = {state: states.count(state) for state in ("free", "leased", "down")}
    assert {**counted, "parked": 0} == slots.counts()  # a parked slot is in no snapshot


def test_slot_states_are_the_records_the_schema_would_write():
    """Encoded by hand (the hot path), read back by the schema: the same record, for names
    JSON must escape too."""
    layout = [SlotInfo('p"ool\\ü', None, ("*",)), SlotInfo("vllm", "http://h:8000/v1", ("a", "b"))]
    slots = SlotTable('w"1', 2, lease_ttl_ms=60_000, layout=layout)
    lease, leased = slots.lease(1, 'req "ä"\n', Priority.MEDIUM, model_id="m/ä", tenant='t"ö')
    assert leased.record() == SlotRecord(
        slot_id='w"1/vllm/1',
        worker_id='w"1',
        gpu_id=1,
        state="leased",
        pool="vllm",
        endpoint="http://h:8000/v1",
        models=["a", "b"],
        model="m/ä",
        request_id='req "ä"\n',
        priority=Priority.MEDIUM,
        tenant='t"ö',
        leased_at_ms=lease.leased_at_ms,
        expires_at_ms=lease.expires_at_ms,
        updated_at_ms=lease.leased_at_ms,
    )
    json.loads(leased.value)  # strict JSON, not only what pydantic accepts
    freed = slots.release(1).record()
    assert freed.model_dump(exclude={"expires_at_ms", "updated_at_ms"}) == SlotRecord(
        slot_id='w"1/vllm/1', worker_id='w"1', gpu_id=1, state="free", pool="vllm",
        endpoint="http://h:8000/v1", models=["a", "b"], model="m/ä", updated_at_ms=0,
    ).model_dump(exclude={"expires_at_ms", "updated_at_ms"})  # fmt: skip
    assert freed.expires_at_ms == freed.updated_at_ms + 60_000
    down = slots.set_down(range(0, 1), down=True)[0]
    assert down.state == "down" and down.record().pool == 'p"ool\\ü'
    assert down.record().model is None and down.record().request_id is None


async def test_parked_slots_leave_the_table_and_a_leased_one_parks_when_released():
    slots = SlotTable("w", 3, 10_000)
    leased = await slots.acquire()  # slot 0
    slots.lease(leased, "r", Priority.LOW)
    tombstones = slots.park([0, 2])
    assert [(t.slot_id, t.value) for t in tombstones] == [("w/mock/2", None)]  # free: at once
    assert slots.parking(0) and slots.free_ids() == [1]
    assert slots.active(range(3)) == 1
    assert [s.slot_id for s in slots.snapshot()] == ["w/mock/0", "w/mock/1"]
    released = slots.release(0)  # its run ended: it parks instead of freeing
    assert released.value is None and slots.free_ids() == [1]
    assert slots.counts() == {"free": 1, "leased": 0, "down": 0, "parked": 2}
    records = slots.unpark([0, 2])
    assert [r.record().state for r in records] == ["free", "free"]
    assert sorted(slots.free_ids()) == [0, 1, 2] and slots.active(range(3)) == 3


async def test_a_slot_brought_back_before_it_parked_just_stays():
    slots = SlotTable("w", 1, 10_000)
    gpu = await slots.acquire()
    slots.park([gpu])
    assert slots.unpark([gpu]) == []  # it never left
    assert slots.release(gpu).record().state == "free"
