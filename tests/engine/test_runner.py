"""The runner process end to end on the tiny model: start, health, streaming, cancellation, stop."""

from __future__ import annotations

import json
import os
import stat

import pytest

from tests.support.runner_process import RunnerProcess, UnixHTTPConnection, text_of
from tests.support.waiting import wait_until

GREEDY = {"temperature": 0, "seed": 7}


@pytest.fixture(scope="module")
def runner(tiny_model, tmp_path_factory):
    proc = RunnerProcess(tiny_model, tmp_path_factory.mktemp("runner"), ctx_size=1024, parallel=2)
    with proc:
        yield proc
    assert proc.proc.returncode == 0, proc.stderr()


def chat(text: str, **options) -> dict:
    return {"messages": [{"role": "user", "content": text}], "options": {**GREEDY, **options}}


def test_health_reports_the_loaded_model(runner, tiny_model):
    health = runner.health()
    assert health["status"] == "ok"
    assert health["model"] == str(tiny_model)
    assert health["n_ctx"] == 1024 and health["parallel"] == 2 and health["n_ctx_train"] == 2048
    assert health["kv_cells"] == 2048 and health["engine"]["swapped_out_total"] == 0
    assert health["memory_bytes"] > 20 * 2**20  # at least the weights


def test_socket_is_private(runner):
    assert stat.S_IMODE(os.stat(runner.socket_path).st_mode) == 0o600


def test_completion_streams_ndjson_and_ends_with_stats(runner):
    lines = runner.completion(chat("Hi there", num_predict=8))
    *chunks, final = lines
    assert chunks and all(set(c) == {"content"} for c in chunks)
    assert final["done"] is True and final["done_reason"] == "length"
    assert final["eval_count"] == 8
    assert final["prompt_eval_count"] + final["prompt_cached_count"] > 10
    assert final["prompt_eval_duration"] > 0 and final["eval_duration"] > 0


def test_same_seed_at_temperature_zero_is_deterministic(runner):
    a = text_of(runner.completion(chat("Deterministic?", num_predict=10)))
    b = text_of(runner.completion(chat("Deterministic?", num_predict=10)))
    assert a and a == b


def test_seeded_sampling_is_reproducible(runner):
    body = {"prompt": "Once upon a time", "options": {"temperature": 1.0, "seed": 123, "num_predict": 10}}
    assert text_of(runner.completion(body)) == text_of(runner.completion(body))


CUSTOM_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{{ '<|im_start|>assistant\n' }}"  # as an expression: Jinja drops a template's final newline
)


def test_raw_prompt_and_custom_template(runner):
    options = {**GREEDY, "num_predict": 5}
    raw = runner.completion({"prompt": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "options": options})
    templated = runner.completion({**chat("Hi", **options), "template": CUSTOM_TEMPLATE})
    assert text_of(raw) == text_of(templated)
    assert templated[-1]["prompt_cached_count"] == 9  # the same tokens: all but the last reused


def test_a_go_template_from_an_ollama_model_is_what_the_model_is_given(runner):
    options = {**GREEDY, "num_predict": 5}
    go = "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n"  # Ollama's legacy form
    raw = runner.completion({"prompt": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "options": options})
    with_go = runner.completion({**chat("Hi", **options), "template": go})
    assert text_of(with_go) == text_of(raw)
    assert with_go[-1]["prompt_cached_count"] == 9  # the very same prompt tokens


def test_a_go_template_that_fails_is_a_400_with_its_position(runner):
    status, reply = runner.request("POST", "/completion", {**chat("Hi"), "template": "{{ index .Messages 5 }}"})
    assert status == 400 and "at 1:4: error calling index: index out of range: 5" in reply["error"]


@pytest.mark.parametrize(
    "body, message",
    [
        pytest.param({"options": {}}, "exactly one", id="no-prompt"),
        pytest.param({"prompt": "x", "format": {"type": "object", "properties": {"a": {"type": "nope"}}}}, "schema", id="bad-schema"),
        pytest.param({"messages": [{"role": "user", "content": "x"}], "template": "{% if %}"}, "template", id="bad-template"),
        pytest.param({"prompt": "word " * 1200, "truncate": False}, "does not fit", id="too-long"),
    ],
)
def test_bad_requests_get_400_before_anything_streams(runner, body, message):
    status, reply = runner.request("POST", "/completion", body)
    assert status == 400 and message in reply["error"]


