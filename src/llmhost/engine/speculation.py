"""Speculative decoding by prompt lookup: drafts from a sequence's own history, verified in one decode.

A sequence that generates text it has seen before (code being edited, a document being quoted or
summarised, a JSON answer that repeats its keys) can often be continued by looking up its last few
tokens earlier in the prompt or the reply and copying what followed them there. Those draft tokens
go into the same ``llama_decode`` as the sequence's next token, with logits on every row; the
engine then samples the rows in order with the sequence's own sampler and keeps drafts only while
each equals what was sampled at the row before it. So every token kept is exactly the token the
sampler would have produced one step at a time (greedy or seeded, penalties and grammars
included: the sampler sees the same rows, in the same order, and draws once per kept token), and a
step yields 1 + (drafts accepted) tokens. Rejected drafts' cells are dropped from the KV cache.

That equality holds only where the model computes a row of a batch exactly as it computes the row
alone. llama.cpp's kernels do for many models (SmolLM2 here: bit-identical logits) but not for all
(Gemma 3 on a CPU: rows 4 and up of a batch differ by up to 0.7 in a logit, enough to flip a close
argmax). So before a runner drafts for the first time, ``rows_match_alone`` decodes a short text
both ways; where any logit differs, the runner never drafts, and ``draft_num_predict`` changes nothing.

This is llama.cpp's "prompt lookup" (n-gram) drafting, with no draft model. A step with drafts
costs more than a one-token step (on a CPU, more rows are more compute), so drafting adapts: each
sequence's draft length doubles after a fully accepted draft and halves after a rejected one, and
a lookup that finds no earlier occurrence drafts nothing at all. It is off unless a request (or
the Modelfile) sets ``draft_num_predict``; see docs/benchmarks.md for where it pays.
"""

from __future__ import annotations

import logging

import numpy as np

from llmhost.api.option_table import MAX_DRAFT  # draft tokens per step at most (each is a batch row)
from llmhost.engine.llamacpp import Batch, Context, Model

NGRAM_MAX = 4  # longest suffix looked up
NGRAM_MIN = 2  # a single token matches too often to predict much
PROBE_TEXT = "The quick brown fox jumps over the lazy dog, and then"
PROBE_ROWS = MAX_DRAFT + 1  # rows of the probe's batch: a next token and the most drafts it may carry
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


class DraftLength:
    """How many tokens a sequence drafts next: up to its ``draft_num_predict``, doubling after a
    draft that was wholly accepted, halving after one that was not (down to one)."""

    def __init__(self, maximum: int):
        self.maximum = max(0, min(maximum, MAX_DRAFT))
        self.current = self.maximum
        self.drafted = 0
        self.accepted = 0

    def record(self, drafted: int, accepted: int) -> None:
        self.drafted += drafted
        self.accepted += accepted
        if accepted == drafted:
            self.current = min(self.maximum, 2 * self.current)
        else:
            self.current = max(1, self.current // 2)


def rows_match_alone(ctx: Context, model: Model, seq_id: int) -> bool:
    """Whether a batch of ``PROBE_ROWS`` rows gives every row exactly the logits (bit for bit) it
    gets decoded alone, one step at a time; uses and then clears positions of ``seq_id`` (free)."""
    prompt = model.tokenize(PROBE_TEXT, add_special=True)[:32]
    if len(prompt) == 0:
        prompt = np.zeros(1, dtype=np.int32)
    batch = Batch(max(len(prompt), PROBE_ROWS))
    try:
        batch.add(prompt, 0, seq_id, logits="last")
        ctx.decode(batch)
        token, base = int(ctx.logits(batch.n_tokens - 1).argmax()), len(prompt)
        tokens, alone = [], []
        for i in range(PROBE_ROWS):  # greedy, one token a step: what a sequence does without drafts
            tokens.append(token)
            batch.clear()
            batch.add(np.array([token], dtype=np.int32), base + i, seq_id)
            ctx.decode(batch)
            alone.append(ctx.logits(0).copy())
            token = int(alone[-1].argmax())
        ctx.seq_rm(seq_id, base, -1)
        batch.clear()
        batch.add(np.array(tokens, dtype=np.int32), base, seq_id, logits="all")
        ctx.decode(batch)
        worst = max(float(np.abs(ctx.logits(i) - alone[i]).max()) for i in range(PROBE_ROWS))
    finally:
        ctx.seq_rm(seq_id, -1, -1)
    if worst:
        log.warning("speculative decoding is off for this model: llama.cpp computes a batch's rows "
                    "differently from single rows here (logits differ by up to %.3g), so drafts could "
                    "change the output", worst)
    return worst == 0.0
