"""Residency decisions with fake runners that declare their memory."""

import asyncio
import math
import time

import pytest

from llmhost.daemon.residency import ModelIdentity, Residency
from llmhost.errors import InsufficientMemory, ServerBusy
from tests.daemon.fakes import FakeClock, FakeFactory, spec
from tests.support.waiting import eventually

A, B, C = ("sha256:" + ch * 64 for ch in "abc")


def make(factory, budget=1000, max_loaded=3, max_queue=10, clock=None):
    sizes = factory.memory
    return Residency(factory, max_loaded=max_loaded, max_queue=max_queue, memory_budget=budget,
                     estimate=lambda s: sizes.get(s.key, 100), clock=clock or FakeClock())


async def use(residency, key, keep_alive=300.0, **kw):
    lease = await residency.acquire(spec(key, **kw), ModelIdentity(key[-4:]), keep_alive)
    lease.release()
    return lease


def loaded_keys(residency):
    return sorted(r.spec.key for r in residency.residents())


async def test_second_request_reuses_the_runner():
    factory = FakeFactory()
    residency = make(factory)
    await use(residency, A)
    await use(residency, A)
    assert len(factory.started) == 1


async def test_smaller_num_ctx_is_served_without_reload_and_larger_reloads():
    factory = FakeFactory()
    residency = make(factory)
    await use(residency, A, num_ctx=4096)
    await use(residency, A, num_ctx=1024)
    assert len(factory.started) == 1
    await use(residency, A, num_ctx=8192)
    assert len(factory.started) == 2
    assert factory.started[0].closed, "the runner with the smaller context is replaced"
    assert [r.spec.num_ctx for r in residency.residents()] == [8192]


async def test_least_recently_used_idle_model_is_evicted_first():
    clock = FakeClock()
    factory = FakeFactory(memory={A: 400, B: 400, C: 400})
    residency = make(factory, budget=1000, clock=clock)
    await use(residency, A)
    clock.advance(1)
    await use(residency, B)
    clock.advance(1)
    await use(residency, A)  # A is now the most recently used
    clock.advance(1)
    await use(residency, C)
    assert loaded_keys(residency) == [A, C]


async def test_eviction_is_size_aware():
    clock = FakeClock()
    factory = FakeFactory(memory={A: 100, B: 700, C: 600})
    residency = make(factory, budget=1000, clock=clock)
    await use(residency, A)  # oldest, but freeing it alone is not enough
    clock.advance(1)
    await use(residency, B)
    clock.advance(1)
    await use(residency, C)
    assert loaded_keys(residency) == [A, C], "B alone frees enough; A is left alone"


async def test_pinned_model_is_never_evicted_and_overflow_is_a_clear_error():
    factory = FakeFactory(memory={A: 600, B: 600})
    residency = make(factory, budget=1000)
    await use(residency, A, keep_alive=math.inf)
    with pytest.raises(InsufficientMemory, match="pinned"):
        await use(residency, B)
    assert loaded_keys(residency) == [A]


async def test_the_room_a_runner_keeps_for_parked_prompts_counts_against_the_budget():
    """A runner's RSS grows as it parks idle prompts in host memory, up to its LLMHOST_KV_HOST_CACHE
    budget: that room is not offered to another model meanwhile."""
    factory = FakeFactory(memory={A: 300, B: 300})
    residency = make(factory, budget=1000)
    await use(residency, A, keep_alive=math.inf)
    factory.started[0].host_cache_reserve = 500  # what its parked prompts may still take
    with pytest.raises(InsufficientMemory, match="pinned"):
        await use(residency, B)
    factory.started[0].host_cache_reserve = 200  # they took most of it: it is in its RSS now
    factory.started[0].memory_bytes = 600
    with pytest.raises(InsufficientMemory, match="pinned"):
        await use(residency, B)
    factory.started[0].host_cache_reserve = 0
    factory.started[0].memory_bytes = 300  # the runner dropped them
    await use(residency, B)
    assert loaded_keys(residency) == [A, B]


