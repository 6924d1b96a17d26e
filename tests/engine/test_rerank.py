"""Rerank scores on a tiny random-weight BERT reranker (tests/support/tiny_gguf.py), in the engine
and through a real runner's /rerank."""

from __future__ import annotations

import threading

import pytest

from llmhost.engine.embeddings import Embedder, PairFormat
from llmhost.engine.llamacpp import Model
from llmhost.errors import BadRequest
from tests.support.runner_process import RunnerProcess
from tests.support.tiny_gguf import write_tiny_reranker

QUERY = "what is a panda?"
DOCUMENTS = ["hi", "it is a bear", "the giant panda is a bear of china", "paris is the capital of france",
             "machine learning"]


@pytest.fixture(scope="module")
def reranker_path(tmp_path_factory):
    return write_tiny_reranker(tmp_path_factory.mktemp("reranker") / "tiny-reranker.gguf")


@pytest.fixture(scope="module")
def reranker(reranker_path):
    model = Model(reranker_path)
    yield model
    model.close()


@pytest.fixture
def embedder(reranker):
    embedder = Embedder(reranker, ctx_size=64, n_threads=1)
    yield embedder
    embedder.close()


def texts(model: Model, tokens) -> list[str]:
    return [model.token_text(int(t)) for t in tokens]


def test_scores_in_one_batch_match_each_document_scored_alone(embedder):
    together = embedder.rerank(QUERY, DOCUMENTS).scores
    alone = [embedder.rerank(QUERY, [d]).scores[0] for d in DOCUMENTS]
    assert together == pytest.approx(alone, abs=1e-4)
    assert len({round(s, 3) for s in together}) == len(DOCUMENTS)  # the weights tell them apart


def test_same_weights_give_the_same_scores_and_order(tmp_path, embedder):
    again = Model(write_tiny_reranker(tmp_path / "again.gguf"))
    other = Embedder(again, ctx_size=64, n_threads=1)
    try:
        first, second = embedder.rerank(QUERY, DOCUMENTS), other.rerank(QUERY, DOCUMENTS)
    finally:
        other.close()
        again.close()
    assert second.scores == pytest.approx(first.scores, abs=1e-5)
    assert first.prompt_eval_count == second.prompt_eval_count > 0


def test_pairs_are_laid_out_as_llama_server_does(reranker):
    # The vocabulary adds BOS ([CLS]), EOS and SEP (both [SEP]): [BOS] query [EOS] [SEP] doc [EOS].
    tokens = PairFormat(reranker, "what is a panda", 64).tokens("it is a bear", truncate=True)
    assert texts(reranker, tokens) == ["[CLS]", "▁what", "▁is", "▁a", "▁panda", "[SEP]", "[SEP]",
                                       "▁it", "▁is", "▁a", "▁bear", "[SEP]"]


def test_a_rerank_prompt_in_the_gguf_is_filled_in(tmp_path):
    template = "[CLS]q: {query} d: {document}[SEP]"
    model = Model(write_tiny_reranker(tmp_path / "templated.gguf", rerank_template=template))
    try:
        tokens = PairFormat(model, "panda {document}", 64).tokens("a bear", truncate=True)
        words = texts(model, tokens)
    finally:
        model.close()
    # Special tokens in the prompt are parsed; a query that mentions {document} keeps it as text.
    assert words[0] == "[CLS]" and words[-1] == "[SEP]" and words.count("[CLS]") == 1
    assert words[words.index("▁panda") + 1] == "[UNK]"  # "{" is not in the tiny vocabulary
    assert "▁bear" in words and words.index("▁bear") > words.index("▁d")


def test_a_long_document_loses_its_end_and_keeps_the_closing_marker(reranker, embedder):
    pair = PairFormat(reranker, QUERY, 64)
    tokens = pair.tokens("bear " * 200, truncate=True)
    assert len(tokens) == 64 and texts(reranker, tokens)[-1] == "[SEP]"
    assert embedder.rerank(QUERY, ["bear " * 200]).prompt_eval_count == 64


