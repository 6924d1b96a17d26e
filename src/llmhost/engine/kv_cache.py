"""KV cache manager: which sequence id ("slot") holds which tokens, prefix reuse, cell accounting,
context shift and swapping sequences to host memory.

The context has one unified KV pool of ``n_cells`` cells shared by ``n_slots`` sequence ids. Each
slot mirrors the tokens its sequence id holds (position i holds ``tokens[i]``); the mirror is updated
only after a successful decode. A slot holds at most ``slot_capacity`` tokens (the per-sequence
context); the pool may be smaller than ``n_slots × slot_capacity`` (``--kv-cells``), so the cells are
counted and the scheduler swaps sequences out when they run short.

Prefix reuse: a new request looks for the longest common prefix among all slots' tokens (its own
earlier turn, or another conversation's system prompt, even one still running) and evaluates only
the rest. The prefix is either kept in place (the slot continues its own conversation) or shared
into a free slot with ``llama_memory_seq_cp``, which in a unified KV only tags the cells with another
sequence id — no copy, no extra cells. Finished sequences leave their tokens cached in their idle
slot. With a host budget (``engine.kv_host``), each admission parks the idle slots in host memory and
frees their cells, since idle cells slow every running sequence; a prompt that continues a parked
one gets its cells copied back. Without one (or past it), idle slots are overwritten, or evicted
when cells are needed, least recently used first.

Only the first ``Slot.exact`` tokens of a slot are offered for reuse: after a context shift the
cells past the kept prefix were computed with a different history than their token prefix implies.

Images: the positions of an image hold ids derived from its content (``engine.images``, all < -1),
so a request that sends the same image again matches it like any token prefix. A context shift
never drops part of an image.

Cell accounting: a cell tagged with several sequence ids is counted once. A slot that got its first
``borrowed`` positions from a ``lender`` by ``seq_cp`` does not count them while the lender still
holds them; when the lender drops them the borrower counts them again. The count can only be too
high (when sharing chains break), never too low, so a plan that fits by the count fits for real.

The prefix index is a vectorised scan over the slot mirrors: with at most a few dozen slots, one
numpy comparison per slot beats walking a Python radix tree token by token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from llmhost.engine.images import image_run_bounds
from llmhost.engine.kv_host import MIN_RESTORE, HostCache, SwapRecord, common_prefix_len, worth_restoring
from llmhost.engine.llamacpp import Context

log = logging.getLogger(__name__)

# Seconds a slot must have been idle before an admission parks it: a conversation that comes back
# sooner (an agent's next call, a benchmark's lock-step turns) would only pay two copies for it.
PARK_AFTER = 1.0


@dataclass(eq=False)
class Slot:
    """One KV sequence id and a mirror of the tokens it holds."""

    seq_id: int
    capacity: int
    tokens: np.ndarray = field(init=False)
    n: int = 0  # tokens held (positions 0..n-1)
    exact: int = 0  # leading tokens whose cells equal a fresh evaluation of tokens[:exact]
    lender: Slot | None = None  # the slot whose cells positions [0, borrowed) share
    borrowed: int = 0
    busy: bool = False  # a running sequence owns it
    last_used: int = 0  # LRU clock tick of the last release
    idle_since: float = 0.0  # when it was last released (the manager's clock)
    continued: bool = False  # its last request reused most of its prompt: a conversation under way

    def __post_init__(self) -> None:
        self.tokens = np.zeros(self.capacity, dtype=np.int32)

    @property
    def held(self) -> np.ndarray:
        return self.tokens[: self.n]

    @property
    def reusable(self) -> np.ndarray:
        return self.tokens[: min(self.n, self.exact)]


@dataclass(frozen=True)
class Allocation:
    """Where a new sequence runs and how much of its prompt is already in the KV."""

    seq_id: int
    n_reused: int
    source: int | None  # slot the prefix came from (itself or another), None when nothing reused


class KVCacheManager:
    """Owns the slot table and every KV-memory call the engine makes."""

    def __init__(self, ctx: Context, n_slots: int, slot_capacity: int, *, reuse_prefixes: bool = True,
                 n_cells: int | None = None, host_budget: int = 0, n_swa: int = 0,
                 park_after: float = PARK_AFTER, clock: Callable[[], float] = time.monotonic):  # fmt: skip
        """``host_budget``: bytes of host memory for parked prompts (``engine.kv_host``; 0: idle
        prompts stay in the KV cache until evicted); an admission parks the slots idle for at least
        ``park_after`` seconds. ``n_swa``: the model's sliding window (0: none)."""
        self.ctx = ctx
        self.n_cells = n_cells if n_cells is not None else n_slots * slot_capacity
        self.slot_capacity = min(slot_capacity, self.n_cells)
        self.reuse_prefixes = reuse_prefixes
        self.n_swa = n_swa
        self.park_after = park_after
        self._now = clock
        self.slots = [Slot(i, self.slot_capacity) for i in range(n_slots)]
        self.host = HostCache(host_budget if reuse_prefixes else 0)
        self._clock = 0
        self.evictions = 0  # idle cached slots dropped to make room

    # --- slots ------------------------------------------------------------------------------------

    def has_free_slot(self) -> bool:
        return any(not s.busy for s in self.slots)

    def allocate(self, prompt: np.ndarray) -> Allocation:
        """Pick a free slot for ``prompt`` and set its KV up with the longest reusable prefix (from
        a slot, or copied back from host memory); every other idle slot is parked meanwhile."""
        source, match = self.longest_prefix(prompt)
        parked, parked_reuse = self._parked_reuse(prompt)
        # Re-evaluate at least the last prompt token: its logits are what the first sample needs.
        n_reuse = min(match, len(prompt) - 1) if self.reuse_prefixes else 0
        if parked is not None and parked_reuse > n_reuse:
            self.park_idle()  # first, so the cells copied back take the lowest free ones
            target = self._choose_target(None, 0)
            self._displace(target)
            fits = self.free_cells() >= parked.n
            n_reuse, source = self._restore(parked, target, parked_reuse) if fits else 0, None
        else:
            if n_reuse <= 0:
                source = None
            self.park_idle(keep=source)
            target = self._choose_target(source, n_reuse)
            if source is target:
                if target.n - n_reuse >= MIN_RESTORE:  # keep what the truncation drops (an image, a reply)
                    self._park(target, copy=True)
                n_reuse = self._truncate(target, n_reuse)
            else:
                self._displace(target)
                if source is not None:
                    self._share(source, target, n_reuse)
                    if not source.busy and self._paused(source):
                        self._park(source)  # the new sequence holds the shared cells now
                else:
                    n_reuse = 0
        n_reuse = self._verify(target, n_reuse)
        target.busy = True
        target.continued = 2 * n_reuse >= len(prompt)
        return Allocation(target.seq_id, n_reuse, source.seq_id if source is not None and n_reuse else None)

    def admission_cells(self, prompt: np.ndarray) -> tuple[int, Slot | None]:
        """Free cells a sequence for ``prompt`` needs at admission, and the slot it shares a prefix
        with (to keep while making room); a parked prefix needs its whole record for a moment."""
        source, match = self.longest_prefix(prompt)
        parked, parked_reuse = self._parked_reuse(prompt)
        if parked is not None and parked_reuse > match:
            return max(parked.n, len(prompt)), None
        return len(prompt) - match, source

    def reusable_prefix(self, prompt: np.ndarray) -> int:
        """How much of ``prompt`` the cache holds, in a slot or parked."""
        return max(self.longest_prefix(prompt)[1], self._parked_reuse(prompt)[1])

    def park_idle(self, *, keep: Slot | None = None) -> None:
        """Copy the idle cached slots but ``keep`` to host memory, within its budget, and free their
        cells (``engine.kv_host``): those idle for ``park_after`` seconds, whose conversations paused.
        One whose next request comes at once (an agent's tool loop) stays where it is."""
        if not self.host.enabled:
            return
        for slot in self.slots:
            if slot is not keep and self._paused(slot):
                self._park(slot)

    def commit(self, seq_id: int, start: int, tokens: np.ndarray) -> None:
        """Record tokens decoded into a slot at positions ``start…`` (after a successful decode)."""
        slot = self.slots[seq_id]
        end = start + len(tokens)
        slot.tokens[start:end] = tokens
        slot.n = end
        if slot.exact == start:
            slot.exact = end

    def release(self, seq_id: int, *, keep: bool) -> None:
        """The slot's sequence is done; ``keep`` leaves its tokens cached for later requests."""
        slot = self.slots[seq_id]
        slot.busy = False
        self._clock += 1
        slot.last_used = self._clock
        slot.idle_since = self._now()
        if not keep:
            self._clear(slot)

    def scratch_slot(self, n: int) -> int | None:
        """A free slot, emptied, for a moment's private use of ``n`` cells (the caller leaves it
        empty again); None when every slot is busy or the cells cannot be found."""
        free = [s for s in self.slots if not s.busy]
        if not free:
            return None
        slot = min(free, key=lambda s: (s.n > 0, s.last_used))  # an empty one, else the stalest
        self._displace(slot)
        return slot.seq_id if self.make_room(n) else None

    def rollback(self, seq_id: int, n: int) -> None:
        """Forget everything from position ``n`` on (a failed decode may have left part of it)."""
        slot = self.slots[seq_id]
        if not self.ctx.seq_rm(seq_id, n, -1):
            n = 0
            self.ctx.seq_rm(seq_id, -1, -1)
        self._cut(slot, min(slot.n, n))

    def cached_tokens(self) -> int:
        return sum(s.n for s in self.slots)

    def longest_prefix(self, prompt: np.ndarray) -> tuple[Slot | None, int]:
        """The slot whose reusable tokens share the longest prefix with ``prompt``, and its length."""
        best, best_len = None, 0
        if not self.reuse_prefixes:
            return best, best_len
        # Idle slots first, so a tie goes to one whose reuse costs no running sequence anything.
        for slot in sorted(self.slots, key=lambda s: s.busy):
            n = common_prefix_len(slot.reusable, prompt)
            if n > best_len:
                best, best_len = slot, n
        return best, best_len

    # --- cells ------------------------------------------------------------------------------------

    def used_cells(self) -> int:
        """Cells in use (an upper bound: shared cells are counted once while the sharing is known)."""
        return sum(s.n - s.borrowed for s in self.slots)

    def free_cells(self) -> int:
        return self.n_cells - self.used_cells()

    def make_room(self, n: int, *, protect: Slot | None = None) -> bool:
        """Evict idle cached slots (least recently used first) until ``n`` cells are free."""
        while self.free_cells() < n:
            idle = [s for s in self.slots if not s.busy and s.n > 0 and s is not protect]
            if not idle:
                return False
            if not self._displace(min(idle, key=lambda s: s.last_used)):
                self.evictions += 1
        return True

    def evict_idle(self) -> bool:
        """Drop the least recently used idle cached slot; False when there is none."""
        idle = [s for s in self.slots if not s.busy and s.n > 0]
        if not idle:
            return False
        if not self._displace(min(idle, key=lambda s: s.last_used)):
            self.evictions += 1
        return True

    # --- context shift ----------------------------------------------------------------------------

    def shift(self, seq_id: int, n_keep: int) -> int:
        """Make room in a full slot: keep the first ``n_keep`` positions, drop the oldest half of the
        rest and move the newer half down. Returns the positions dropped (0: not possible here)."""
        slot = self.slots[seq_id]
        n = slot.n
        # Neither end of the dropped range may split an image (its positions are ids < -1).
        keep = image_run_bounds(slot.held, max(0, min(n_keep, n - 2)))[0]
        discard = image_run_bounds(slot.held, keep + (n - keep) // 2)[1] - keep
        if discard <= 0 or not self.ctx.can_shift():
            return 0
        # Moving a cell moves it for every sequence tagged on it: give this slot cells of its own first.
        if self._shared_from(slot) > keep + discard and not self._unshare(slot):
            return 0
        if not self.ctx.seq_rm(seq_id, keep, keep + discard):
            return 0
        self.ctx.seq_add(seq_id, keep + discard, n, -discard)
        slot.tokens[keep : n - discard] = slot.tokens[keep + discard : n]
        self._invalidate_from(slot, keep)
        slot.n = n - discard
        return discard

    # --- swapping ---------------------------------------------------------------------------------

    def swap_out(self, seq_id: int) -> SwapRecord:
        """Copy a slot's cells to host memory and free the slot."""
        slot = self.slots[seq_id]
        data = self.ctx.state_seq_get(seq_id) if slot.n else np.empty(0, dtype=np.uint8)
        record = SwapRecord(data, slot.held.copy(), min(slot.exact, slot.n))
        self._clear(slot)
        slot.busy = False
        return record

    def swap_in(self, record: SwapRecord) -> int | None:
        """Restore a swapped sequence into a free slot; its id, or None when the cells do not fit."""
        free = [s for s in self.slots if not s.busy]
        if not free:
            return None
        self.park_idle()  # first, so the cells copied back take the lowest free ones
        empty = [s for s in free if s.n == 0]
        slot = empty[0] if empty else min(free, key=lambda s: s.last_used)
        self._displace(slot)
        if record.n and not self.ctx.state_seq_set(slot.seq_id, record.data):
            log.warning("could not restore a swapped sequence (%d tokens) into the KV cache", record.n)
            return None
        slot.tokens[: record.n] = record.tokens
        slot.n, slot.exact, slot.busy = record.n, record.exact, True
        return slot.seq_id

    # --- internals --------------------------------------------------------------------------------

    def _choose_target(self, source: Slot | None, n_reuse: int) -> Slot:
        free = [s for s in self.slots if not s.busy]
        if not free:
            raise RuntimeError("no free KV slot (the scheduler admits only while one is free)")
        # Continue in the source slot itself when it is idle and most of what it holds is the match
        # (a conversation's next turn); otherwise share the prefix into another slot so the source's
        # own continuation stays cached too (another conversation with the same system prompt).
        if source is not None and not source.busy:
            others = [s for s in free if s is not source]
            if source.n - n_reuse <= n_reuse or not others:
                return source
            free = others
        empty = [s for s in free if s.n == 0]
        if empty:
            return empty[0]
        return min(free, key=lambda s: s.last_used)

    def _paused(self, slot: Slot) -> bool:
        """Whether an idle slot's prompt is worth parking now: a one-shot prompt (its request reused
        little) at once; a conversation's, once it has been idle for ``park_after`` seconds."""
        return not slot.continued or slot.idle_since <= self._now() - self.park_after

    def _parked_reuse(self, prompt: np.ndarray) -> tuple[SwapRecord | None, int]:
        """The parked record whose copy back would serve ``prompt`` best, and the positions it
        would reuse (the last prompt token is always evaluated); (None, 0) when none pays."""
        if not self.reuse_prefixes:
            return None, 0
        record, match = self.host.longest_prefix(prompt)
        n_reuse = min(match, len(prompt) - 1)
        if record is None or not worth_restoring(record, n_reuse):
            return None, 0
        # A sliding-window cache saves only the last n_swa positions of a sequence, so a record
        # longer than the window must be continued whole: the positions before it are gone.
        if self.n_swa and n_reuse < record.n and record.n > self.n_swa:
            return None, 0
        return record, n_reuse

    def _park(self, slot: Slot, *, copy: bool = False) -> bool:
        """Copy an idle slot's cells to host memory and free them (``copy``: keep them too); False
        (the slot left as it was) when parking is off, the slot holds nothing reusable, or it would
        not fit the budget."""
        exact = min(slot.exact, slot.n)
        # The size first: a prompt larger than the budget stays, and must not be copied (possibly
        # hundreds of MB) at every admission only to be thrown away.
        if not self.host.enabled or slot.busy or not exact or not self.host.fits(self.ctx.state_seq_size(slot.seq_id)):
            return False
        self.host.put(SwapRecord(self.ctx.state_seq_get(slot.seq_id), slot.held.copy(), exact))
        if not copy:
            self._clear(slot)
        return True

    def _displace(self, slot: Slot) -> bool:
        """An idle slot gives way: parked where it can be, else dropped. True when parked."""
        if not slot.n:
            return False
        if self._park(slot):
            return True
        self._clear(slot)
        return False

    def _restore(self, record: SwapRecord, target: Slot, n_reuse: int) -> int:
        """Copy a parked prompt back into the empty ``target`` and keep its first ``n_reuse``
        positions; the positions reused (0 when the cells could not be placed)."""
        if not self.ctx.state_seq_set(target.seq_id, record.data):
            log.warning("could not copy a parked prompt (%d tokens) back into the KV cache", record.n)
            self._clear(target)
            return 0
        target.tokens[: record.n] = record.tokens
        target.n, target.exact = record.n, record.exact
        # A request that continues the record takes it; one that shares only its beginning (another
        # conversation with the same system prompt) leaves it parked for its own continuation.
        self.host.restored(record, keep=2 * n_reuse < record.n)
        return self._truncate(target, n_reuse)

    def _truncate(self, slot: Slot, n_keep: int) -> int:
        if n_keep >= slot.n:
            return slot.n
        if self.ctx.seq_rm(slot.seq_id, n_keep, -1):
            self._cut(slot, n_keep)
            return n_keep
        # Recurrent/SWA caches cannot drop a tail: start over.
        self._clear(slot)
        return 0

    def _share(self, source: Slot, target: Slot, n: int) -> None:
        self.ctx.seq_cp(source.seq_id, target.seq_id, 0, n)
        target.tokens[:n] = source.tokens[:n]
        target.n = target.exact = target.borrowed = n
        target.lender = source

    def _clear(self, slot: Slot) -> None:
        if slot.n:
            self.ctx.seq_rm(slot.seq_id, -1, -1)
        self._cut(slot, 0)

    def _cut(self, slot: Slot, n: int) -> None:
        """The slot now holds only positions [0, n)."""
        slot.n = min(slot.n, n)
        self._invalidate_from(slot, n)

    def _invalidate_from(self, slot: Slot, n: int) -> None:
        """Positions from ``n`` on no longer hold what they held (dropped, moved or overwritten)."""
        slot.exact = min(slot.exact, n)
        slot.borrowed = min(slot.borrowed, n)
        if not slot.borrowed:
            slot.lender = None
        for other in self.slots:  # whoever borrowed those cells from this slot now owns them
            if other.lender is slot and other.borrowed > n:
                other.borrowed = n
                if not n:
                    other.lender = None

    def _shared_from(self, slot: Slot) -> int:
        """End of the prefix of ``slot`` that may share cells with another sequence id."""
        ends = [o.borrowed for o in self.slots if o.lender is slot]
        return max([slot.borrowed, *ends])

    def _unshare(self, slot: Slot) -> bool:
        """Give a slot private copies of all its cells (a round trip through host memory)."""
        shared = self._shared_from(slot)
        if not self.make_room(shared, protect=slot):
            return False
        record = SwapRecord(self.ctx.state_seq_get(slot.seq_id), slot.held.copy(), slot.exact)
        self._clear(slot)
        if not self.ctx.state_seq_set(slot.seq_id, record.data):
            log.warning("slot %d: lost its cells while unsharing them", slot.seq_id)
            return False
        slot.tokens[: record.n] = record.tokens
        slot.n, slot.exact = record.n, record.exact
        return True

    def _verify(self, slot: Slot, n_reuse: int) -> int:
        """Trust the mirror only if the KV agrees. A sliding-window cache drops a sequence's positions
        once they fall out of the window (llama.cpp's pos_min is then the window's): reuse holds while
        the last ``n_swa`` positions before the new ones are there, all those layers attend to."""
        if n_reuse == 0:
            return 0
        oldest = max(0, n_reuse - self.n_swa) if self.n_swa else 0
        if self.ctx.seq_pos_max(slot.seq_id) == n_reuse - 1 and 0 <= self.ctx.seq_pos_min(slot.seq_id) <= oldest:
            return n_reuse
        log.debug("slot %d: cached prefix not fully present, re-evaluating", slot.seq_id)
        self._clear(slot)
        return 0
