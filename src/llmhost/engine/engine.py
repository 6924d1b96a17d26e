"""The engine: one thread that owns the llama.cpp context and runs the continuous-batching loop.

Each step is three verbs (as in vLLM): ``schedule()`` picks this step's tokens, ``_execute()`` fills
one batch, runs one ``llama_decode`` and samples every sequence whose logits were requested (first
emitting the token's log-probabilities for a sequence that asked for them), and ``_update()``
turns sampled tokens into streamed text, shifts the context of sequences that filled their window,
and finishes sequences.

Requests arrive from asyncio through a thread-safe inbox; outputs leave through each sequence's sink
(which the runner wires to the event loop through ``server.Mailbox``). The thread blocks on the inbox only when
there is nothing to do, and ctypes releases the GIL during ``llama_decode``, so the event loop keeps
serving while the model runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Callable

from llmhost.engine.kv_cache import KVCacheManager
from llmhost.engine.llamacpp import Batch, Context, DecodeError, Model
from llmhost.engine.logprobs import LogprobsProcessor
from llmhost.engine.outputs import OutputProcessor
from llmhost.engine.scheduler import Chunk, Scheduler, StepPlan
from llmhost.engine.sequence import Failed, FinishReason, Sequence

log = logging.getLogger(__name__)

_WAKE = object()  # inbox marker: re-check cancellation flags
_STOP = object()  # inbox marker: fail what is left and end the thread


@dataclass
class EngineStats:
    """Counters for /health and metrics (written by the engine thread only)."""

    steps: int = 0
    prompt_tokens: int = 0  # prompt tokens evaluated
    cached_tokens: int = 0  # prompt tokens reused from the KV cache
    generated_tokens: int = 0
    decode_failures: int = 0
    context_shifts: int = 0
    kv_full_retries: int = 0  # steps re-planned because llama_decode found no KV room


class Engine:
    """Owns ``ctx`` from its own thread; ``submit``/``cancel``/``stop`` are safe from any thread."""

    def __init__(
        self,
        model: Model,
        ctx: Context,
        *,
        n_slots: int,
        slot_capacity: int,
        reuse_prefixes: bool = True,
        context_shift: bool = True,
    ):
        self.model = model
        self.ctx = ctx
        # The pool is the context's real size (llama.cpp rounds n_ctx up); each slot is capped at
        # the per-sequence context, and at the pool.
        self.kv = KVCacheManager(ctx, n_slots, slot_capacity, reuse_prefixes=reuse_prefixes, n_cells=ctx.n_ctx)
        self.scheduler = Scheduler(self.kv, ctx.n_batch)
        self.outputs = OutputProcessor(model)
        self.logprobs = LogprobsProcessor(model)
        self.context_shift = context_shift
        self.stats = EngineStats()
        self._batch = Batch(ctx.n_batch)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="llmhost-engine", daemon=True)
        self._closed = False  # no more submissions: they are failed on the spot
        self._close_lock = threading.Lock()
        self.crashed = False
        self.on_exit: Callable[[], None] | None = None  # called from the engine thread when it ends

    # --- any thread -------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def submit(self, seq: Sequence) -> None:
        with self._close_lock:
            if not self._closed:
                self._inbox.put(seq)
                return
        seq.emit(Failed("the model runner is shutting down"))
        seq.close()

    def cancel(self, seq: Sequence) -> None:
        """Stop a sequence at the next step (its slot is released, its tokens stay cached)."""
        seq.cancelled = True
        self._inbox.put(_WAKE)

    def snapshot(self) -> dict[str, int]:
        """Counters for /health; read from another thread, so approximate by a step at most."""
        sched = self.scheduler
        return {
            "running": len(sched.running),
            "waiting": self._inbox.qsize() + len(sched.waiting()),
            "swapped": sched.swapped(),
            "kv_tokens": self.kv.cached_tokens(),
            "kv_cells": self.kv.n_cells,
            "kv_cells_used": self.kv.used_cells(),
            "evicted_total": self.kv.evictions,
            **sched.stats.__dict__,
            **self.stats.__dict__,
        }

    def stop(self, timeout: float | None = 10.0) -> None:
        """End the loop after the current step; unfinished sequences get an error line."""
        if self._thread.is_alive():
            self._inbox.put(_STOP)
            self._thread.join(timeout)

    # --- engine thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        message = "the model runner is shutting down"
        try:
            while self._drain_inbox(block=not self.scheduler.has_work()):
                self.step()
        except Exception as e:
            log.exception("engine loop crashed")
            self.crashed = True
            message = f"the engine failed: {e}"
        finally:
            self._fail_all(message)
            if self.on_exit is not None:
                self.on_exit()

    def _drain_inbox(self, *, block: bool) -> bool:
        """Move new requests to the scheduler; False once stop was requested."""
        try:
            item = self._inbox.get() if block else self._inbox.get_nowait()
            while True:
                if item is _STOP:
                    return False
                if isinstance(item, Sequence):
                    self.scheduler.add(item)
                item = self._inbox.get_nowait()
        except queue.Empty:
            return True

    def step(self) -> None:
        """One schedule → execute → update round."""
        plan = self.scheduler.schedule()
        for seq in plan.cancelled:
            self._finish(seq, FinishReason.CANCELLED)
        if not plan.chunks:
            return
        self.stats.steps += 1
        try:
            sampled = self._execute(plan)
        except DecodeError as e:
            if e.code == 1 and self._relieve(plan):
                return
            self._on_decode_error(plan, e)
            return
        self._update(plan, sampled)

    def _execute(self, plan: StepPlan) -> dict[Sequence, int]:
        batch = self._batch
        batch.clear()
        rows: list[tuple[Chunk, int]] = []
        for chunk in plan.chunks:
            row = batch.add(chunk.tokens, chunk.start, chunk.seq.slot, logits="last" if chunk.sample else "none")
            rows.append((chunk, row))
        now = time.perf_counter_ns()
        for chunk in plan.chunks:
            if chunk.seq.prefilling and not chunk.seq.t_prefill:
                chunk.seq.t_prefill = now
        self.ctx.decode(batch)
        for chunk in plan.chunks:
            self.kv.commit(chunk.seq.slot, chunk.start, chunk.tokens)
            if chunk.seq.prefilling:
                self.stats.prompt_tokens += len(chunk.tokens)
            chunk.seq.n_past = chunk.start + len(chunk.tokens)
        return {chunk.seq: self._sample(chunk.seq, row) for chunk, row in rows if chunk.sample}

    def _sample(self, seq: Sequence, row: int) -> int:
        """The sequence's next token; its log-probabilities go out first when the sequence asked
        (not for an end-of-generation token, nor one num_predict drops: they have no text)."""
        if seq.logprobs is None:
            return seq.sampler.sample(self.ctx, row)
        logits = self.ctx.logits(row).copy()  # the raw row: penalties change it in place
        token = seq.sampler.sample(self.ctx, row)
        if not self.model.is_eog(token) and (seq.max_tokens is None or seq.n_generated < seq.max_tokens):
            seq.emit(self.logprobs.describe(logits, token, seq.logprobs))
        return token

    def _relieve(self, plan: StepPlan) -> bool:
        """llama_decode found no room for the step (status 1: nothing was stored): free cells by
        evicting or swapping out, and let the next step re-plan. False when nothing can give way."""
        for chunk in plan.chunks:  # defensive: a failed decode should have stored nothing
            self.kv.rollback(chunk.seq.slot, chunk.start)
        self.stats.kv_full_retries += 1
        return self.scheduler.relieve()

    def _update(self, plan: StepPlan, sampled: dict[Sequence, int]) -> None:
        for seq, token in sampled.items():
            reason = self.outputs.on_token(seq, token)
            if reason is None and seq.n_past >= self.kv.slot_capacity and not self._shift(seq):
                reason = FinishReason.LENGTH  # no position left for the token just sampled
            if reason is not None:
                self.scheduler.remove(seq)
                self._finish(seq, reason)

    def _shift(self, seq: Sequence) -> bool:
        """Context shift: drop the oldest half of what follows the kept prefix."""
        if not self.context_shift:
            return False
        dropped = self.kv.shift(seq.slot, seq.n_keep)
        if dropped <= 0:
            return False
        seq.n_past -= dropped
        self.stats.context_shifts += 1
        log.debug("sequence %d: context shift dropped %d tokens", seq.id, dropped)
        return True

    def _on_decode_error(self, plan: StepPlan, error: DecodeError) -> None:
        """A failed decode may have stored part of the batch: roll every sequence in it back to
        what was committed (which stays cached) and end them with an error line; the engine itself
        keeps serving."""
        log.error("%s for %d sequences", error, len(plan.chunks))
        self.stats.decode_failures += 1
        for chunk in plan.chunks:
            seq = chunk.seq
            self.kv.rollback(seq.slot, chunk.start)
            self.scheduler.remove(seq)
            seq.emit(Failed(f"decoding failed (llama_decode status {error.code})"))
            self._release(seq, keep=True)

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        self.stats.cached_tokens += seq.n_cached
        self.stats.generated_tokens += seq.n_generated
        self.outputs.finish(seq, reason)
        self._release(seq, keep=True)

    def _release(self, seq: Sequence, *, keep: bool) -> None:
        if seq.slot is not None:
            self.kv.release(seq.slot, keep=keep)
            seq.slot = None
        seq.close()

    def _fail_all(self, message: str) -> None:
        pending = list(self.scheduler.running) + self.scheduler.waiting()
        with self._close_lock:  # after this, submit() fails requests itself
            self._closed = True
            while True:
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if isinstance(item, Sequence):
                    pending.append(item)
        for seq in pending:
            self.scheduler.remove(seq)
            seq.emit(Failed(message))
            self._release(seq, keep=False)
