"""No request can exhaust a runner: template bombs, grammar bombs, huge prompts and bad text get a
clear 400 (JSON, never text/plain) and the runner keeps serving everyone else (issue 9, items 3, 6, 8)."""

from __future__ import annotations

import json
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from llmhost.engine import runner_http as server_module
from llmhost.engine.llamacpp import Model
from llmhost.engine.prompt import CHARS_PER_TOKEN, CompletionRequest, PromptBuilder, fit_context
from llmhost.engine.runner_http import RunnerServer
from llmhost.errors import BadRequest
from tests.support.runner_process import RunnerProcess, UnixHTTPConnection, text_of
from tests.support.waiting import eventually

GREEDY = {"temperature": 0, "seed": 7}
# Small template limits (runner arguments) keep every bomb cheap to refuse.
SMALL_LIMITS = ("--template-steps", "20000", "--template-chars", "20000", "--template-timeout", "5")
FOREVER = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"


@pytest.fixture(scope="module")
def runner(tiny_model, tmp_path_factory):
    proc = RunnerProcess(tiny_model, tmp_path_factory.mktemp("hardening"), ctx_size=512, parallel=2,
                         extra=SMALL_LIMITS)
    with proc:
        yield proc
    assert proc.proc.returncode == 0, proc.stderr()


def chat(text: str, **body) -> dict:
    return {"messages": [{"role": "user", "content": text}], "options": {**GREEDY, "num_predict": 4}, **body}


def still_serves(runner) -> bool:
    return text_of(runner.completion(chat("Hello"))) != ""


# --- item 3: chat templates ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template, limit",
    [
        pytest.param("{% for i in range(3000) %}{% for j in range(3000) %}{% endfor %}{% endfor %}",
                     "steps (loop iterations and calls)", id="nested-loops"),
        pytest.param("{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% endif %}{% endmacro %}{{ f(22) }}",
                     "steps (loop iterations and calls)", id="doubling-macro"),
        pytest.param("{{ 'x' * 200000 }}", "render limit of", id="string-repetition"),
        pytest.param("{% for i in range(1000) %}{{ 'y' * 1000 }}{% endfor %}", "render limit of", id="long-output"),
    ],
)
def test_template_bombs_get_400_naming_the_limit(runner, template, limit):
    status, reply = runner.request("POST", "/completion", chat("Hi", template=template))
    assert status == 400 and "chat template exceeded the" in reply["error"] and limit in reply["error"]
    assert still_serves(runner)


def test_an_oversized_template_is_refused_before_compiling(runner):
    status, reply = runner.request("POST", "/completion", chat("Hi", template="{{ x }}" * 10_000))
    assert status == 400 and "more than the limit of 65536" in reply["error"]


def test_concurrent_template_bombs_do_not_wedge_the_model(runner):
    # Six of these used to take every executor thread for good, and the model answered no one.
    with ThreadPoolExecutor(8) as pool:
        bombs = [pool.submit(runner.request, "POST", "/completion", chat("Hi", template=FOREVER)) for _ in range(8)]
        assert all(bomb.result(timeout=30)[0] == 400 for bomb in bombs)
    start = time.monotonic()
    assert still_serves(runner) and time.monotonic() - start < 10


def test_real_template_renders_unchanged_with_a_long_conversation(runner):
    history = [{"role": ("user", "assistant")[i % 2], "content": f"turn {i} " * 40} for i in range(200)]
    body = {"messages": history, "options": {**GREEDY, "num_predict": 2}}
    final = runner.completion(body)[-1]  # ~60 KB of prompt, far above the 20000-character floor
    assert final["done"] and final["prompt_eval_count"] + final["prompt_cached_count"] < 512


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_client_that_goes_away_stops_its_render(tiny_model, tmp_path):
    patient = ("--template-steps", str(10**12), "--template-timeout", "600")
    with RunnerProcess(tiny_model, tmp_path, ctx_size=256, parallel=1, extra=patient) as runner:
        conn = UnixHTTPConnection(runner.socket_path)
        conn.request("POST", "/completion", body=json.dumps(chat("Hi", template=FOREVER)),
                     headers={"Content-Type": "application/json"})
        time.sleep(0.5)  # rendering
        conn.close()
        time.sleep(0.5)
        before = cpu_seconds(runner.proc.pid)
        time.sleep(1.0)
        assert cpu_seconds(runner.proc.pid) - before < 0.3  # a render left running burns a whole CPU
        assert still_serves(runner)


# --- item 6: grammars and huge prompts ----------------------------------------------------------------


