"""Slot choice and prefix reuse, against a fake context that tracks positions per sequence id."""

from __future__ import annotations

import numpy as np
import pytest

from llmhost.engine.kv_cache import KVCacheManager
from llmhost.engine.kv_host import common_prefix_len


class FakeContext:
    """Sequence id → positions held; records memory calls."""

    def __init__(self, n_seq: int, partial_rm: bool = True, can_shift: bool = True):
        self.pos: dict[int, list[int]] = {i: [] for i in range(n_seq)}
        self.partial_rm = partial_rm
        self.shiftable = can_shift
        self.calls: list[tuple] = []
        self.restore_fails = False

    @property
    def n(self) -> dict[int, int]:
        return {seq: len(p) for seq, p in self.pos.items()}

    def seq_rm(self, seq, p0=-1, p1=-1):
        self.calls.append(("rm", seq, p0, p1))
        if p0 > 0 and not self.partial_rm:
            return False
        lo, hi = max(p0, 0), (p1 if p1 >= 0 else 1 << 30)
        self.pos[seq] = [p for p in self.pos[seq] if not lo <= p < hi]
        return True

    def seq_cp(self, src, dst, p0=-1, p1=-1):
        self.calls.append(("cp", src, dst, p0, p1))
        self.pos[dst] = [p for p in self.pos[src] if p0 <= p < p1]

    def seq_add(self, seq, p0, p1, delta):
        self.calls.append(("add", seq, p0, p1, delta))
        self.pos[seq] = sorted(p + delta if p0 <= p < p1 else p for p in self.pos[seq])

    def can_shift(self):
        return self.shiftable

    def seq_pos_max(self, seq):
        return max(self.pos[seq], default=-1)

    def seq_pos_min(self, seq):
        return min(self.pos[seq], default=-1)

    def state_seq_size(self, seq):
        return 4 * len(self.pos[seq])  # what state_seq_get returns: one int32 a position

    def state_seq_get(self, seq):
        self.calls.append(("get", seq))
        return np.array(self.pos[seq], dtype=np.int32)

    def state_seq_set(self, seq, data):
        self.calls.append(("set", seq))
        if self.restore_fails:
            return False
        self.pos[seq] = data.tolist()
        return True


def toks(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int32)


def fill(kv: KVCacheManager, ctx: FakeContext, seq_id: int, tokens: np.ndarray, start: int = 0) -> None:
    kv.commit(seq_id, start, tokens[start:])
    ctx.pos[seq_id] = list(range(len(tokens)))


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


# --- cell accounting, context shift, swapping -----------------------------------------------------


def shared_pair(kv: KVCacheManager, ctx: FakeContext, system: int = 20):
    """Slot a holds system + 21 tokens; slot b shares a's system prompt and adds 2 of its own."""
    prefix = tuple(range(100, 100 + system))
    a = kv.allocate(toks(*prefix, *range(1, 22)))
    fill(kv, ctx, a.seq_id, toks(*prefix, *range(1, 22)))
    b = kv.allocate(toks(*prefix, 99, 98))
    assert b.n_reused == system
    kv.commit(b.seq_id, system, toks(99, 98))
    ctx.pos[b.seq_id] += [system, system + 1]
    return a.seq_id, b.seq_id


def test_shared_prefix_cells_are_counted_once(setup):
    kv, ctx = setup
    shared_pair(kv, ctx)
    assert kv.used_cells() == 41 + 2 and kv.free_cells() == 3 * 64 - 43


def test_cells_a_lender_drops_are_counted_for_the_borrower(setup):
    kv, ctx = setup
    a, b = shared_pair(kv, ctx)
    kv.release(a, keep=False)
    assert kv.used_cells() == 22
    kv.rollback(b, 10)  # the borrower's own cut is its own business
    assert kv.used_cells() == 10


def test_make_room_evicts_idle_slots_least_recently_used_first(setup):
    kv, ctx = setup
    ids = []
    for base in (10, 20, 30):
        alloc = kv.allocate(toks(*range(base, base + 30)))
        fill(kv, ctx, alloc.seq_id, toks(*range(base, base + 30)))
        ids.append(alloc.seq_id)
    kv.release(ids[1], keep=True)
    kv.release(ids[0], keep=True)
    assert kv.make_room(3 * 64 - 60)
    assert ctx.n[ids[1]] == 0 and ctx.n[ids[0]] == 30 and kv.evictions == 1
    assert not kv.make_room(3 * 64)  # the busy slot cannot be evicted


def test_shift_keeps_the_prefix_and_moves_the_newer_half_down(setup):
    kv, ctx = setup
    seq = kv.allocate(toks(*range(64))).seq_id
    fill(kv, ctx, seq, toks(*range(64)))
    assert kv.shift(seq, 4) == 30
    assert ("rm", seq, 4, 34) in ctx.calls and ("add", seq, 34, 64, -30) in ctx.calls
    slot = kv.slots[seq]
    assert slot.held.tolist() == [0, 1, 2, 3, *range(34, 64)]
    assert ctx.pos[seq] == list(range(34))
    # Only the kept prefix still equals a fresh evaluation of its tokens.
    assert slot.reusable.tolist() == [0, 1, 2, 3]
    kv.release(seq, keep=True)
    assert kv.allocate(toks(*range(64))).n_reused == 4


def test_shift_is_refused_where_the_cache_cannot_shift():
    ctx = FakeContext(1, can_shift=False)
    kv = KVCacheManager(ctx, 1, 64)
    fill(kv, ctx, kv.allocate(toks(*range(64))).seq_id, toks(*range(64)))
    assert kv.shift(0, 4) == 0 and kv.slots[0].n == 64


def test_shifting_shared_cells_gives_the_slot_its_own_copy_first(setup):
    kv, ctx = setup
    a, b = shared_pair(kv, ctx, system=40)
    assert kv.shift(b, 0) == 21  # would move positions 21..41, which b shares with a
    assert ("get", b) in ctx.calls and ("set", b) in ctx.calls
    assert ctx.pos[a] == list(range(61))  # the lender's cells did not move
    assert kv.slots[b].lender is None and kv.used_cells() == 61 + 21


def test_swap_round_trip_restores_tokens_and_cells(setup):
    kv, ctx = setup
    seq = kv.allocate(toks(*range(50))).seq_id
    fill(kv, ctx, seq, toks(*range(50)))
    record = kv.swap_out(seq)
    assert ctx.n[seq] == 0 and kv.used_cells() == 0 and kv.has_free_slot()
    assert record.n == 50
    back = kv.swap_in(record)
    assert kv.slots[back].held.tolist() == list(range(50)) and ctx.n[back] == 50 and kv.slots[back].busy


def test_failed_swap_in_leaves_the_record_usable(setup):
    kv, ctx = setup
    seq = kv.allocate(toks(*range(50))).seq_id
    fill(kv, ctx, seq, toks(*range(50)))
    record = kv.swap_out(seq)
    ctx.restore_fails = True
    assert kv.swap_in(record) is None and not any(s.busy for s in kv.slots)
    ctx.restore_fails = False
    assert kv.swap_in(record) is not None
