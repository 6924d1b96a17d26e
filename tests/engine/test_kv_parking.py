"""Idle cached prompts parked in host memory (``engine.kv_host``): what the KV cache keeps, what a
later request gets back, and the byte budget. Against the fake context of test_kv_cache, whose saved
state is one int32 per position (4 bytes a token)."""

from __future__ import annotations

import numpy as np
import pytest

from llmhost.engine.kv_cache import KVCacheManager
from llmhost.engine.kv_host import HostCache, SwapRecord, worth_restoring
from tests.engine.test_kv_cache import FakeContext, fill, toks

BYTES_PER_TOKEN = 4  # FakeContext.state_seq_get


def conversation(base: int, n: int = 40) -> np.ndarray:
    return np.arange(base, base + n, dtype=np.int32)


def served(kv: KVCacheManager, ctx: FakeContext, prompt: np.ndarray, reply: int = 5) -> int:
    """Run one request to its end: its prompt and ``reply`` generated tokens stay cached."""
    alloc = kv.allocate(prompt)
    held = np.concatenate((prompt, np.arange(900, 900 + reply, dtype=np.int32)))
    fill(kv, ctx, alloc.seq_id, held)
    kv.release(alloc.seq_id, keep=True)
    return alloc.seq_id


@pytest.fixture
def parking():
    ctx = FakeContext(3)
    return KVCacheManager(ctx, 3, 128, host_budget=1 << 20, park_after=0), ctx


def test_an_admission_parks_the_idle_prompts_and_frees_their_cells(parking):
    kv, ctx = parking
    a = served(kv, ctx, conversation(100))
    b = kv.allocate(conversation(500))
    assert ctx.n[a] == 0, "the idle prompt's cells were freed"
    assert kv.used_cells() == 0 and b.n_reused == 0
    stats = kv.host.stats
    assert (stats.parked_prompts, stats.parked_bytes, stats.parked_total) == (1, 45 * BYTES_PER_TOKEN, 1)


def test_a_parked_conversation_comes_back_for_its_next_turn(parking):
    kv, ctx = parking
    first = conversation(100)
    served(kv, ctx, first)
    served(kv, ctx, conversation(500))  # another conversation meanwhile: the first is parked
    next_turn = np.concatenate((first, np.arange(900, 905, dtype=np.int32), toks(7, 8, 9)))
    again = kv.allocate(next_turn)
    assert again.n_reused == 45, "the prompt and reply of the first turn, copied back"
    assert ctx.pos[again.seq_id] == list(range(45))
    assert list(kv.slots[again.seq_id].held) == list(next_turn[:45])
    assert kv.host.stats.parked_restored_total == 1
    assert kv.host.stats.parked_prompts == 1, "the request took the first record; the other one is parked now"


def test_more_conversations_than_slots_stay_cached():
    ctx = FakeContext(1)
    kv = KVCacheManager(ctx, 1, 128, host_budget=1 << 20, park_after=0)
    turns = {base: conversation(base) for base in (100, 300, 500)}
    for prompt in turns.values():
        served(kv, ctx, prompt)
    for base, prompt in turns.items():  # each comes back after the other two ran in the one slot
        alloc = kv.allocate(np.concatenate((prompt, np.arange(900, 905, dtype=np.int32), toks(1))))
        assert alloc.n_reused == 45, base
        kv.release(alloc.seq_id, keep=True)


def test_a_prompt_sharing_only_the_beginning_leaves_the_record_parked(parking):
    kv, ctx = parking
    system = conversation(100, 30)
    served(kv, ctx, np.concatenate((system, conversation(1000, 60))))
    served(kv, ctx, conversation(500))
    other = kv.allocate(np.concatenate((system, toks(7, 7, 7))))
    assert other.n_reused == 30 and ctx.n[other.seq_id] == 30, "only the shared part is kept"
    kv.release(other.seq_id, keep=True)
    kv.allocate(conversation(2000))  # parks `other`; the first conversation must still be there
    reply = np.arange(900, 905, dtype=np.int32)
    first = kv.allocate(np.concatenate((system, conversation(1000, 60), reply, toks(1))))
    assert first.n_reused == 90 + 5


