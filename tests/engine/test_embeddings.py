"""The runner's embedding context on the tiny model."""

from __future__ import annotations

from llmhost.engine.embeddings import Embedder


def test_embedding_context_smaller_than_the_sequence_count_does_not_abort(model):
    # llama.cpp aborts when a batch holds fewer tokens than the context has sequences (num_ctx 4..7 did).
    embedder = Embedder(model, ctx_size=4, n_threads=1)
    try:
        result = embedder.embed(["a b", "c"], truncate=True)
    finally:
        embedder.close()
    assert len(result.embeddings) == 2 and all(len(v) == model.n_embd for v in result.embeddings)
