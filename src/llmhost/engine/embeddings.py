"""Embeddings and rerank scores: a separate llama.cpp context with ``embeddings=True`` and explicit pooling.

Kept apart from the generation engine: the generation context computes logits, not pooled vectors,
and embedding batches are one-shot (no KV reuse), so they run in a worker thread on their own
context while the engine thread keeps decoding. The context is created on first use, so runners
that never embed do not pay for it.

Pooling: the GGUF's own (``<arch>.pooling_type``, set by embedding models), otherwise MEAN for
decoder models. Vectors are L2-normalised.

Rerankers declare RANK pooling: a classification head turns each sequence into relevance scores, of
which the first is the pair's score (as llama-server reports it, unscaled). Each (query, document)
pair is one sequence, built as llama-server builds it (``PairFormat``), and pairs are packed into as
few decodes as the context allows, like embedding inputs.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from llmhost.engine.llamacpp import POOLING_MEAN, POOLING_RANK, POOLING_UNSPECIFIED, Batch, Context, Model
from llmhost.errors import BadRequest

# Inputs per llama_decode: more short inputs per decode make fuller batches (64 short SmolLM2 inputs:
# 26.5 inputs/s at 8 a decode, 28.5 at 16, 29.5 at 64; llama-server decodes as many as it has slots).
_MAX_SEQS = 64


@dataclass(frozen=True)
class EmbedResult:
    embeddings: list[list[float]]
    prompt_eval_count: int


@dataclass(frozen=True)
class RerankResult:
    scores: list[float]  # one per document, in the order they were given
    prompt_eval_count: int  # tokens of all the pairs


class Embedder:
    """Embeds lists of texts; thread-safe (one batch at a time)."""

    def __init__(self, model: Model, *, ctx_size: int, n_threads: int | None):
        self.model = model
        self.ctx_size = ctx_size
        self.n_threads = n_threads
        # llama.cpp aborts when a batch holds fewer tokens than the context has sequences.
        self._max_seqs = max(1, min(_MAX_SEQS, ctx_size))
        # No input is longer than the context, nor than the model was trained on: BERT's learned
        # positions end there, and llama.cpp aborts on a position beyond them.
        self.max_tokens = min(ctx_size, model.n_ctx_train) if model.n_ctx_train > 0 else ctx_size
        self._ctx: Context | None = None
        self._lock = threading.Lock()
        own = model.meta(f"{model.meta('general.architecture')}.pooling_type")
        self._own_pooling = int(own) if own is not None and own.lstrip("-").isdigit() else None

    @property
    def is_reranker(self) -> bool:
        """The GGUF declares RANK pooling: a classifier head scores query–document pairs."""
        return self._own_pooling == POOLING_RANK

    def embed(self, texts: list[str], *, truncate: bool = True) -> EmbedResult:
        if self.is_reranker:  # its pooled output is a score, not a vector
            raise BadRequest("this model is a reranker: it scores documents against a query (/api/rerank) "
                             "and does not embed")
        token_lists = [self._tokens(t, truncate) for t in texts]
        vectors: list[list[float]] = []
        with self._lock:
            ctx = self._context()
            for group in _groups(token_lists, self.ctx_size, self._max_seqs):
                vectors.extend(self._embed_group(ctx, group))
        return EmbedResult(vectors, sum(len(t) for t in token_lists))

    def rerank(self, query: str, documents: list[str], *, truncate: bool = True,
               cancel: threading.Event | None = None) -> RerankResult:
        """Each document's relevance to ``query``, in document order.

        A pair longer than the context loses the end of its document (or is refused with
        ``truncate`` false); pairs are tokenized as they are packed, so a long list never holds
        more than one decode's tokens. ``cancel`` stops the work between decodes (a client gone).
        """
        if not self.is_reranker:
            raise BadRequest("this model is not a reranker (it has no classification head with rank pooling)")
        pairs = PairFormat(self.model, query, self.max_tokens)
        scores: list[float] = []
        n_tokens = 0
        with self._lock:
            ctx = self._context()
            for group in _groups((pairs.tokens(d, truncate) for d in documents), self.ctx_size, self._max_seqs):
                if cancel is not None and cancel.is_set():
                    raise BadRequest("the request was cancelled")
                scores.extend(self._score_group(ctx, group))
                n_tokens += sum(len(t) for t in group)
        return RerankResult(scores, n_tokens)

    def close(self) -> None:
        with self._lock:
            if self._ctx is not None:
                self._ctx.close()
                self._ctx = None

    def _tokens(self, text: str, truncate: bool) -> np.ndarray:
        tokens = self.model.tokenize(text, add_special=True, parse_special=True)
        if len(tokens) == 0:
            raise BadRequest("cannot embed an empty input")
        if len(tokens) > self.max_tokens:
            if not truncate:
                raise BadRequest(
                    f"input of {len(tokens)} tokens exceeds the context of {self.max_tokens} (and truncate is false)"
                )
            tokens = tokens[: self.max_tokens]
        return tokens

    def _context(self) -> Context:
        if self._ctx is None:
            self._ctx = Context(
                self.model,
                n_ctx=self.ctx_size,
                n_seq_max=self._max_seqs,
                # Pooling needs a whole sequence in one micro-batch.
                n_batch=self.ctx_size,
                n_ubatch=self.ctx_size,
                n_threads=self.n_threads,
                embeddings=True,
                pooling=POOLING_UNSPECIFIED if self._own_pooling is not None else POOLING_MEAN,
            )
        return self._ctx

    def _decode_group(self, ctx: Context, group: list[np.ndarray]) -> None:
        """One sequence per input, all in one decode (their pooled outputs are read afterwards)."""
        batch = Batch(sum(len(t) for t in group))
        for seq_id, tokens in enumerate(group):
            batch.add(tokens, 0, seq_id, logits="all")
        ctx.clear()
        ctx.decode(batch)

    def _embed_group(self, ctx: Context, group: list[np.ndarray]) -> list[list[float]]:
        self._decode_group(ctx, group)
        out = []
        for seq_id in range(len(group)):
            vector = ctx.embeddings_seq(seq_id, self.model.n_embd)
            if vector is None:
                raise BadRequest("this model does not produce pooled embeddings")
            norm = float(np.linalg.norm(vector))
            out.append((vector / norm if norm > 0 else vector).tolist())
        return out

    def _score_group(self, ctx: Context, group: list[np.ndarray]) -> list[float]:
        self._decode_group(ctx, group)
        scores = []
        for seq_id in range(len(group)):
            # RANK pooling leaves n_cls_out (≥ 1) floats per sequence; the first is the score.
            output = ctx.embeddings_seq(seq_id, 1)
            if output is None:
                raise BadRequest("this model does not produce rank scores")
            scores.append(float(output[0]))
        return scores


_PLACEHOLDER = re.compile(r"\{query\}|\{document\}")


class PairFormat:
    """The tokens of one (query, document) pair, as llama-server's ``format_prompt_rerank`` makes them.

    With a ``rerank`` prompt in the GGUF (``tokenizer.chat_template.rerank``, e.g. Qwen3-Reranker):
    that text with ``{query}`` and ``{document}`` filled in, special tokens parsed. Otherwise
    ``[BOS] query [EOS] [SEP] document [EOS]``, each marker only where the vocabulary adds it, EOS
    falling back to SEP (BERT-style: ``[CLS] q [SEP] d``; RoBERTa-style ``<s> q </s></s> d </s>``).
    Unlike llama.cpp, both placeholders are filled in one pass, so a query that mentions
    ``{document}`` stays as written.
    """

    def __init__(self, model: Model, query: str, limit: int):
        self.model = model
        self.query = query
        self.limit = limit  # tokens a pair may have (the context)
        self.template = model.chat_template("rerank")
        if self.template is None:
            self._query_tokens = model.tokenize(query, add_special=False, parse_special=False)
            eos = model.eos if model.eos >= 0 else model.sep
            self._head = np.array([model.bos] * model.add_bos, dtype=np.int32)
            self._middle = np.array([eos] * model.add_eos + [model.sep] * model.add_sep, dtype=np.int32)
            self._tail = np.array([eos] * model.add_eos, dtype=np.int32)

    def tokens(self, document: str, truncate: bool) -> np.ndarray:
        """The pair's tokens; a document that does not fit is cut at its end (BadRequest when
        ``truncate`` is false, or when the query alone leaves it no room)."""
        tokens = self._render(document)
        if len(tokens) > self.limit:
            if not truncate:
                raise BadRequest(f"a query and document of {len(tokens)} tokens exceed the context of "
                                 f"{self.limit} (and truncate is false)")
            tokens = self._cut(document, len(tokens) - self.limit)
        if len(tokens) == 0:
            raise BadRequest("cannot rerank an empty query and document")
        return tokens

    def _render(self, document: str, doc_tokens: np.ndarray | None = None) -> np.ndarray:
        if self.template is not None:
            text = _PLACEHOLDER.sub(lambda m: self.query if m.group() == "{query}" else document, self.template)
            return self.model.tokenize(text, add_special=False, parse_special=True)
        if doc_tokens is None:
            doc_tokens = self.model.tokenize(document, add_special=False, parse_special=False)
        return np.concatenate([self._head, self._query_tokens, self._middle, doc_tokens, self._tail]).astype(np.int32)

    def _cut(self, document: str, excess: int) -> np.ndarray:
        """Drop the document's last tokens until the pair fits. With a template the shortened text is
        rendered again, where tokens may merge differently, so it retries with what is still over."""
        doc_tokens = self.model.tokenize(document, add_special=False, parse_special=False)
        keep = len(doc_tokens) - excess
        while keep >= 0:
            kept = doc_tokens[:keep]
            text = self.model.detokenize(kept) if self.template is not None else document
            tokens = self._render(text, kept)
            if len(tokens) <= self.limit:
                return tokens
            keep -= len(tokens) - self.limit
        raise BadRequest(f"the query leaves no room for a document in the context of {self.limit} tokens")


def _groups(token_lists: Iterable[np.ndarray], budget: int, max_seqs: int = _MAX_SEQS) -> Iterator[list[np.ndarray]]:
    """Pack inputs into decode groups of at most ``budget`` tokens and ``max_seqs`` sequences, each
    group made as the inputs are drawn (so a generator is consumed one group at a time)."""
    current: list[np.ndarray] = []
    used = 0
    for tokens in token_lists:
        if current and (used + len(tokens) > budget or len(current) == max_seqs):
            yield current
            current, used = [], 0
        current.append(tokens)
        used += len(tokens)
    if current:
        yield current