def test_a_few_shared_tokens_are_evaluated_again_rather_than_copied_back(parking):
    kv, ctx = parking
    served(kv, ctx, conversation(100, 100))
    served(kv, ctx, conversation(500))
    calls = len(ctx.calls)
    short = kv.allocate(np.concatenate((conversation(100, 10), toks(1, 2))))
    assert short.n_reused == 0 and ("set", short.seq_id) not in ctx.calls[calls:]
    assert not worth_restoring(SwapRecord(np.empty(0), conversation(0, 100), 100), 10)
    assert worth_restoring(SwapRecord(np.empty(0), conversation(0, 100), 100), 16)
    assert not worth_restoring(SwapRecord(np.empty(0), conversation(0, 6400), 6400), 99)


def test_a_restore_that_fails_evaluates_the_prompt_and_keeps_the_record(parking):
    kv, ctx = parking
    first = conversation(100)
    served(kv, ctx, first)
    served(kv, ctx, conversation(500))
    ctx.restore_fails = True
    again = kv.allocate(np.concatenate((first, toks(1))))
    assert again.n_reused == 0 and ctx.n[again.seq_id] == 0
    assert kv.host.longest_prefix(first)[1] == 40, "still parked for another try"


def test_the_lender_of_a_shared_prefix_is_parked_and_the_borrower_keeps_the_cells(parking):
    kv, ctx = parking
    system = conversation(100, 30)
    a = served(kv, ctx, np.concatenate((system, conversation(1000, 50))))
    b = kv.allocate(np.concatenate((system, toks(5, 6))))
    assert b.source == a and b.n_reused == 30
    assert ctx.n[a] == 0 and ctx.n[b.seq_id] == 30, "a's own tail is parked, the shared cells stay with b"
    assert kv.used_cells() == 30
    assert kv.host.longest_prefix(np.concatenate((system, conversation(1000, 50))))[1] == 80


def test_past_the_budget_the_least_recently_parked_prompt_goes():
    ctx = FakeContext(2)
    kv = KVCacheManager(ctx, 2, 128, host_budget=100 * BYTES_PER_TOKEN, park_after=0)  # two 45-token records fit
    for base in (100, 300, 500, 700):
        served(kv, ctx, conversation(base))
    stats = kv.host.stats
    assert stats.parked_prompts == 2 and stats.parked_bytes <= 100 * BYTES_PER_TOKEN
    assert stats.parked_dropped_total == 1
    assert kv.reusable_prefix(conversation(100)) == 0, "the oldest was dropped"
    # (the last prompt token is evaluated anyway)
    assert kv.reusable_prefix(conversation(300)) == 39 and kv.reusable_prefix(conversation(500)) == 39


def test_a_prompt_larger_than_the_budget_stays_in_its_slot():
    ctx = FakeContext(2)
    kv = KVCacheManager(ctx, 2, 128, host_budget=10 * BYTES_PER_TOKEN, park_after=0)
    a = served(kv, ctx, conversation(100))
    kv.allocate(conversation(500))
    assert ctx.n[a] == 45 and kv.host.stats.parked_prompts == 0
    assert ("get", a) not in ctx.calls, "a prompt that cannot fit is not copied out only to be dropped"


def test_without_a_budget_idle_prompts_stay_in_the_cache():
    ctx = FakeContext(2)
    kv = KVCacheManager(ctx, 2, 128)
    a = served(kv, ctx, conversation(100))
    kv.allocate(conversation(500))
    assert ctx.n[a] == 45 and not any(call[0] == "get" for call in ctx.calls)


def test_without_prefix_reuse_nothing_is_parked():
    ctx = FakeContext(2)
    kv = KVCacheManager(ctx, 2, 128, reuse_prefixes=False, host_budget=1 << 20, park_after=0)
    served(kv, ctx, conversation(100))
    kv.allocate(conversation(500))
    assert kv.host.stats.parked_total == 0


def test_eviction_for_room_parks_instead_of_dropping():
    ctx = FakeContext(2)
    kv = KVCacheManager(ctx, 2, 64, n_cells=64, host_budget=1 << 20, park_after=0)
    a = kv.allocate(conversation(100))
    fill(kv, ctx, a.seq_id, conversation(100))
    kv.release(a.seq_id, keep=True)
    # The KV manager is asked directly for room (as the scheduler does when running sequences grow).
    assert kv.make_room(60)
    assert kv.evictions == 0 and kv.host.stats.parked_prompts == 1
    assert kv.reusable_prefix(conversation(100)) == 39


def test_host_cache_keeps_the_newest_on_a_tie_and_counts_bytes():
    cache = HostCache(1000)
    old = SwapRecord(np.zeros(100, np.uint8), toks(1, 2, 3), 3)
    new = SwapRecord(np.zeros(200, np.uint8), toks(1, 2, 4), 3)
    cache.put(old)
    cache.put(new)
    assert cache.longest_prefix(toks(1, 2, 9)) == (new, 2)
    cache.restored(new, keep=False)
    assert cache.stats.parked_bytes == 100 and cache.stats.parked_prompts == 1
    assert not cache.fits(1001) and cache.fits(1000) and not HostCache(0).enabled


