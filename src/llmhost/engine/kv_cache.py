"""KV cache manager: which sequence id ("slot") holds which tokens, and prefix reuse between requests.

The context has one unified KV pool of ``n_slots × slot_capacity`` cells shared by ``n_slots``
sequence ids. Each slot mirrors exactly the tokens its sequence id holds in the KV (position i holds
``tokens[i]``); the mirror is updated only after a successful decode.

Prefix reuse: a new request looks for the longest common prefix among all slots' tokens (its own
earlier turn, or another conversation's system prompt, even one still running) and evaluates only
the rest. The prefix is either kept in place (the slot continues its own conversation) or shared
into a free slot with ``llama_memory_seq_cp``, which in a unified KV only tags the cells with another
sequence id — no copy, no extra cells. Finished sequences leave their tokens cached in their idle
slot; an idle slot is overwritten least-recently-used first when a new request needs a slot.

Capacity: every slot is capped at ``slot_capacity`` tokens and there are ``n_slots`` of them, so the
tokens held never exceed the pool's cells and admission never has to wait for cells, only for a slot.

The prefix index is a vectorised scan over the slot mirrors: with at most a few dozen slots, one
numpy comparison per slot beats walking a Python radix tree token by token.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from llmhost.engine.llamacpp import Context

log = logging.getLogger(__name__)


def common_prefix_len(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two token arrays."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if diff.size else n


@dataclass(eq=False)
class Slot:
    """One KV sequence id and a mirror of the tokens it holds."""

    seq_id: int
    capacity: int
    tokens: np.ndarray = field(init=False)
    n: int = 0  # tokens held (positions 0..n-1)
    busy: bool = False  # a running sequence owns it
    last_used: int = 0  # LRU clock tick of the last release

    def __post_init__(self) -> None:
        self.tokens = np.zeros(self.capacity, dtype=np.int32)

    @property
    def held(self) -> np.ndarray:
        return self.tokens[: self.n]


@dataclass(frozen=True)
class Allocation:
    """Where a new sequence runs and how much of its prompt is already in the KV."""

    seq_id: int
    n_reused: int
    source: int | None  # slot the prefix came from (itself or another), None when nothing reused


class KVCacheManager:
    """Owns the slot table and every KV-memory call the engine makes."""

    def __init__(self, ctx: Context, n_slots: int, slot_capacity: int, *, reuse_prefixes: bool = True):
        self.ctx = ctx
        self.slot_capacity = slot_capacity
        self.reuse_prefixes = reuse_prefixes
        self.slots = [Slot(i, slot_capacity) for i in range(n_slots)]
        self._clock = 0

    def has_free_slot(self) -> bool:
        return any(not s.busy for s in self.slots)

    def allocate(self, prompt: np.ndarray) -> Allocation:
        """Pick a free slot for ``prompt`` and set its KV up with the longest reusable prefix."""
        source, match = self._longest_prefix(prompt)
        # Re-evaluate at least the last prompt token: its logits are what the first sample needs.
        n_reuse = min(match, len(prompt) - 1) if self.reuse_prefixes else 0
        if n_reuse <= 0:
            source = None
        target = self._choose_target(source, n_reuse)
        if source is target:
            n_reuse = self._truncate(target, n_reuse)
        else:
            self._clear(target)
            if source is not None:
                self._share(source, target, n_reuse)
            else:
                n_reuse = 0
        n_reuse = self._verify(target, n_reuse)
        target.busy = True
        return Allocation(target.seq_id, n_reuse, source.seq_id if source is not None and n_reuse else None)

    def commit(self, seq_id: int, start: int, tokens: np.ndarray) -> None:
        """Record tokens decoded into a slot at positions ``start…`` (after a successful decode)."""
        slot = self.slots[seq_id]
        end = start + len(tokens)
        slot.tokens[start:end] = tokens
        slot.n = end

    def release(self, seq_id: int, *, keep: bool) -> None:
        """The slot's sequence is done; ``keep`` leaves its tokens cached for later requests."""
        slot = self.slots[seq_id]
        slot.busy = False
        self._clock += 1
        slot.last_used = self._clock
        if not keep:
            self._clear(slot)

    def rollback(self, seq_id: int, n: int) -> None:
        """Forget everything from position ``n`` on (a failed decode may have left part of it)."""
        slot = self.slots[seq_id]
        if not self.ctx.seq_rm(seq_id, n, -1):
            n = 0
            self.ctx.seq_rm(seq_id, -1, -1)
        slot.n = min(slot.n, n)

    def evict_idle(self) -> bool:
        """Drop the least recently used idle cached slot; False when there is none."""
        idle = [s for s in self.slots if not s.busy and s.n > 0]
        if not idle:
            return False
        self._clear(min(idle, key=lambda s: s.last_used))
        return True

    def cached_tokens(self) -> int:
        return sum(s.n for s in self.slots)

    # --- internals --------------------------------------------------------------------------------

    def _longest_prefix(self, prompt: np.ndarray) -> tuple[Slot | None, int]:
        best, best_len = None, 0
        # Idle slots first, so a tie goes to one whose reuse costs no running sequence anything.
        for slot in sorted(self.slots, key=lambda s: s.busy):
            n = common_prefix_len(slot.held, prompt)
            if n > best_len:
                best, best_len = slot, n
        return best, best_len

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

    def _truncate(self, slot: Slot, n_keep: int) -> int:
        if n_keep >= slot.n:
            return slot.n
        if self.ctx.seq_rm(slot.seq_id, n_keep, -1):
            slot.n = n_keep
            return n_keep
        # Recurrent/SWA caches cannot drop a tail: start over.
        self._clear(slot)
        return 0

    def _share(self, source: Slot, target: Slot, n: int) -> None:
        self.ctx.seq_cp(source.seq_id, target.seq_id, 0, n)
        target.tokens[:n] = source.tokens[:n]
        target.n = n

    def _clear(self, slot: Slot) -> None:
        if slot.n:
            self.ctx.seq_rm(slot.seq_id, -1, -1)
        slot.n = 0

    def _verify(self, slot: Slot, n_reuse: int) -> int:
        """Trust the mirror only if the KV agrees (an SWA cache may have pruned early positions)."""
        if n_reuse == 0:
            return 0
        if self.ctx.seq_pos_max(slot.seq_id) == n_reuse - 1 and self.ctx.seq_pos_min(slot.seq_id) == 0:
            return n_reuse
        log.debug("slot %d: cached prefix not fully present, re-evaluating", slot.seq_id)
        self.ctx.seq_rm(slot.seq_id, -1, -1)
        slot.n = 0
        return 0