def test_format_with_a_huge_length_is_refused_at_once(runner):
    start = time.monotonic()
    status, reply = runner.request("POST", "/completion", chat("Hi", format={"type": "string", "minLength": 1e9}))
    assert status == 400 and '"minLength" of 1000000000' in reply["error"] and "limit of 1000" in reply["error"]
    assert time.monotonic() - start < 5 and still_serves(runner)


def test_format_with_a_large_flat_repetition_is_refused(runner):
    status, reply = runner.request("POST", "/completion", chat("Hi", format={"type": "string", "minLength": 100000}))
    assert status == 400 and "limit of 1000" in reply["error"]


def test_forced_tool_call_with_a_huge_schema_is_refused(runner):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"xs": {"type": "array", "minItems": 100000}}}}}]
    status, reply = runner.request("POST", "/completion", chat("Hi", tools=tools, tool_choice="required"))
    assert status == 400 and "the tools" in reply["error"] and "limit of 1000" in reply["error"]


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


@pytest.mark.parametrize("truncate", [True, False], ids=["truncated", "refused"])
def test_a_prompt_far_beyond_the_context_costs_little(runner, truncate):
    prompt = " ".join(f"w{i}" for i in range(1_500_000))  # ~12 MB: tokenized whole it took ~1.4 GB
    before = peak_rss(runner.proc.pid)
    status, reply = runner.request("POST", "/completion", {"prompt": prompt, "truncate": truncate,
                                                           "options": {**GREEDY, "num_predict": 2}})
    assert peak_rss(runner.proc.pid) - before < 250 * 2**20
    if truncate:
        assert status == 200 and reply[-1]["done"] and reply[-1]["prompt_eval_count"] < 512
    else:
        assert status == 400 and "which does not fit the context of 512 tokens" in reply["error"]


# --- item 8: text that is not Unicode; errors always JSON ---------------------------------------------


@pytest.mark.parametrize(
    "path, body",
    [
        pytest.param("/completion", {"prompt": "a \ud800 b"}, id="prompt"),
        pytest.param("/completion", {"messages": [{"role": "user", "content": "\udfff"}]}, id="message"),
        pytest.param("/completion", {"prompt": "x", "options": {"stop": ["\ud83d"]}}, id="stop"),
        pytest.param("/tokenize", {"content": "\ud800"}, id="tokenize"),
        pytest.param("/embed", {"input": ["\ud800"]}, id="embed"),
    ],
)
def test_lone_surrogates_are_a_json_400(runner, path, body):
    status, reply = runner.request("POST", path, body)  # json.dumps writes them as \ud800 escapes
    assert status == 400 and "lone surrogate" in reply["error"]


def test_a_surrogate_pair_is_a_character(runner):
    status, reply = runner.request("POST", "/tokenize", {"content": "\U0001f600"})  # sent as \ud83d\ude00
    assert status == 200 and reply["tokens"]


class CountingEngine:
    """Counts the requests the runner announced (``expect``) and has not settled: an engine holds
    its first step for those, so a request that fails must settle too."""

    def __init__(self):
        self.preparing = 0

    def expect(self):
        self.preparing += 1
        settled = False

        def settle():
            nonlocal settled
            if not settled:
                settled = True
                self.preparing -= 1

        return settle


class FakeBuilder:
    """Stands in for PromptBuilder: ``sequence`` fails, or takes its time and hands back ``late``."""

    def __init__(self, error: Exception | None = None, delay: float = 0.0):
        self.error, self.delay = error, delay
        self.cancel: threading.Event | None = None
        self.late = LateSequence()

    def sequence(self, req, sink, cancel):
        self.cancel = cancel
        time.sleep(self.delay)
        if self.error:
            raise self.error
        return self.late


class LateSequence:
    closed = False

    def close(self):
        self.closed = True


async def post(server: RunnerServer, body: dict | str) -> tuple[int, str, dict]:
    async with TestClient(TestServer(server.app())) as client:
        data = body if isinstance(body, str) else json.dumps(body)
        resp = await client.post("/completion", data=data, headers={"Content-Type": "application/json"})
        return resp.status, resp.content_type, await resp.json(content_type=None)


async def test_an_unexpected_error_before_streaming_is_a_json_500():
    engine = CountingEngine()
    server = RunnerServer(engine, FakeBuilder(error=RuntimeError("boom")), None, dict)
    status, content_type, reply = await post(server, {"prompt": "x"})
    assert (status, content_type) == (500, "application/json") and "boom" in reply["error"]
    assert engine.preparing == 0