@pytest.mark.parametrize("query, document, truncate, message", [
    (QUERY, "bear " * 200, False, "exceed the context of 64"),
    ("panda " * 100, "bear", True, "leaves no room for a document"),
])
def test_pairs_that_cannot_fit_are_refused(embedder, query, document, truncate, message):
    with pytest.raises(BadRequest, match=message):
        embedder.rerank(query, [document], truncate=truncate)


@pytest.mark.parametrize("ctx_size, n_docs, decodes", [
    (64, 17, [60, 60, 50]),  # a decode holds at most the context's tokens: 6 pairs of 10
    (1024, 70, [640, 60]),  # and at most 64 sequences
])
def test_documents_are_packed_into_as_few_decodes_as_fit(reranker, ctx_size, n_docs, decodes):
    embedder = Embedder(reranker, ctx_size=ctx_size, n_threads=1)
    ctx = embedder._context()
    seen = []
    original = ctx.decode
    ctx.decode = lambda batch: (seen.append(batch.n_tokens), original(batch))[1]
    try:
        result = embedder.rerank(QUERY, ["hi"] * n_docs)
    finally:
        embedder.close()
    assert seen == decodes and len(result.scores) == n_docs


def test_a_cancelled_request_stops_before_the_next_decode(embedder):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(BadRequest, match="cancelled"):
        embedder.rerank(QUERY, DOCUMENTS, cancel=cancel)


def test_a_reranker_does_not_embed_and_an_embedder_does_not_rerank(tmp_path, embedder):
    with pytest.raises(BadRequest, match="is a reranker"):
        embedder.embed(["a bear"])
    plain = Model(write_tiny_reranker(tmp_path / "embedder.gguf", pooling=1, head=False))
    other = Embedder(plain, ctx_size=64, n_threads=1)
    try:
        assert len(other.embed(["a bear"]).embeddings[0]) == plain.n_embd
        with pytest.raises(BadRequest, match="not a reranker"):
            other.rerank(QUERY, DOCUMENTS)
    finally:
        other.close()
        plain.close()


@pytest.fixture(scope="module")
def runner(reranker_path, tmp_path_factory):
    with RunnerProcess(reranker_path, tmp_path_factory.mktemp("rerank-runner"), ctx_size=64, parallel=1) as proc:
        yield proc


def test_runner_scores_documents_in_their_order(runner, embedder):
    status, reply = runner.request("POST", "/rerank", {"query": QUERY, "documents": DOCUMENTS})
    assert status == 200
    assert reply["scores"] == pytest.approx(embedder.rerank(QUERY, DOCUMENTS).scores, abs=1e-4)
    assert reply["prompt_eval_count"] > len(DOCUMENTS)


@pytest.mark.parametrize("body, message", [
    ({"query": QUERY, "documents": []}, '"documents" must be a non-empty list of strings'),
    ({"query": QUERY, "documents": ["a", 1]}, '"documents" must be a non-empty list of strings'),
    ({"documents": ["a"]}, '"query" must be a string'),
    ({"query": QUERY, "documents": ["a"], "truncate": "no"}, '"truncate" must be a boolean'),
    ({"query": QUERY, "documents": ["bear " * 200], "truncate": False}, "exceed the context"),
])
def test_runner_refuses_bad_rerank_requests(runner, body, message):
    status, reply = runner.request("POST", "/rerank", body)
    assert status == 400 and message in reply["error"]


def test_runner_refuses_to_embed_with_a_reranker(runner):
    status, reply = runner.request("POST", "/embed", {"input": ["a bear"]})
    assert status == 400 and "reranker" in reply["error"]


def test_pairs_stop_where_the_models_trained_positions_end(tmp_path):
    # BERT's learned positions end at n_ctx_train, and llama.cpp aborts on a position beyond them,
    # so a context larger than that still takes no longer pair (in a runner: an abort kills it).
    short = write_tiny_reranker(tmp_path / "short.gguf", n_ctx_train=64)
    with RunnerProcess(short, tmp_path, ctx_size=256, parallel=1) as proc:
        status, reply = proc.request("POST", "/rerank", {"query": QUERY, "documents": ["bear " * 300, "hi"]})
        assert status == 200 and len(reply["scores"]) == 2
        assert reply["prompt_eval_count"] == 64 + 10
