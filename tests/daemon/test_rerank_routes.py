"""/api/rerank and /v1/rerank: llama-server's wire shape, ordering, top_n, documents, refusals
(fake runners), and one request through a real runner on the tiny reranker."""

from __future__ import annotations

import pytest

from llmhost.daemon.runner_client import ProcessRunnerFactory
from llmhost.registry.store import Store
from tests.daemon.conftest import add_model
from tests.support.daemon_app import start_app
from tests.support.tiny_gguf import write_tiny_reranker

# llama-server's README example (tools/server/README.md, POST /reranking).
QUERY = "What is panda?"
DOCUMENTS = ["hi", "it is a bear",
             "The giant panda (Ailuropoda melanoleuca), sometimes called a panda bear or simply panda, "
             "is a bear species endemic to China."]


@pytest.fixture(scope="session")
def reranker_gguf(tmp_path_factory):
    return write_tiny_reranker(tmp_path_factory.mktemp("reranker") / "tiny-reranker.gguf")


@pytest.fixture
async def daemon(harness, reranker_gguf):
    add_model(harness.store, "reranker", reranker_gguf)
    return harness


async def post(daemon, path: str, body: dict) -> tuple[int, dict]:
    resp = await daemon.client.post(path, json=body)
    return resp.status, await resp.json()


async def test_v1_rerank_answers_in_llama_servers_shape(daemon):
    status, reply = await post(daemon, "/v1/rerank", {"model": "reranker", "query": QUERY, "top_n": 3,
                                                      "documents": DOCUMENTS})
    assert status == 200
    assert set(reply) == {"model", "object", "usage", "results"} and reply["object"] == "list"
    assert reply["model"].startswith("reranker")
    assert reply["usage"] == {"prompt_tokens": 12, "total_tokens": 12}  # the fake: 4 a document
    assert all(set(r) == {"index", "relevance_score"} for r in reply["results"])
    # The fake scores the share of query words in a document: the panda sentence, then the bear.
    assert [r["index"] for r in reply["results"]] == [2, 1, 0]
    scores = [r["relevance_score"] for r in reply["results"]]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[-1]


async def test_native_rerank_has_ollamas_timings(daemon):
    status, reply = await post(daemon, "/api/rerank", {"model": "reranker", "query": QUERY, "documents": DOCUMENTS})
    assert status == 200
    assert set(reply) == {"model", "results", "total_duration", "load_duration", "prompt_eval_count"}
    assert [r["index"] for r in reply["results"]] == [2, 1, 0] and reply["prompt_eval_count"] == 12


@pytest.mark.parametrize("extra, indexes", [
    ({"top_n": 1}, [2]),
    ({"top_n": 2}, [2, 1]),
    ({"top_n": 10}, [2, 1, 0]),  # more than there are: all of them
    ({"top_n": None}, [2, 1, 0]),
])
async def test_top_n_keeps_the_best(daemon, extra, indexes):
    status, reply = await post(daemon, "/v1/rerank", {"model": "reranker", "query": QUERY,
                                                      "documents": DOCUMENTS, **extra})
    assert status == 200 and [r["index"] for r in reply["results"]] == indexes


async def test_return_documents_gives_each_result_its_text(daemon):
    _, reply = await post(daemon, "/v1/rerank", {"model": "reranker", "query": QUERY, "documents": DOCUMENTS,
                                                 "return_documents": True, "top_n": 2})
    assert [r["document"] for r in reply["results"]] == [{"text": DOCUMENTS[2]}, {"text": DOCUMENTS[1]}]


async def test_equal_scores_keep_the_documents_order(daemon):
    _, reply = await post(daemon, "/api/rerank", {"model": "reranker", "query": "panda",
                                                  "documents": ["a", "panda b", "c", "panda d"]})
    assert [r["index"] for r in reply["results"]] == [1, 3, 0, 2]


async def test_the_runner_gets_the_query_and_every_document(daemon):
    await post(daemon, "/api/rerank", {"model": "reranker", "query": QUERY, "documents": DOCUMENTS,
                                       "truncate": False, "top_n": 1})
    [runner] = daemon.factory.started
    assert runner.bodies == [{"query": QUERY, "documents": DOCUMENTS, "truncate": False}]


