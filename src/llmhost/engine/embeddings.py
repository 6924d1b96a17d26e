"""Embeddings: a separate llama.cpp context with ``embeddings=True`` and explicit pooling.

Kept apart from the generation engine: the generation context computes logits, not pooled vectors,
and embedding batches are one-shot (no KV reuse), so they run in a worker thread on their own
context while the engine thread keeps decoding. The context is created on first use, so runners
that never embed do not pay for it.

Pooling: the GGUF's own (``<arch>.pooling_type``, set by embedding models), otherwise MEAN for
decoder models. Vectors are L2-normalised.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from llmhost.engine.llamacpp import POOLING_MEAN, POOLING_UNSPECIFIED, Batch, Context, Model
from llmhost.errors import BadRequest

_MAX_SEQS = 8  # inputs per llama_decode


@dataclass(frozen=True)
class EmbedResult:
    embeddings: list[list[float]]
    prompt_eval_count: int


class Embedder:
    """Embeds lists of texts; thread-safe (one batch at a time)."""

    def __init__(self, model: Model, *, ctx_size: int, n_threads: int | None):
        self.model = model
        self.ctx_size = ctx_size
        self.n_threads = n_threads
        # llama.cpp aborts when a batch holds fewer tokens than the context has sequences.
        self._max_seqs = max(1, min(_MAX_SEQS, ctx_size))
        self._ctx: Context | None = None
        self._lock = threading.Lock()

    def embed(self, texts: list[str], *, truncate: bool = True) -> EmbedResult:
        token_lists = [self._tokens(t, truncate) for t in texts]
        vectors: list[list[float]] = []
        with self._lock:
            ctx = self._context()
            for group in _groups(token_lists, self.ctx_size, self._max_seqs):
                vectors.extend(self._embed_group(ctx, group))
        return EmbedResult(vectors, sum(len(t) for t in token_lists))

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._ctx.close()
                self._ctx = None

    def _tokens(self, text: str, truncate: bool) -> np.ndarray:
        tokens = self.model.tokenize(text, add_special=True, parse_special=True)
        if len(tokens) == 0:
            raise BadRequest("cannot embed an empty input")
        if len(tokens) > self.ctx_size:
            if not truncate:
                raise BadRequest(
                    f"input of {len(tokens)} tokens exceeds the context of {self.ctx_size} (and truncate is false)"
                )
            tokens = tokens[: self.ctx_size]
        return tokens

    def _context(self) -> Context:
        if self._ctx is None:
            own = self.model.meta(f"{self.model.meta('general.architecture')}.pooling_type")
            self._ctx = Context(
                self.model,
                n_ctx=self.ctx_size,
                n_seq_max=self._max_seqs,
                # Pooling needs a whole sequence in one micro-batch.
                n_batch=self.ctx_size,
                n_ubatch=self.ctx_size,
                n_threads=self.n_threads,
                embeddings=True,
                pooling=POOLING_UNSPECIFIED if own is not None else POOLING_MEAN,
            )
        return self._ctx

    def _embed_group(self, ctx: Context, group: list[np.ndarray]) -> list[list[float]]:
        batch = Batch(sum(len(t) for t in group))
        for seq_id, tokens in enumerate(group):
            batch.add(tokens, 0, seq_id, logits="all")
        ctx.clear()
        ctx.decode(batch)
        out = []
        for seq_id in range(len(group)):
            vector = ctx.embeddings_seq(seq_id, self.model.n_embd)
            if vector is None:
                raise BadRequest("this model does not produce pooled embeddings")
            norm = float(np.linalg.norm(vector))
            out.append((vector / norm if norm > 0 else vector).tolist())
        return out


def _groups(token_lists: list[np.ndarray], budget: int, max_seqs: int = _MAX_SEQS) -> list[list[np.ndarray]]:
    """Pack inputs into decode groups of at most ``budget`` tokens and ``max_seqs`` sequences."""
    groups: list[list[np.ndarray]] = []
    current: list[np.ndarray] = []
    used = 0
    for tokens in token_lists:
        if current and (used + len(tokens) > budget or len(current) == max_seqs):
            groups.append(current)
            current, used = [], 0
        current.append(tokens)
        used += len(tokens)
    if current:
        groups.append(current)
    return groups