async def test_a_bad_request_from_the_builder_is_a_json_400():
    engine = CountingEngine()
    server = RunnerServer(engine, FakeBuilder(error=BadRequest("nope")), None, dict)
    assert await post(server, {"prompt": "x"}) == (400, "application/json", {"error": "nope"})
    assert engine.preparing == 0


async def test_json_nested_too_deeply_is_a_400():
    server = RunnerServer(CountingEngine(), FakeBuilder(), None, dict)
    status, _, reply = await post(server, "[" * 100_000 + "]" * 100_000)
    assert status == 400 and "nested too deeply" in reply["error"]


async def test_a_body_over_the_limit_is_a_json_413(monkeypatch):
    monkeypatch.setattr(server_module, "MAX_BODY", 1000)
    server = RunnerServer(CountingEngine(), FakeBuilder(), None, dict)
    status, content_type, reply = await post(server, {"prompt": "x" * 2000})
    assert (status, content_type) == (413, "application/json") and "limit" in reply["error"]


async def test_the_handler_gives_up_on_a_stuck_preparation_and_frees_what_comes_late():
    builder = FakeBuilder(delay=1.0)
    engine = CountingEngine()
    server = RunnerServer(engine, builder, None, dict, prepare_timeout=0.2)
    start = time.monotonic()
    status, _, reply = await post(server, {"prompt": "x"})
    assert status == 503 and "longer than 0.2 s" in reply["error"] and time.monotonic() - start < 0.9
    assert engine.preparing == 0
    assert builder.cancel.is_set()
    await eventually(lambda: builder.late.closed, what="the late sequence freed")


# --- the bounded tokenization itself (the tiny model's tokenizer) -------------------------------------


@pytest.fixture(scope="module")
def builder(tiny_model):
    model = Model(tiny_model)
    yield PromptBuilder(model, 256)
    model.close()


@pytest.fixture
def tokenized(builder, monkeypatch) -> list[int]:
    """Lengths of every text the builder tokenizes from now on."""
    lengths, tokenize = [], builder.model.tokenize

    def spy(text, **kwargs):
        lengths.append(len(text))
        return tokenize(text, **kwargs)

    monkeypatch.setattr(builder.model, "tokenize", spy)
    return lengths


LONG = " ".join(f"w{i}" for i in range(40_000))  # ~270 KB, ~100 times what 256 tokens hold


def whole_then_cut(builder, req: CompletionRequest) -> np.ndarray:
    # What the builder did before: tokenize everything, then cut.
    text = builder.render(req)
    tokens = builder._tokenize(text)
    keep = builder.keep_tokens(req, tokens)
    return fit_context(tokens, 256, num_keep=keep, num_predict=req.params.num_predict, truncate=True,
                       bos=builder._bos)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"prompt": LONG}, id="raw"),
        pytest.param({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": LONG}]},
                     id="chat-with-system"),
        pytest.param({"prompt": LONG, "options": {"num_keep": 5, "num_predict": 10}}, id="num_keep"),
    ],
)
def test_only_what_can_fit_is_tokenized_and_the_prompt_is_the_same(builder, tokenized, body):
    req = CompletionRequest.from_json(body)
    expected = whole_then_cut(builder, req)
    tokenized.clear()
    assert builder.tokens(req).tolist() == expected.tolist()
    assert max(tokenized) <= 2 * 256 * CHARS_PER_TOKEN


def test_a_prompt_far_too_long_without_truncate_is_refused_before_tokenizing_it(builder, tokenized):
    with pytest.raises(BadRequest, match="is more than .* tokens, which does not fit"):
        builder.tokens(CompletionRequest.from_json({"prompt": LONG, "truncate": False}))
    assert max(tokenized) <= 2 * 256 * CHARS_PER_TOKEN


def test_a_prompt_of_long_tokens_widens_the_window(builder, tokenized):
    spaces = ("x" + " " * 63) * 20_000  # ~2 tokens per 64 characters
    tokens = builder.tokens(CompletionRequest.from_json({"prompt": spaces}))
    assert len(tokens) > 128 and max(tokenized) < len(spaces)


def test_embedding_inputs_are_cut_to_the_head_that_fits(builder):
    head = builder.head_that_fits(LONG)
    assert len(head) < len(LONG) and LONG.startswith(head)
    assert len(builder.model.tokenize(head, add_special=True)) > 256
    assert builder.head_that_fits("short") == "short"


def test_tokenize_refuses_more_text_than_any_prompt_tokenizes(runner):
    status, reply = runner.request("POST", "/tokenize", {"content": "x" * (512 * 64 + 1)})
    assert status == 400 and "more than the limit of 32768" in reply["error"]