async def test_model_larger_than_budget_is_refused_before_anything_is_disturbed():
    factory = FakeFactory(memory={A: 300, B: 5000})
    residency = make(factory, budget=1000)
    await use(residency, A)
    with pytest.raises(InsufficientMemory, match="requires"):
        await use(residency, B)
    assert loaded_keys(residency) == [A]
    assert len(factory.started) == 1


async def test_a_refusal_names_the_room_kept_for_parked_prompts():
    """A user who set LLMHOST_KV_HOST_CACHE too large learns that it, not the model, is the cause."""
    factory = FakeFactory(memory={A: 5000})
    sizes = factory.memory
    residency = Residency(factory, max_loaded=3, max_queue=10, memory_budget=1000, clock=FakeClock(),
                          estimate=lambda s: sizes[s.key], host_cache=lambda s: 4800)
    with pytest.raises(InsufficientMemory, match="4.8 KB of it is room for parked prompts, which "
                                                 "LLMHOST_KV_HOST_CACHE sets"):
        await use(residency, A)
    assert not factory.started


async def test_busy_model_is_not_evicted_until_released():
    factory = FakeFactory(memory={A: 600, B: 600})
    residency = make(factory, budget=1000)
    lease = await residency.acquire(spec(A), ModelIdentity("a"), 300.0)
    waiting = asyncio.create_task(use(residency, B))
    await eventually(lambda: residency.admitted(B) == 1, what="B admitted")
    assert not waiting.done() and loaded_keys(residency) == [A]
    lease.release()
    await asyncio.wait_for(waiting, 2)
    assert loaded_keys(residency) == [B]


async def test_max_loaded_models_evicts_to_make_room():
    factory = FakeFactory()
    residency = make(factory, max_loaded=2)
    for key in (A, B, C):
        await use(residency, key)
    assert len(residency.residents()) == 2


async def test_queue_overflow_is_busy_at_once():
    factory = FakeFactory(load_delay=0.2)
    residency = make(factory, max_queue=2)
    first = [asyncio.create_task(use(residency, A)) for _ in range(3)]  # parallel 1 + queue 2
    await eventually(lambda: residency.admitted(A) == 3, what="all three admitted")
    with pytest.raises(ServerBusy):
        await use(residency, A)
    await asyncio.gather(*first)
    assert len(factory.started) == 1, "requests waiting for a loading model share its load"


async def test_keep_alive_expiry_with_injected_clock():
    clock = FakeClock()
    factory = FakeFactory()
    residency = make(factory, clock=clock)
    await use(residency, A, keep_alive=60)
    clock.advance(59)
    await residency.reap()
    assert loaded_keys(residency) == [A]
    clock.advance(2)
    await residency.reap()
    assert loaded_keys(residency) == []
    assert factory.started[0].closed


async def test_keep_alive_zero_unloads_when_request_ends():
    factory = FakeFactory()
    residency = make(factory)
    await use(residency, A, keep_alive=0)
    await eventually(lambda: loaded_keys(residency) == [], what="the model unloaded")
    assert factory.started[0].closed


async def test_crashed_runner_is_forgotten_and_next_request_reloads():
    factory = FakeFactory()
    residency = make(factory)
    await use(residency, A)
    factory.started[0].crash()
    await eventually(lambda: loaded_keys(residency) == [], what="the crashed runner forgotten")
    await use(residency, A)
    assert len(factory.started) == 2


async def test_shutdown_stops_every_runner():
    factory = FakeFactory()
    residency = make(factory)
    await use(residency, A)
    await use(residency, B)
    await residency.shutdown()
    assert factory.live() == []


async def test_a_shorter_keep_alive_is_not_held_up_by_a_longer_one():
    factory = FakeFactory()
    residency = make(factory, clock=time.monotonic)  # real time: this is about the reaper's timer
    await use(residency, A, keep_alive=3600)
    await use(residency, B, keep_alive=0.1)
    await eventually(lambda: loaded_keys(residency) == [A], timeout=2.0, what="B expired, A kept")
    await residency.shutdown()
