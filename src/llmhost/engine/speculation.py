"""Speculative decoding by prompt lookup: drafts from a sequence's own history, verified in one decode.

A sequence that generates text it has seen before (code being edited, a document being quoted or
summarised, a JSON answer that repeats its keys) can often be continued by looking up its last few
tokens earlier in the prompt or the reply and copying what followed them there. Those draft tokens
go into the same ``llama_decode`` as the sequence's next token, with logits on every row; the
engine then samples the rows in order with the sequence's own sampler and keeps drafts only while
each equals what was sampled at the row before it. So every token kept is the token the sampler
picks from the row a one-token step would compute (greedy or seeded, penalties and grammars
included: the sampler sees the rows in order and draws once per kept token), and a step yields
1 + (drafts accepted) tokens. Rejected drafts' cells are dropped from the KV cache.

The rows are the same only where llama.cpp computes a row of a batch as it computes the row alone.
Its kernels do for many models (SmolLM2 here: bit-identical logits) but not for all (Gemma 3 on a
CPU: rows 4 and up of a batch differ by up to 0.7 in a logit, enough to flip a close argmax). So
before a runner drafts for the first time, ``probe`` decodes a short text both ways; where any
logit differs, the runner never drafts, and ``draft_num_predict`` changes nothing. One difference
remains that no probe avoids: with an f16 KV cache, several threads and 512 or more cells in use,
llama.cpp's one-token step splits attention over the cells by thread (its "split-KV" path) and
sums the parts in another order than a batch does. Continuous batching meets the same rounding
(a sequence decoded beside others is a row of a batch too), and so does llama-server's own
speculation; a greedy reply can then differ where two tokens are within rounding of each other.

Drafting pays only when enough drafts are accepted to cover the extra rows (on a 2-core CPU a row
costs about a third of a one-token step; on a GPU next to nothing). The probe times both, and each
sequence drafts the number of tokens that maximises its expected tokens per unit of time, from its
own acceptance so far (``DraftPolicy``): none when that is too low (then it tries one token now
and then, in case the text starts repeating). It is off unless a request (or the Modelfile) sets
``draft_num_predict``; docs/benchmarks.md says where it pays.

This is llama.cpp's "prompt lookup" (n-gram) drafting; there is no draft model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from llmhost.api.option_table import MAX_DRAFT  # draft tokens per step at most (each is a batch row)
from llmhost.engine.llamacpp import Batch, Context, Model

NGRAM_MAX = 4  # longest suffix looked up
NGRAM_MIN = 2  # a single token matches too often to predict much
PROBE_TEXT = "The quick brown fox jumps over the lazy dog, and then"
PROBE_ROWS = MAX_DRAFT + 1  # rows of the probe's batch: a next token and the most drafts it may carry
PROBE_SIZES = (2, 3, 4, 5, 8, 9, PROBE_ROWS)  # batch sizes checked: tile edges, and the largest
PROBE_CELLS = 32 + PROBE_ROWS  # KV cells the probe uses at most (its text is cut at 32 tokens)

log = logging.getLogger(__name__)


class History:
    """A sequence's tokens so far (prompt, then what it generated), grown in place."""

    def __init__(self, prompt: np.ndarray):
        self._tokens = np.empty(max(64, 2 * len(prompt)), dtype=np.int32)
        self._tokens[: len(prompt)] = prompt
        self.n = len(prompt)

    def append(self, token: int) -> None:
        if self.n == len(self._tokens):
            grown = np.empty(2 * len(self._tokens), dtype=np.int32)
            grown[: self.n] = self._tokens[: self.n]
            self._tokens = grown
        self._tokens[self.n] = token
        self.n += 1

    @property
    def tokens(self) -> np.ndarray:
        return self._tokens[: self.n]


def lookup_draft(history: np.ndarray, limit: int) -> np.ndarray:
    """Up to ``limit`` tokens that followed the latest earlier occurrence of the history's last
    ``NGRAM_MAX`` … ``NGRAM_MIN`` tokens (the longest suffix that occurs wins); empty when none does.

    Image positions (ids < 0) are never drafted: a draft stops before one.
    """
    n = len(history)
    if limit <= 0 or n <= NGRAM_MIN:
        return history[:0]
    for size in range(min(NGRAM_MAX, n - 1), NGRAM_MIN - 1, -1):
        suffix = history[n - size:]
        # Candidate ends e (exclusive) of an earlier occurrence: history[e - size:e] == suffix, e < n.
        ends = np.flatnonzero(history[size - 1 : n - 1] == suffix[-1]) + size
        for k in range(2, size + 1):
            if not len(ends):
                break
            ends = ends[history[ends - k] == suffix[-k]]
        if len(ends):
            start = int(ends[-1])
            draft = history[start : start + limit]
            negative = np.flatnonzero(draft < 0)
            return draft[: negative[0]] if len(negative) else draft
    return history[:0]


