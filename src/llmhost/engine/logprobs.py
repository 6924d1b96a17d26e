"""Per-token log-probabilities: the sampled token's and its likeliest alternatives.

As Ollama and llama-server report them by default: a log-softmax over the raw logits of the row the
token was sampled from, before penalties, logit bias, temperature, truncation or a grammar changed
anything, so the numbers describe the model rather than the request's sampler.

It runs once per generated token of every sequence that asked, so it stays a handful of numpy passes
over the vocabulary: one for the maximum, one for the exponentials and their sum, and one for the
top-N selection, which never sorts or partitions the whole vocabulary (see ``top_tokens``).
"""

from __future__ import annotations

import math

import numpy as np

from llmhost.engine.llamacpp import Model
from llmhost.engine.sequence import TokenLogprobs

MAX_TOP_LOGPROBS = 20  # Ollama's and OpenAI's limit on alternatives per token
_ROWS = 64  # rows of the (rows × columns) view of the vocabulary in ``top_tokens``


class LogprobsProcessor:
    """Turns a logits row and the token sampled from it into a ``TokenLogprobs`` output."""

    def __init__(self, model: Model):
        self.model = model
        self._exp = np.empty(model.n_vocab, dtype=np.float32)  # scratch, reused every token
        self._texts: dict[int, tuple[str, bytes]] = {}

    def describe(self, logits: np.ndarray, token: int, n_top: int) -> TokenLogprobs:
        """``logits``: the raw row (n_vocab float32) ``token`` was sampled from; ``n_top``: how many
        alternatives to list (0: none)."""
        peak = float(logits.max())
        np.subtract(logits, peak, out=self._exp)
        np.exp(self._exp, out=self._exp)
        # log Σ exp(l - peak) ≥ 0 (the peak's own term is 1), so every logprob is ≤ 0.
        offset = peak + math.log(float(self._exp.sum()))
        ids = top_tokens(logits, n_top)
        values = (logits[ids].astype(np.float64) - offset).tolist()
        texts = map(self._text, ids.tolist())
        top = tuple((text, logprob, piece) for (text, piece), logprob in zip(texts, values))
        text, piece = self._text(token)
        return TokenLogprobs(text, float(logits[token]) - offset, piece, top)

    def _text(self, token: int) -> tuple[str, bytes]:
        cached = self._texts.get(token)
        if cached is None:
            piece = self.model.special_piece(token)
            cached = self._texts[token] = (piece.decode("utf-8", errors="replace"), piece)
        return cached


def top_tokens(logits: np.ndarray, n: int) -> np.ndarray:
    """Ids of the ``n`` largest logits, largest first.

    Partitioning the whole vocabulary (``np.argpartition``) costs ~0.4 ms for 49k entries here, ten
    times what this takes. Instead the row is viewed as ``_ROWS`` rows of G columns and each
    column's maximum taken (one vectorised pass). Each of the n largest values lies in one of the n
    columns with the largest maxima (otherwise those n columns and its own would hold n + 1 values at
    least as large), so only those columns, n × ``_ROWS`` values, are ranked.
    """
    n = min(n, MAX_TOP_LOGPROBS, len(logits))
    if n <= 0:
        return np.empty(0, dtype=np.intp)
    head = len(logits) - len(logits) % _ROWS
    columns = head // _ROWS
    if columns < n:  # a vocabulary too small to be worth it
        candidates = np.arange(len(logits))
    else:
        maxima = logits[:head].reshape(_ROWS, columns).max(axis=0)
        best = np.argpartition(maxima, columns - n)[columns - n :]
        candidates = (best + columns * np.arange(_ROWS)[:, None]).ravel()
        if head < len(logits):  # the ragged tail the view leaves out
            candidates = np.concatenate([candidates, np.arange(head, len(logits))])
    values = logits[candidates]
    if len(candidates) > n:
        keep = np.argpartition(values, len(values) - n)[len(values) - n :]
        candidates, values = candidates[keep], values[keep]
    return candidates[np.argsort(-values, kind="stable")]
