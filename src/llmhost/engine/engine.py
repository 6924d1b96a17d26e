"""The engine: one thread that owns the llama.cpp context and runs the continuous-batching loop.

Each step is three verbs (as in vLLM): ``schedule()`` picks this step's tokens, ``_execute()`` fills
one batch, runs one ``llama_decode`` and samples every sequence whose logits were requested (first
emitting the token's log-probabilities for a sequence that asked for them), and ``_update()``
turns sampled tokens into streamed text, shifts the context of sequences that filled their window,
and finishes sequences.

With a projector (``engine.vision``), a step whose plan holds image positions runs more than one
decode: first each image decoded non-causally (alone, causal attention off), then one batch of
every other image's embedding rows (several sequences' together), then the token batch, which
holds the generating sequences as always. An image's rows come from the encoder's cache or are
encoded just before (``ImageEncoder``); a failed encode ends only its own sequence.

Requests arrive from asyncio through a thread-safe inbox; outputs leave through each sequence's sink
(the runner's ``runner_stream.OutputStream``: through the event loop, or written to the connection by
this thread). The thread blocks on the inbox only when there is nothing to do, and ctypes releases the GIL during ``llama_decode``, so the event loop keeps
serving while the model runs.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from llmhost.engine.kv_cache import PARK_AFTER, KVCacheManager
from llmhost.engine.llamacpp import Batch, Context, DecodeError, Model
from llmhost.engine.logprobs import LogprobsProcessor
from llmhost.engine.outputs import OutputProcessor
from llmhost.engine.scheduler import Chunk, Scheduler
from llmhost.engine.sequence import Failed, FinishReason, Sequence
from llmhost.engine.speculation import PROBE_CELLS, Probe, probe

if TYPE_CHECKING:
    from llmhost.engine.vision import ImageEncoder

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
    draft_tokens: int = 0  # speculative draft tokens verified (engine.speculation)
    draft_accepted: int = 0  # of those, the ones kept
    draft_exact: int = -1  # whether drafts keep the output exact on this model: 1, 0, or -1 not probed yet


# Longest an idle engine waits, once a request has come, for others the runner is still preparing
# (rendering, tokenizing): a burst of requests (chats in lock-step, a client's parallel calls) then
# starts in one step instead of the first alone, for which the rest would wait a whole step. A burst's
# requests reach the engine within a few ms of each other; a lone request never waits.
GATHER_WINDOW = 0.02


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
        images: ImageEncoder | None = None,
        draft_row_cost: float | None = None,
        host_cache_bytes: int = 0,
        park_after: float = PARK_AFTER,
    ):
        """``images``: the encoder of a runner with a projector (None: prompts have no images).
        ``draft_row_cost``: what a batch row costs over a one-token step, for speculative decoding's
        policy; None: timed by the probe (a fixed value makes the drafting reproducible).
        ``host_cache_bytes``: host memory for idle prompts parked out of the KV cache
        (``engine.kv_host``); 0, or a cache that cannot drop part of a sequence: none are parked.
        ``park_after``: how long a slot must have been idle before an admission parks it."""
        self.model = model
        self.ctx = ctx
        self.images = images
        # The pool is the context's real size (llama.cpp rounds n_ctx up); each slot is capped at
        # the per-sequence context, and at the pool.
        # Recurrent and hybrid caches hold a fixed state per sequence: idle ones slow nothing down.
        self.kv = KVCacheManager(ctx, n_slots, slot_capacity, reuse_prefixes=reuse_prefixes, n_cells=ctx.n_ctx,
                                 host_budget=host_cache_bytes if ctx.can_trim else 0, n_swa=model.n_swa,
                                 park_after=park_after)
        # A sequence id no slot uses, for the engine's own short-lived decodes (a context made with
        # more ids than slots; else a free slot is borrowed).
        self.probe_seq = n_slots if ctx.n_seq_max > n_slots else None
        # Drafts need a cache that can drop rejected ones, and a model whose batched rows are exact
        # (probed when a sequence first wants to draft: ``_probe_drafts``).
        self.scheduler = Scheduler(self.kv, ctx.n_batch, ctx.n_ubatch, drafts_allowed=None if ctx.can_trim else False)
        self.outputs = OutputProcessor(model)
        self.logprobs = LogprobsProcessor(model)
        self.context_shift = context_shift
        self.stats = EngineStats()
        self._batch = Batch(ctx.n_batch)
        self._embd_batch = Batch(ctx.n_batch, model.n_embd_inp) if images is not None else None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="llmhost-engine", daemon=True)
        self._closed = False  # no more submissions: they are failed on the spot
        self._close_lock = threading.Lock()
        self.crashed = False
        self.on_exit: Callable[[], None] | None = None  # called from the engine thread when it ends
        self._lost: list[Sequence] = []  # sequences whose cells a step lost: ended after its update
        self._draft_row_cost = draft_row_cost
        self._preparing = 0  # requests announced by ``expect`` and not yet submitted or given up
        self._preparing_lock = threading.Lock()
        self.gather_window = GATHER_WINDOW

    # --- any thread -------------------------------------------------------------------------------

    def expect(self) -> Callable[[], None]:
        """A request is being prepared and will likely be submitted soon: an idle engine holds its
        first step for it (``GATHER_WINDOW`` at most). Returns the function to call once the request
        is submitted or given up (after ``submit``; calling it again does nothing)."""
        with self._preparing_lock:
            self._preparing += 1
        settled = False

        def settle() -> None:
            nonlocal settled
            if not settled:
                settled = True
                with self._preparing_lock:
                    self._preparing -= 1
                self._inbox.put(_WAKE)

        return settle

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
            **self.kv.host.stats.__dict__,
            "images_encoded": self.images.encoded if self.images else 0,  # by the projector
            "images_cached": self.images.cache_hits if self.images else 0,  # rows reused from its cache
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
            while self._drain_inbox(block=not self.scheduler.has_work()) and self._gather():
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

    def _gather(self) -> bool:
        """Before an idle engine's first step: wait for the requests being prepared (``expect``), for
        ``gather_window`` at most. False once stop was requested."""
        if self.scheduler.running or not self.scheduler.has_work() or not self._preparing:
            return True
        deadline = time.monotonic() + self.gather_window
        while self._preparing and (left := deadline - time.monotonic()) > 0:
            try:
                item = self._inbox.get(timeout=left)
            except queue.Empty:
                break
            if item is _STOP:
                return False
            if isinstance(item, Sequence):
                self.scheduler.add(item)
        return True

    def step(self) -> None:
        """One schedule → execute → update round."""
        if self.scheduler.drafts_allowed is None and self.scheduler.wants_drafts():
            self._probe_drafts()
        plan = self.scheduler.schedule()
        for seq in plan.cancelled:
            self._finish(seq, FinishReason.CANCELLED)
        chunks = self._with_image_rows(plan.chunks)
        if not chunks:
            return
        self.stats.steps += 1
        now = time.perf_counter_ns()
        for chunk in chunks:
            if chunk.seq.prefilling and not chunk.seq.t_prefill:
                chunk.seq.t_prefill = now
        sampled: dict[Sequence, list[int]] = {}
        for decode in _decodes(chunks) if self.images is not None else [chunks]:
            try:
                sampled.update(self._execute(decode))
            except DecodeError as e:
                self._update(sampled)  # what the step's earlier decodes produced stands
                if not (e.code == 1 and self._relieve(decode)):
                    self._on_decode_error(decode, e)
                return
        self._update(sampled)

    def _execute(self, chunks: list[Chunk]) -> dict[Sequence, list[int]]:
        """One llama_decode of ``chunks`` (all token ids, or all image rows); the samples it gives."""
        images = chunks[0].image is not None
        batch = self._embd_batch if images else self._batch
        assert batch is not None, "image positions without a projector"
        batch.clear()
        rows: list[tuple[Chunk, int]] = []
        for chunk in chunks:
            data = self._image_rows(chunk) if images else chunk.tokens
            logits = "all" if chunk.draft else "last" if chunk.sample else "none"
            row = batch.add(data, chunk.start, chunk.seq.held_slot, logits=logits)
            rows.append((chunk, row))
        non_causal = images and _non_causal(chunks[0])
        if non_causal:
            self.ctx.set_causal(False)
        try:
            self.ctx.decode(batch)
        finally:
            if non_causal:
                self.ctx.set_causal(True)
        for chunk in chunks:
            self.kv.commit(chunk.seq.held_slot, chunk.start, chunk.tokens)
            if chunk.seq.prefilling:
                self.stats.prompt_tokens += len(chunk.tokens)
            chunk.seq.n_past = chunk.start + len(chunk.tokens)
            if images:
                chunk.seq.release_images(chunk.seq.n_past)
        return {chunk.seq: self._verify(chunk, row) if chunk.draft else [self._sample(chunk.seq, row)]
                for chunk, row in rows if chunk.sample}

    def _verify(self, chunk: Chunk, last_row: int) -> list[int]:
        """The tokens a drafted chunk yields: its rows sampled in order while each sample equals the
        draft token after it (so each is what one-token steps would have sampled), then the first
        sample that differs, or the one after the last draft. The rejected drafts' cells are dropped."""
        seq, n_draft = chunk.seq, chunk.draft
        first_row = last_row - n_draft
        kept: list[int] = []
        for i in range(n_draft + 1):
            token = self._sample(seq, first_row + i)
            kept.append(token)
            if i == n_draft or token != chunk.tokens[i + 1]:
                break
        accepted = len(kept) - 1
        if accepted < n_draft:
            seq.n_past = chunk.start + 1 + accepted
            self.kv.rollback(seq.held_slot, seq.n_past)
            if self.kv.slots[seq.held_slot].n != seq.n_past:  # the cache dropped more than the drafts
                self._untrimmable(seq)
        assert seq.drafting is not None  # only drafting sequences get drafts
        seq.drafting.record(n_draft, accepted)
        self.stats.draft_tokens += n_draft
        self.stats.draft_accepted += accepted
        return kept

    def _untrimmable(self, seq: Sequence) -> None:
        """The KV cache could not drop just the rejected drafts (it lost the sequence's cells): the
        sequence cannot go on, and this runner drafts no more."""
        log.error("sequence %d: the KV cache could not drop rejected drafts; speculative decoding is off", seq.id)
        self.scheduler.drafts_allowed = False
        self._lost.append(seq)

    def _with_image_rows(self, chunks: list[Chunk]) -> list[Chunk]:
        """``chunks``, once every image chunk's rows are at hand (cached or encoded now); a sequence
        whose image fails to encode ends with an error, and its chunks leave the step."""
        if self.images is None:
            return chunks
        failed: dict[Sequence, str] = {}
        for chunk in chunks:
            if chunk.image is None or chunk.seq in failed:
                continue
            try:
                self.images.rows(chunk.image.media)
            except RuntimeError as e:
                log.error("sequence %d: %s", chunk.seq.id, e)
                failed[chunk.seq] = str(e)
        for seq, message in failed.items():
            self.scheduler.remove(seq)
            seq.emit(Failed(message))
            self._release(seq, keep=True)
        return [chunk for chunk in chunks if chunk.seq not in failed]

    def _image_rows(self, chunk: Chunk) -> np.ndarray:
        span = chunk.image
        assert span is not None and span.media.rows is not None  # fetched by _with_image_rows
        offset = chunk.start - span.start
        return span.media.rows[offset:offset + len(chunk.tokens)]

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

    def _probe_drafts(self) -> None:
        """Find out once whether drafts keep the output exact here, and what a row costs
        (``speculation.probe``), under ``probe_seq`` or in a free slot; without the cells or a slot
        now, the next step tries again."""
        if self.probe_seq is not None:
            seq_id = self.probe_seq if self.kv.make_room(PROBE_CELLS) else None
        else:
            seq_id = self.kv.scratch_slot(PROBE_CELLS)
        if seq_id is None:
            return
        try:
            found = probe(self.ctx, self.model, seq_id)
        except DecodeError as e:
            log.warning("speculative decoding is off: its probe failed (%s)", e)
            found = Probe(exact=False, row_cost=1.0)
        self.scheduler.drafts_allowed = found.exact
        self.scheduler.row_cost = found.row_cost if self._draft_row_cost is None else self._draft_row_cost
        self.stats.draft_exact = int(found.exact)

    def _relieve(self, chunks: list[Chunk]) -> bool:
        """llama_decode found no room for the step (status 1: nothing was stored): free cells by
        evicting or swapping out, and let the next step re-plan. False when nothing can give way."""
        for chunk in chunks:  # defensive: a failed decode should have stored nothing
            self.kv.rollback(chunk.seq.held_slot, chunk.start)
        self.stats.kv_full_retries += 1
        return self.scheduler.relieve()

    def _update(self, sampled: dict[Sequence, list[int]]) -> None:
        for seq in self._lost:
            sampled.pop(seq, None)
            self.scheduler.remove(seq)
            seq.emit(Failed("the KV cache could not drop rejected speculative drafts; retry without draft_num_predict"))
            self._release(seq, keep=False)
        self._lost.clear()
        for seq, tokens in sampled.items():
            reason = None
            for token in tokens:  # more than one when drafts were accepted
                reason = self.outputs.on_token(seq, token)
                if reason is not None:
                    break  # what follows was never generated (its cells stay: they match the tokens)
            if reason is None and seq.n_past >= self.kv.slot_capacity and not self._shift(seq):
                reason = FinishReason.LENGTH  # no position left for the token just sampled
            if reason is not None:
                self.scheduler.remove(seq)
                self._finish(seq, reason)

    def _shift(self, seq: Sequence) -> bool:
        """Context shift: drop the oldest half of what follows the kept prefix."""
        if not self.context_shift:
            return False
        dropped = self.kv.shift(seq.held_slot, seq.n_keep)
        if dropped <= 0:
            return False
        seq.n_past -= dropped
        self.stats.context_shifts += 1
        log.debug("sequence %d: context shift dropped %d tokens", seq.id, dropped)
        return True

    def _on_decode_error(self, chunks: list[Chunk], error: DecodeError) -> None:
        """A failed decode may have stored part of the batch: roll every sequence in it back to
        what was committed (which stays cached) and end them with an error line; the engine itself
        keeps serving."""
        log.error("%s for %d sequences", error, len(chunks))
        self.stats.decode_failures += 1
        for chunk in chunks:
            seq = chunk.seq
            self.kv.rollback(seq.held_slot, chunk.start)
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


def _decodes(chunks: list[Chunk]) -> list[list[Chunk]]:
    """A step's llama_decode calls in order: each non-causal image alone, the other images' rows
    together, then the tokens (a sequence's image chunk always precedes its text chunk)."""
    images = [c for c in chunks if c.image is not None]
    alone = [[c] for c in images if _non_causal(c)]
    together = [c for c in images if not _non_causal(c)]
    tokens = [c for c in chunks if c.image is None]
    return [*alone, *([together] if together else []), *([tokens] if tokens else [])]


def _non_causal(chunk: Chunk) -> bool:
    return chunk.image is not None and chunk.image.media.non_causal
