"""Batch scheduler: decides what each engine step decodes; it only keeps books.

One step = every generating sequence's next token first (decode latency matters most), then prompt
chunks of prefilling sequences in priority order until the ``n_batch`` token budget is spent.
Waiting sequences are admitted (highest priority first, then arrival order) while a KV slot is free.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from llmhost.engine.kv_cache import KVCacheManager
from llmhost.engine.sequence import Sequence, SeqStatus


@dataclass(frozen=True)
class Chunk:
    """Tokens of one sequence in this step's batch, at positions ``start…``."""

    seq: Sequence
    tokens: np.ndarray
    start: int
    sample: bool  # the last row's logits are sampled (a generated token or the prompt's end)


@dataclass(frozen=True)
class StepPlan:
    chunks: list[Chunk]
    cancelled: list[Sequence]  # running/waiting sequences the client gave up on

    @property
    def n_tokens(self) -> int:
        return sum(len(c.tokens) for c in self.chunks)


class Scheduler:
    """Waiting queue, running set and the per-step plan."""

    def __init__(self, kv: KVCacheManager, n_batch: int):
        self.kv = kv
        self.n_batch = n_batch
        self._waiting: list[tuple[int, int, Sequence]] = []  # heap of (-priority, arrival id, seq)
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        heapq.heappush(self._waiting, (-seq.priority, seq.id, seq))

    def has_work(self) -> bool:
        return bool(self._waiting or self.running)

    def waiting(self) -> list[Sequence]:
        return [entry[2] for entry in self._waiting]

    def schedule(self) -> StepPlan:
        cancelled = self._take_cancelled()
        self._admit()
        budget = self.n_batch
        chunks = []
        for seq in self.running:
            if not seq.prefilling and budget > 0:
                chunks.append(Chunk(seq, np.array([seq.next_token], dtype=np.int32), seq.n_past, True))
                budget -= 1
        for seq in sorted(self.running, key=lambda s: -s.priority):
            if seq.prefilling and budget > 0:
                tokens = seq.pending_prompt(budget)
                done = seq.n_past + len(tokens) == len(seq.prompt)
                chunks.append(Chunk(seq, tokens, seq.n_past, done))
                budget -= len(tokens)
        return StepPlan(chunks, cancelled)

    def remove(self, seq: Sequence) -> None:
        """Forget a finished sequence (its slot is released by the caller)."""
        if seq in self.running:
            self.running.remove(seq)

    def _take_cancelled(self) -> list[Sequence]:
        gone = [s for s in self.running if s.cancelled]
        for seq in gone:
            self.running.remove(seq)
        if any(entry[2].cancelled for entry in self._waiting):
            gone += [e[2] for e in self._waiting if e[2].cancelled]
            self._waiting = [e for e in self._waiting if not e[2].cancelled]
            heapq.heapify(self._waiting)
        return gone

    def _admit(self) -> None:
        while self._waiting and self.kv.has_free_slot():
            _, _, seq = heapq.heappop(self._waiting)
            allocation = self.kv.allocate(seq.prompt)
            seq.slot = allocation.seq_id
            seq.n_cached = seq.n_past = allocation.n_reused
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