def test_in_one_slot_a_shared_system_prompt_keeps_the_other_conversation_parked():
    ctx = FakeContext(1)
    kv = KVCacheManager(ctx, 1, 128, host_budget=1 << 20, park_after=0)
    system = conversation(100, 30)
    first = np.concatenate((system, conversation(1000, 40)))
    served(kv, ctx, first)
    other = kv.allocate(np.concatenate((system, toks(7, 8))))
    assert other.n_reused == 30, "the system prompt, kept in place"
    assert kv.host.stats.parked_prompts == 1, "what the truncation dropped was parked first"
    kv.release(other.seq_id, keep=True)
    again = kv.allocate(np.concatenate((first, np.arange(900, 905, dtype=np.int32), toks(1))))
    assert again.n_reused == 75


def test_a_sliding_window_record_comes_back_only_when_continued_whole():
    """A sliding-window cache saves a sequence's last n_swa positions: a parked record longer than
    the window is of use only to a prompt that continues all of it."""
    ctx = FakeContext(2)
    kv = KVCacheManager(ctx, 2, 128, host_budget=1 << 20, n_swa=16, park_after=0)
    first = conversation(100)
    served(kv, ctx, first)
    served(kv, ctx, conversation(500))
    partial = kv.allocate(np.concatenate((first[:30], toks(1, 2))))
    assert partial.n_reused == 0 and kv.host.stats.parked_restored_total == 0
    kv.release(partial.seq_id, keep=False)
    whole = kv.allocate(np.concatenate((first, np.arange(900, 905, dtype=np.int32), toks(1))))
    assert whole.n_reused == 45 and kv.host.stats.parked_restored_total == 1


@pytest.mark.parametrize("pos_min, reused", [(0, 30), (14, 30), (15, 0)])
def test_a_sliding_window_prefix_is_reused_while_its_window_is_there(pos_min, reused):
    ctx = FakeContext(2)
    kv = KVCacheManager(ctx, 2, 128, n_swa=16)
    a = kv.allocate(conversation(100, 30))
    fill(kv, ctx, a.seq_id, conversation(100, 30))
    kv.release(a.seq_id, keep=True)
    ctx.pos[a.seq_id] = list(range(pos_min, 30))  # the window layers dropped what fell out of it
    again = kv.allocate(np.concatenate((conversation(100, 30), toks(1))))
    assert again.n_reused == reused


def test_a_conversation_idle_for_less_than_a_second_stays_and_a_one_shot_prompt_goes_at_once():
    """An agent's next call, or a conversation's next turn in lock-step, comes at once: parking it
    would only cost two copies. A prompt whose request reused little is unlikely to come back soon."""
    now = [100.0]
    ctx = FakeContext(3)
    kv = KVCacheManager(ctx, 3, 128, host_budget=1 << 20, clock=lambda: now[0])
    first = conversation(100)
    served(kv, ctx, first)
    a = served(kv, ctx, np.concatenate((first, np.arange(900, 905, dtype=np.int32), toks(1, 2))))  # turn 2
    assert kv.slots[a].continued
    now[0] += 0.5
    b = served(kv, ctx, conversation(500))  # one-shot: reused nothing
    assert ctx.n[a] == 52 and kv.host.stats.parked_total == 0, "the conversation stays in its slot"
    kv.allocate(conversation(700))
    assert ctx.n[b] == 0 and ctx.n[a] == 52 and kv.host.stats.parked_total == 1, "the one-shot prompt went"
    now[0] += 1.0
    kv.allocate(conversation(800))  # the conversation has paused now
    assert ctx.n[a] == 0 and kv.host.stats.parked_total == 2


def test_the_host_cache_keeps_at_most_max_records_however_small(monkeypatch):
    from llmhost.engine import kv_host

    monkeypatch.setattr(kv_host, "MAX_RECORDS", 3)
    cache = HostCache(1 << 20)
    records = [SwapRecord(np.zeros(10, np.uint8), toks(i, i), 2) for i in range(5)]
    for record in records:
        cache.put(record)
    assert cache.stats.parked_prompts == 3 and cache.stats.parked_dropped_total == 2
    assert cache.longest_prefix(toks(0, 0))[1] == 0 and cache.longest_prefix(toks(4, 4))[1] == 2