def test_invalid_json_body_is_400(runner):
    conn = UnixHTTPConnection(runner.socket_path)
    conn.request("POST", "/completion", body="{nope", headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 400 and "JSON" in json.loads(resp.read())["error"]
    conn.close()


def test_tokenize(runner):
    status, reply = runner.request("POST", "/tokenize", {"content": "Hello world"})
    assert status == 200 and reply["tokens"] == [19556, 905]


def test_detokenize_gives_back_what_tokenize_parsed_control_tokens_included(runner):
    text = "<|im_start|>user\nHello wörld<|im_end|>"
    _, tokenized = runner.request("POST", "/tokenize", {"content": text})
    status, reply = runner.request("POST", "/detokenize", {"tokens": tokenized["tokens"], "pieces": True})
    assert status == 200 and reply["content"] == text
    assert len(reply["pieces"]) == len(tokenized["tokens"]) and reply["pieces"][0] == "<|im_start|>"
    whole = b"".join(p.encode() if isinstance(p, str) else bytes(p) for p in reply["pieces"])
    assert whole.decode() == text


@pytest.mark.parametrize("body, message", [
    pytest.param({"tokens": [1, "2"]}, "list of token ids", id="not-ids"),
    pytest.param({"tokens": [10**9]}, "not in the vocabulary", id="outside-vocabulary"),
    pytest.param({"tokens": [1], "pieces": "yes"}, '"pieces" must be a boolean', id="pieces-not-bool"),
])
def test_detokenize_refuses_bad_ids(runner, body, message):
    status, reply = runner.request("POST", "/detokenize", body)
    assert status == 400 and message in reply["error"]


def test_client_disconnect_cancels_the_sequence(runner):
    stream = runner.stream({"prompt": "Go on forever", "options": {**GREEDY, "num_predict": 100000}})
    for _, _line in zip(range(3), stream):
        pass
    stream.close()  # drops the connection mid-generation
    wait_until(lambda: runner.health()["engine"]["running"] == 0, timeout=30, interval=0.05,
               what="the sequence cancelled")
    engine = runner.health()["engine"]
    assert engine["generated_tokens"] < 900  # it did not run to the end of the context
    assert text_of(runner.completion(chat("still serving?", num_predict=3)))


def test_concurrent_requests_are_batched(runner):
    import concurrent.futures as cf

    bodies = [chat(f"Question number {i}", num_predict=6) for i in range(4)]
    alone = [text_of(runner.completion(b)) for b in bodies]
    with cf.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda b: text_of(runner.completion(b)), bodies))
    assert together == alone


def test_small_kv_cache_swaps_concurrent_requests(tiny_model, tmp_path):
    import concurrent.futures as cf

    bodies = [chat(f"Write a long answer to question {i}", num_predict=120, repeat_penalty=1.0) for i in range(4)]
    with RunnerProcess(tiny_model, tmp_path, ctx_size=256, parallel=4, extra=("--kv-cells", "256")) as proc:
        with cf.ThreadPoolExecutor(4) as pool:
            finals = [lines[-1] for lines in pool.map(proc.completion, bodies)]
        health = proc.health()
    assert health["kv_cells"] == 256
    assert all(f.get("done") and f["eval_count"] == 120 for f in finals), finals
    engine = health["engine"]
    assert engine["swapped_out_total"] >= 1 and engine["swapped_in_total"] == engine["swapped_out_total"]


def test_load_failure_prints_one_error_line(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    proc = RunnerProcess(bad, tmp_path)
    with pytest.raises(RuntimeError):
        proc.start()
    assert proc.proc.returncode == 1
    lines = proc.stderr().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "bad.gguf" in lines[0]
    assert not os.path.exists(proc.socket_path)


def test_missing_model_file(tmp_path):
    proc = RunnerProcess(tmp_path / "nope.gguf", tmp_path)
    with pytest.raises(RuntimeError):
        proc.start()
    assert proc.stderr().strip() == f"error: model file not found: {tmp_path / 'nope.gguf'}"


def test_sigterm_mid_stream_ends_cleanly(tiny_model, tmp_path):
    proc = RunnerProcess(tiny_model, tmp_path, ctx_size=2048, parallel=1).start()
    stream = proc.stream({"prompt": "Go", "options": {**GREEDY, "num_predict": 100000}})
    next(stream)
    assert proc.stop() == 0
    rest = list(stream)
    assert not rest or "error" in rest[-1] or rest[-1].get("done")
    assert not os.path.exists(proc.socket_path)


def test_embed_returns_normalised_vectors(runner):
    status, reply = runner.request("POST", "/embed", {"input": ["hello world", "something else", "hello world"]})
    assert status == 200
    vectors = reply["embeddings"]
    assert len(vectors) == 3 and len(vectors[0]) == 64
    assert vectors[0] == pytest.approx(vectors[2], abs=1e-6)
    assert sum(x * x for x in vectors[1]) == pytest.approx(1.0, abs=1e-5)
    assert reply["prompt_eval_count"] == 2 + 2 + 2


def test_embed_rejects_bad_input(runner):
    status, reply = runner.request("POST", "/embed", {"input": [1, 2]})
    assert status == 400 and "input" in reply["error"]
    status, reply = runner.request("POST", "/embed", {"input": ["word " * 1500], "truncate": False})
    assert status == 400 and "exceeds the context" in reply["error"]
