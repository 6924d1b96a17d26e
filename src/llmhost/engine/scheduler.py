"""Batch scheduler: decides what each engine step decodes, and which sequences hold KV cells.

One step = every generating sequence's next token first (decode latency matters most), then prompt
chunks of prefilling sequences in priority order until the ``n_batch`` token budget or the free KV
cells are spent. A step with no prompt to evaluate may also carry speculative drafts after the next
tokens of the sequences that asked for them (``engine.speculation``), in cells that are free anyway.

A prompt with images (``Sequence.images``) is evaluated in pieces of one kind: llama.cpp decodes a
batch of token ids or of embedding rows, not both, and the engine runs a step's image rows before
its tokens. So a sequence's chunks in one step are the rest of the image it is in (or the part of
it the budget allows) and then the text up to its next image; or, at text, that text alone. An
image a projector decodes non-causally goes whole (up to a ubatch) in a decode of its own.

Sequences that are not running wait in one queue ordered by priority (higher first), then age: new
arrivals, and sequences swapped out to host memory (which keep their age, so they come back before
younger work of the same priority). The head of the queue is admitted when a slot is free and its
cells fit (its prompt, or its saved cells, plus a small reserve so the running sequences can keep
growing for a while); when they do not, a running sequence of lower priority is swapped out for it.
When the running sequences' next tokens do not fit, idle cached prefixes are evicted first, then the
lowest-priority running sequence (ties: the youngest) is swapped out.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from llmhost.engine.images import ImageSpan
from llmhost.engine.kv_cache import KVCacheManager
from llmhost.engine.kv_host import common_prefix_len
from llmhost.engine.sequence import SeqStatus, Sequence
from llmhost.engine.speculation import PROBE_ROWS, lookup_draft, step_row_cost

MIN_SHARED_PREFILL = 32  # tokens: below this, evaluating twice is cheaper than waiting
# llama.cpp attends over the KV cells up to the highest one in use, rounded up to a multiple of 256
# (llama_kv_cache::get_n_kv). A step that ends just past a multiple pays for up to 255 cells more
# in this step's attention and all later ones. That happens whenever a prompt continues a few
# reused tokens: the BOS or a template's opening kept from an idle slot shifts every later boundary
# (four 1,500-token prompts ran 4% slower for one reused token). So a full prefill step ends where
# the cells in use reach such a multiple.
KV_PAD = 256


@dataclass(frozen=True)
class Chunk:
    """Tokens of one sequence in this step's batch, at positions ``start…``."""

    seq: Sequence
    tokens: np.ndarray  # for an image: the ids standing for its positions (the KV mirror keeps them)
    start: int
    sample: bool  # the last row's logits are sampled (a generated token or the prompt's end)
    image: ImageSpan | None = None  # the image these positions belong to: decoded as embedding rows
    draft: int = 0  # of ``tokens``, the last ``draft`` are drafts to verify (every row is sampled)


@dataclass(frozen=True)
class StepPlan:
    chunks: list[Chunk]
    cancelled: list[Sequence]  # running/waiting sequences the client gave up on

    @property
    def n_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.chunks)


@dataclass
class SchedulerStats:
    """Totals since start (written by the engine thread only)."""

    swapped_out_total: int = 0
    swapped_in_total: int = 0
    preempted_total: int = 0  # swap-outs made for a higher-priority arrival
    swapped_bytes: int = 0  # host memory held by swapped sequences now