class DraftPolicy:
    """How many tokens a sequence drafts next: the length ``k`` (up to its ``draft_num_predict``)
    that maximises (1 + p + p² + … + pᵏ) ÷ (1 + k·c), the tokens a step is expected to yield over
    its cost, where ``p`` is the chance that a draft token is accepted (estimated from the
    sequence's drafts so far, recent ones weighing most) and ``c`` the cost of a row relative to a
    one-token step (``Probe.row_cost``). When no length pays, the sequence rests ``REST`` steps and
    then drafts one token, so a reply that starts quoting is noticed; each such try that fails
    doubles the rest (up to ``MAX_REST``), so text that never repeats pays for few tries."""

    PRIOR = 0.5  # acceptance assumed before any evidence, worth one draft token
    DECAY = 0.9  # weight of the evidence so far when a draft's verdict comes in
    REST = 8
    MAX_REST = 64

    def __init__(self, maximum: int):
        self.maximum = max(0, min(maximum, MAX_DRAFT))
        self.drafted = 0
        self.accepted = 0
        self._hits = self.PRIOR  # decayed accepted draft tokens
        self._trials = 1.0  # decayed draft tokens judged (accepted, and the first rejected one)
        self._rest = 0  # steps left before the next draft
        self._rest_length = self.REST  # the next rest's length

    @property
    def acceptance(self) -> float:
        return self._hits / self._trials

    def length(self, row_cost: float) -> int:
        """Draft tokens to try this step (0: none); a resting sequence counts the step off."""
        if self._rest:
            self._rest -= 1
            return 1 if not self._rest else 0
        p, best, best_rate, expected = self.acceptance, 0, 1.0, 1.0
        for k in range(1, self.maximum + 1):
            expected += p**k
            rate = expected / (1 + k * row_cost)
            if rate > best_rate:
                best, best_rate = k, rate
        if not best:
            self._rest = self._rest_length
        return best

    def record(self, drafted: int, accepted: int) -> None:
        """A draft's verdict: its first ``accepted`` tokens were kept."""
        self.drafted += drafted
        self.accepted += accepted
        judged = accepted + (accepted < drafted)  # tokens after the first rejected one say nothing
        self._hits = self.DECAY * self._hits + accepted
        self._trials = self.DECAY * self._trials + judged
        self._rest_length = self.REST if accepted else min(2 * self._rest_length, self.MAX_REST)


def step_row_cost(row_cost: float, n_decoding: int) -> float:
    """A draft row's cost in the units ``DraftPolicy`` weighs it in (a sequence's one-token share of
    a step), when ``n_decoding`` sequences decode together: a step of n rows costs about
    1 + (n − 1)·c one-token steps and yields n tokens, so a row costs n·c / (1 + (n − 1)·c) of a
    token's share (c alone, for one sequence; more as the batch grows)."""
    n = max(n_decoding, 1)
    return n * row_cost / (1 + (n - 1) * row_cost)


@dataclass(frozen=True)
class Probe:
    """What ``probe`` found: whether drafting keeps rows exact here, and what a row costs."""

    exact: bool
    row_cost: float  # the time one more row adds to a step, over a one-token step's


def probe(ctx: Context, model: Model, seq_id: int) -> Probe:
    """Decode a short text one token a step, then as batches of ``PROBE_SIZES`` rows, under
    ``seq_id`` (free; its positions are cleared after): exact when every batched row's logits are
    bit-identical to the one-token step's; the row cost from the timings (a least-squares line).

    No decode holds more than the context's ``n_batch`` tokens (llama.cpp aborts the process on
    one that does): the text goes in pieces, and larger batch sizes are not tried — the scheduler
    never drafts beyond ``n_batch`` rows either."""
    prompt = model.tokenize(PROBE_TEXT, add_special=True)[:32]
    if len(prompt) == 0:
        prompt = np.zeros(1, dtype=np.int32)
    limit = max(1, ctx.n_batch)
    batch = Batch(min(max(len(prompt), PROBE_ROWS), limit))
    worst, timings = 0.0, []
    try:
        for start in range(0, len(prompt), limit):
            batch.clear()
            batch.add(prompt[start:start + limit], start, seq_id, logits="last")
            ctx.decode(batch)
        token, base = int(ctx.logits(batch.n_tokens - 1).argmax()), len(prompt)
        tokens, alone = [], []
        for i in range(PROBE_ROWS):  # greedy, one token a step: what a sequence does without drafts
            tokens.append(token)
            batch.clear()
            batch.add(np.array([token], dtype=np.int32), base + i, seq_id)
            started = time.perf_counter()
            ctx.decode(batch)
            timings.append((1, time.perf_counter() - started))
            alone.append(ctx.logits(0).copy())
            token = int(alone[-1].argmax())
        for rows in (r for r in PROBE_SIZES if r <= limit):
            ctx.seq_rm(seq_id, base, -1)
            batch.clear()
            batch.add(np.array(tokens[:rows], dtype=np.int32), base, seq_id, logits="all")
            started = time.perf_counter()
            ctx.decode(batch)
            timings.append((rows, time.perf_counter() - started))
            worst = max(worst, *(float(np.abs(ctx.logits(i) - alone[i]).max()) for i in range(rows)))
    finally:
        ctx.seq_rm(seq_id, -1, -1)
    if worst:
        log.warning("speculative decoding is off for this model: llama.cpp computes a batch's rows "
                    "differently from single rows here (logits differ by up to %.3g), so drafts could "
                    "change the output", worst)
    rows, seconds = np.array(timings, dtype=np.float64).T
    slope = float(np.polyfit(rows, seconds, 1)[0])
    single = float(np.median(seconds[rows == 1]))
    row_cost = float(np.clip(slope / single, 0.001, 1.0)) if single > 0 else 1.0
    log.info("speculative decoding: rows %s, a row costs %.2f of a one-token step (%.2f ms)",
             "exact" if worst == 0 else "inexact", row_cost, 1000 * single)
    return Probe(exact=worst == 0.0, row_cost=row_cost)