async def test_show_lists_rerank_for_a_reranker_only(daemon):
    shown = {}
    for name in ("reranker", "tiny"):
        resp = await daemon.client.post("/api/show", json={"model": name})
        shown[name] = (await resp.json())["capabilities"]
    assert shown["reranker"] == ["rerank"]
    assert "completion" in shown["tiny"] and "rerank" not in shown["tiny"]


@pytest.mark.parametrize("body, message", [
    ({"query": QUERY}, '"documents" must be a non-empty array of strings'),
    ({"query": QUERY, "documents": []}, '"documents" must be a non-empty array of strings'),
    ({"query": QUERY, "documents": ["a", 2]}, '"documents" must be a non-empty array of strings'),
    ({"query": QUERY, "documents": [{"text": "a"}]}, '"documents" must be a non-empty array of strings'),
    ({"query": QUERY, "documents": "a"}, 'invalid value for "documents"'),
    ({"documents": DOCUMENTS}, '"query" is required'),
    ({"query": 3, "documents": DOCUMENTS}, 'invalid value for "query"'),
    ({"query": QUERY, "documents": DOCUMENTS, "top_n": 0}, '"top_n": must be at least 1'),
    ({"query": QUERY, "documents": DOCUMENTS, "top_n": "2"}, 'invalid value for "top_n"'),
    ({"query": QUERY, "documents": DOCUMENTS, "return_documents": "yes"}, 'invalid value for "return_documents"'),
    ({"query": QUERY, "documents": [""] * 10_001}, 'too many "documents"'),
])
@pytest.mark.parametrize("path", ["/api/rerank", "/v1/rerank"])
async def test_bad_requests_are_refused_before_anything_starts(daemon, path, body, message):
    status, reply = await post(daemon, path, {"model": "reranker", **body})
    assert status == 400
    assert message in (reply["error"]["message"] if path.startswith("/v1/") else reply["error"])
    assert daemon.factory.started == []


async def test_a_model_that_is_not_a_reranker_is_refused_in_each_dialect(daemon):
    status, native = await post(daemon, "/api/rerank", {"model": "tiny", "query": QUERY, "documents": DOCUMENTS})
    assert status == 400 and native == {"error": '"tiny" does not support rerank'}
    status, openai = await post(daemon, "/v1/rerank", {"model": "tiny", "query": QUERY, "documents": DOCUMENTS})
    assert status == 400
    assert openai["error"]["message"] == '"tiny" does not support rerank'
    assert openai["error"]["type"] == "invalid_request_error"
    assert daemon.factory.started == []


async def test_an_unknown_model_is_a_404(daemon):
    status, _ = await post(daemon, "/v1/rerank", {"model": "nope", "query": QUERY, "documents": DOCUMENTS})
    assert status == 404 and daemon.factory.started == []


@pytest.fixture
async def live(tmp_path, reranker_gguf):
    store = Store(tmp_path / "models")
    add_model(store, "reranker", reranker_gguf)
    factory = ProcessRunnerFactory(tmp_path / "sockets", load_timeout=60)
    started = await start_app(store, tmp_path / "s", factory=factory, max_loaded=1, env={
        "LLMHOST_CONTEXT_LENGTH": "256", "LLMHOST_NUM_PARALLEL": "1", "LLMHOST_NUM_THREADS": "1"})
    yield started.client
    await started.client.close()
    await factory.close()


async def test_a_real_runner_ranks_the_same_way_twice(live):
    body = {"model": "reranker", "query": "what is a panda?", "return_documents": True,
            "documents": ["hi", "it is a bear", "the giant panda is a bear of china", "paris is the capital"]}
    answers = []
    for _ in range(2):
        resp = await live.post("/v1/rerank", json=body)
        answers.append(await resp.json())
        assert resp.status == 200
    first, second = answers
    assert [r["index"] for r in first["results"]] == [r["index"] for r in second["results"]]
    assert sorted(r["index"] for r in first["results"]) == [0, 1, 2, 3]
    assert all(r["document"]["text"] == body["documents"][r["index"]] for r in first["results"])
    assert first["usage"]["prompt_tokens"] > len(body["documents"])
    resp = await live.post("/api/embed", json={"model": "reranker", "input": "a bear"})
    assert resp.status == 400 and "reranker" in (await resp.json())["error"]