class Scheduler:
    """Waiting queue, running set and the per-step plan."""

    def __init__(self, kv: KVCacheManager, n_batch: int, n_ubatch: int | None = None, *,
                 drafts_allowed: bool | None = True):
        """``drafts_allowed``: whether sequences may draft (``engine.speculation``); None: not
        known yet (no drafts until the engine has found out, see ``wants_drafts``)."""
        self.kv = kv
        self.n_batch = n_batch
        self.drafts_allowed = drafts_allowed
        self.row_cost = 1.0  # a batch row's cost over a one-token step's (``speculation.Probe``)
        # Rows of a non-causal image per decode: llama.cpp needs them in one ubatch, and the budget
        # left beside the other slots' next tokens must be able to hold them.
        self.whole_image_rows = max(1, min(n_ubatch or n_batch, n_batch - len(kv.slots) + 1))
        self._queue: list[tuple[int, int, Sequence]] = []  # heap of (-priority, seq id, seq)
        self.running: list[Sequence] = []
        self.stats = SchedulerStats()
        # Free cells an admission leaves for the running sequences' next tokens, so a sequence just
        # admitted is not swapped out again at the next step (only needed when the pool is smaller
        # than every slot at full capacity).
        overcommitted = kv.n_cells < len(kv.slots) * kv.slot_capacity
        self.reserve = max(1, kv.n_cells // 16) if overcommitted else 0

    def add(self, seq: Sequence) -> None:
        heapq.heappush(self._queue, (-seq.priority, seq.id, seq))

    def wants_drafts(self) -> bool:
        """Whether a generating sequence would draft if drafts were allowed."""
        return any(s.drafting is not None and not s.prefilling for s in self.running)

    def has_work(self) -> bool:
        return bool(self._queue or self.running)

    def waiting(self) -> list[Sequence]:
        """Sequences not running: new ones and swapped-out ones."""
        return [entry[2] for entry in self._queue]

    def swapped(self) -> int:
        return sum(1 for entry in self._queue if entry[2].status is SeqStatus.SWAPPED)

    def schedule(self) -> StepPlan:
        cancelled = self._take_cancelled()
        self._admit()
        decoding = self._fit_decode()
        prefilling = sorted((s for s in self.running if s.prefilling), key=lambda s: (-s.priority, s.id))
        if prefilling or not self.drafts_allowed:
            chunks = [Chunk(s, np.array([s.next_token], dtype=np.int32), s.n_past, True) for s in decoding]
        else:
            chunks = self._drafted(decoding)
        budget = self.n_batch - sum(len(c.tokens) for c in chunks)
        if prefilling and budget > 0:
            wanted = sum(len(s.prompt) - s.n_past for s in prefilling)
            self.kv.make_room(len(decoding) + min(budget, wanted))
            budget = min(budget, self.kv.free_cells() - len(decoding))
            if wanted > budget:
                budget -= self._past_padding(sum(len(c.tokens) for c in chunks) + budget, budget)
        for seq in prefilling:
            if budget <= 0:
                break
            for chunk in self._prefill(seq, budget):
                chunks.append(chunk)
                budget -= len(chunk.tokens)
        return StepPlan(chunks, cancelled)

    def _past_padding(self, n_step: int, budget: int) -> int:
        """Prompt tokens a full step of ``n_step`` cells gives up so that the cells in use end on a
        multiple of ``KV_PAD`` (see above); 0 where that would leave fewer than ``KV_PAD`` of its
        ``budget``. The KV manager's count of used cells stands for llama.cpp's highest one: they
        match while the cache has no holes, which parking keeps it close to."""
        over = (self.kv.used_cells() + n_step) % KV_PAD
        return over if budget - over >= KV_PAD else 0

    def remove(self, seq: Sequence) -> None:
        """Forget a finished sequence (its slot is released by the caller)."""
        if seq in self.running:
            self.running.remove(seq)

    def relieve(self) -> bool:
        """The KV had no room for a planned step: free some cells; False when nothing can go."""
        if self.kv.evict_idle():
            return True
        if len(self.running) < 2:
            return False
        self._swap_out(self._victim(self.running))
        return True

    # --- internals --------------------------------------------------------------------------------

    def _drafted(self, decoding: list[Sequence]) -> list[Chunk]:
        """Each generating sequence's next token, and after it the draft tokens its history suggests
        (``engine.speculation``), within the batch and the cells free now (drafts never evict)."""
        chunks = []
        # Drafts only while the step stays within the batch size whose rows were found exact.
        room = min(self.n_batch, self.kv.free_cells(), PROBE_ROWS) - len(decoding)
        row_cost = step_row_cost(self.row_cost, len(decoding))
        for seq in decoding:
            tokens = np.array([seq.next_token], dtype=np.int32)
            limit = min(room, self._draft_limit(seq, row_cost))
            if limit > 0:
                assert seq.history is not None  # kept by every drafting sequence
                draft = lookup_draft(seq.history.tokens, limit)
                if len(draft):
                    tokens = np.concatenate((tokens, draft))
                    room -= len(draft)
            chunks.append(Chunk(seq, tokens, seq.n_past, True, draft=len(tokens) - 1))
        return chunks

    def _draft_limit(self, seq: Sequence, row_cost: float) -> int:
        """Draft tokens ``seq`` may try this step: what its policy finds worth the rows, no further
        than its context holds, and no more than its num_predict leaves after the token every step
        yields anyway."""
        if seq.drafting is None:
            return 0
        limit = min(seq.drafting.length(row_cost), self.kv.slot_capacity - seq.n_past - 1)
        if seq.max_tokens is not None:
            limit = min(limit, seq.max_tokens - seq.n_generated - 1)
        return limit

    def _prefill(self, seq: Sequence, budget: int) -> list[Chunk]:
        """This step's prompt chunks of ``seq`` (see the module docstring)."""
        if not seq.images:
            tokens = seq.pending_prompt(budget)
            return [Chunk(seq, tokens, seq.n_past, seq.n_past + len(tokens) == len(seq.prompt))]
        chunks, pos = [], seq.n_past
        span = seq.image_at(pos)
        if span is not None:
            n = min(span.end - pos, budget)
            if span.media.non_causal:
                n = min(span.end - pos, self.whole_image_rows)
                if n > budget:
                    return []  # a later step, with the room to decode it whole
            chunks.append(Chunk(seq, seq.prompt[pos:pos + n], pos, pos + n == len(seq.prompt), span))
            pos, budget = pos + n, budget - n
            if pos < span.end:
                return chunks
        n = min(seq.next_image(pos) - pos, budget)
        if n > 0:
            chunks.append(Chunk(seq, seq.prompt[pos:pos + n], pos, pos + n == len(seq.prompt)))
        return chunks

    def _fit_decode(self) -> list[Sequence]:
        """The generating sequences, after making room for one new cell each."""
        while True:
            decoding = [s for s in self.running if not s.prefilling]
            if self.kv.make_room(len(decoding)) or not self.running:
                return decoding
            self._swap_out(self._victim(self.running))

    def _admit(self) -> None:
        while self._queue:
            seq = self._queue[0][2]
            if self._shares_a_prefill_in_progress(seq):
                return  # admitted once that prefix is in the cache: one evaluation, then seq_cp
            if self.kv.has_free_slot() and self._room_for(seq):
                heapq.heappop(self._queue)
                if not self._start(seq):
                    heapq.heappush(self._queue, (-seq.priority, seq.id, seq))
                    return
                continue
            lower = [s for s in self.running if s.priority < seq.priority]
            if not lower:
                return
            self._swap_out(self._victim(lower))
            self.stats.preempted_total += 1

    def _shares_a_prefill_in_progress(self, seq: Sequence) -> bool:
        """True when a running sequence is still evaluating a prefix ``seq`` could copy instead.

        Eight chats that share a system prompt and arrive together would otherwise each evaluate it;
        waiting the few steps until the first one has it in the cache costs less than evaluating it.
        """
        if seq.swap is not None:
            return False
        cached = self.kv.reusable_prefix(seq.prompt)
        for other in self.running:
            if other.prefilling:
                shared = common_prefix_len(other.prompt, seq.prompt)
                if shared - cached >= MIN_SHARED_PREFILL and other.n_past < shared:
                    return True
        return False

    def _room_for(self, seq: Sequence) -> bool:
        reserve = self.reserve if self.running else 0
        if seq.swap is not None:
            return self.kv.make_room(seq.swap.n + reserve)
        needed, source = self.kv.admission_cells(seq.prompt)
        if self.kv.make_room(needed + reserve, protect=source):
            return True
        return self.kv.make_room(len(seq.prompt) + reserve)

    def _start(self, seq: Sequence) -> bool:
        if seq.swap is not None:
            slot = self.kv.swap_in(seq.swap)
            if slot is None:
                return False
            self.stats.swapped_in_total += 1
            self.stats.swapped_bytes -= seq.swap.data.nbytes
            seq.swap = None
        else:
            allocation = self.kv.allocate(seq.prompt)
            slot = allocation.seq_id
            n_reused = seq.resumable(allocation.n_reused)
            if n_reused < allocation.n_reused:
                self.kv.rollback(slot, n_reused)
            seq.n_cached = seq.n_past = n_reused
            seq.release_images(n_reused)  # images found in the cache need no encoding
        seq.slot = slot
        seq.status = SeqStatus.RUNNING
        self.running.append(seq)
        return True

    @staticmethod
    def _victim(candidates: list[Sequence]) -> Sequence:
        """Lowest priority first; among equals the youngest (it has waited least)."""
        return min(candidates, key=lambda s: (s.priority, -s.id))

    def _swap_out(self, seq: Sequence) -> None:
        self.running.remove(seq)
        if seq.n_past == 0:  # nothing in the KV yet: simply wait again
            self.kv.release(seq.held_slot, keep=False)
            seq.status = SeqStatus.WAITING
        else:
            seq.swap = self.kv.swap_out(seq.held_slot)
            seq.status = SeqStatus.SWAPPED
            self.stats.swapped_out_total += 1
            self.stats.swapped_bytes += seq.swap.data.nbytes
        seq.slot = None
        self.add(seq)

    def _take_cancelled(self) -> list[Sequence]:
        gone = [s for s in self.running if s.cancelled]
        for seq in gone:
            self.running.remove(seq)
        if any(entry[2].cancelled for entry in self._queue):
            dropped = [e[2] for e in self._queue if e[2].cancelled]
            for seq in dropped:
                if seq.swap is not None:
                    self.stats.swapped_bytes -= seq.swap.data.nbytes
                    seq.swap = None
            gone += dropped
            self._queue = [e for e in self._queue if not e[2].cancelled]
            heapq.heapify(self._queue)
        return gone
