"""Slot choice and prefix reuse, against a fake context that tracks positions per sequence id."""

from __future__ import annotations

import numpy as np
import pytest

from llmhost.engine.kv_cache import KVCacheManager, common_prefix_len


class FakeContext:
    """Sequence id → number of positions held (0..n-1); records memory calls."""

    def __init__(self, n_seq: int, partial_rm: bool = True):
        self.n = {i: 0 for i in range(n_seq)}
        self.partial_rm = partial_rm
        self.calls: list[tuple] = []

    def seq_rm(self, seq, p0=-1, p1=-1):
        self.calls.append(("rm", seq, p0, p1))
        if p0 > 0 and not self.partial_rm:
            return False
        self.n[seq] = 0 if p0 < 0 else min(self.n[seq], p0)
        return True

    def seq_cp(self, src, dst, p0=-1, p1=-1):
        self.calls.append(("cp", src, dst, p0, p1))
        self.n[dst] = p1

    def seq_pos_max(self, seq):
        return self.n[seq] - 1

    def seq_pos_min(self, seq):
        return 0 if self.n[seq] else -1


def toks(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int32)


def fill(kv: KVCacheManager, ctx: FakeContext, seq_id: int, tokens: np.ndarray, start: int = 0) -> None:
    kv.commit(seq_id, start, tokens[start:])
    ctx.n[seq_id] = len(tokens)


@pytest.fixture
def setup():
    ctx = FakeContext(3)
    return KVCacheManager(ctx, 3, 64), ctx


@pytest.mark.parametrize(
    "a, b, n",
    [([], [1], 0), ([1, 2, 3], [1, 2, 3], 3), ([1, 2, 3], [1, 2], 2), ([1, 2], [3, 2], 0), ([5, 6, 7], [5, 6, 8], 2)],
)
def test_common_prefix_len(a, b, n):
    assert common_prefix_len(toks(*a), toks(*b)) == n


def test_first_request_reuses_nothing(setup):
    kv, _ = setup
    alloc = kv.allocate(toks(1, 2, 3))
    assert alloc.n_reused == 0 and alloc.source is None


def test_next_turn_continues_in_its_own_slot(setup):
    kv, ctx = setup
    first = kv.allocate(toks(1, 2, 3, 4))
    fill(kv, ctx, first.seq_id, toks(1, 2, 3, 4, 50, 51))  # prompt + generated
    kv.release(first.seq_id, keep=True)
    second = kv.allocate(toks(1, 2, 3, 4, 50, 51, 9, 10))
    assert second.seq_id == first.seq_id and second.n_reused == 6
    assert not any(c[0] == "cp" for c in ctx.calls)


def test_whole_prompt_cached_still_reevaluates_the_last_token(setup):
    kv, ctx = setup
    first = kv.allocate(toks(1, 2, 3))
    fill(kv, ctx, first.seq_id, toks(1, 2, 3))
    kv.release(first.seq_id, keep=True)
    again = kv.allocate(toks(1, 2, 3))
    assert again.n_reused == 2 and ctx.n[again.seq_id] == 2


def test_shared_system_prompt_is_copied_into_another_slot(setup):
    kv, ctx = setup
    system = tuple(range(100, 120))
    first = kv.allocate(toks(*system, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21))
    fill(kv, ctx, first.seq_id, toks(*system, *range(1, 22)))
    second = kv.allocate(toks(*system, 99, 98))  # first is still running
    assert second.seq_id != first.seq_id and second.n_reused == 20 and second.source == first.seq_id
    assert ("cp", first.seq_id, second.seq_id, 0, 20) in ctx.calls
    assert ctx.n[first.seq_id] == 41  # the source keeps everything


def test_idle_conversation_keeps_its_cache_when_only_the_system_prompt_matches(setup):
    kv, ctx = setup
    system = tuple(range(100, 110))
    a = kv.allocate(toks(*system, *range(1, 31)))
    fill(kv, ctx, a.seq_id, toks(*system, *range(1, 31)))
    kv.release(a.seq_id, keep=True)
    b = kv.allocate(toks(*system, 77))
    assert b.seq_id != a.seq_id and b.n_reused == 10
    assert ctx.n[a.seq_id] == 40


def test_least_recently_used_idle_slot_is_overwritten_first(setup):
    kv, ctx = setup
    ids = []
    for base in (10, 20, 30):
        alloc = kv.allocate(toks(base, base + 1))
        fill(kv, ctx, alloc.seq_id, toks(base, base + 1))
        ids.append(alloc.seq_id)
    for seq_id in (ids[1], ids[0], ids[2]):  # release order = LRU order: ids[1] is oldest
        kv.release(seq_id, keep=True)
    fresh = kv.allocate(toks(5, 6))
    assert fresh.seq_id == ids[1] and fresh.n_reused == 0
    assert ctx.n[ids[0]] == 2 and ctx.n[ids[2]] == 2


def test_cache_without_partial_removal_starts_over(setup):
    ctx = FakeContext(1, partial_rm=False)
    kv = KVCacheManager(ctx, 1, 64)
    first = kv.allocate(toks(1, 2, 3, 4))
    fill(kv, ctx, first.seq_id, toks(1, 2, 3, 4))
    kv.release(first.seq_id, keep=True)
    second = kv.allocate(toks(1, 2, 3, 9))
    assert second.n_reused == 0 and ctx.n[0] == 0


def test_prefix_reuse_can_be_switched_off():
    ctx = FakeContext(2)
    kv = KVCacheManager(ctx, 2, 64, reuse_prefixes=False)
    first = kv.allocate(toks(1, 2, 3))
    fill(kv, ctx, first.seq_id, toks(1, 2, 3))
    kv.release(first.seq_id, keep=True)
    assert kv.allocate(toks(1, 2, 3, 4)).n_reused == 0


def test_no_free_slot_is_an_error(setup):
    kv, _ = setup
    for _ in range(3):
        kv.allocate(toks(1))
    assert not kv.has_free_slot()
    with pytest.raises(RuntimeError):
        kv.allocate(toks(1))
