"""Hostile or careless requests (issue 9): leases always released, load options and durations bounded,
strict JSON, path-free errors, origins matched part by part, a hung runner reported as such.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import signal

import aiohttp
import pytest
from aiohttp import web

from llmhost.daemon import routes_inference, routes_openai
from llmhost.daemon.dialects import internal_error_message
from llmhost.daemon.http import MAX_JSON_DEPTH
from llmhost.daemon.memory import BATCH_BYTES_PER_TOKEN, estimate_for_spec
from llmhost.daemon.routes_inference import FOREVER
from llmhost.daemon.runner_client import LoadSpec, ProcessRunnerFactory, runner_batch
from llmhost.daemon.security import make_security_middleware, origin_allowed
from llmhost.errors import ConfigError, InvalidOption, RunnerError
from tests.daemon.fakes import spec
from tests.support.daemon_app import Harness, start_app
from tests.support.waiting import eventually


@pytest.fixture
async def one_model(harness, tmp_path):
    """An app over ``harness``'s store that holds one model at a time (LLMHOST_MAX_LOADED_MODELS=1)."""
    one = await start_app(harness.store, tmp_path / "one.sock", factory=harness.factory, max_loaded=1)
    yield one
    await one.client.close()


async def assert_model_free(h: Harness) -> None:
    """No request holds the model: it shows idle, and a runner with other load options takes its place
    (with one model allowed, that needs the first one gone)."""
    await eventually(lambda: all(r.idle for r in h.residency.residents()), what="every resident idle")
    h.factory.words, h.factory.gate = ["Hello"], None
    request = h.client.post("/api/generate", json={"model": "tiny", "prompt": "x", "stream": False,
                                                   "options": {"num_batch": 256}})
    r = await asyncio.wait_for(request, 5)
    assert r.status == 200 and len(h.factory.live()) == 1


async def post_raw(h: Harness, path: str, raw: str) -> tuple[int, dict]:
    r = await h.client.post(path, data=raw, headers={"Content-Type": "application/json"})
    return r.status, await r.json()


# --- item 2: a lease is released however the request ends -----------------------------------------

async def test_a_runner_failing_before_its_first_line_releases_the_model(one_model):
    one_model.factory.words = [RunnerError("model runner crashed (signal 11)")]
    for path, body in (("/api/generate", {"model": "tiny", "prompt": "x"}),
                       ("/v1/chat/completions", {"model": "tiny", "stream": True,
                                                 "messages": [{"role": "user", "content": "x"}]})):
        r = await one_model.client.post(path, json=body)
        assert r.status == 500 and "signal 11" in await r.text()
    await assert_model_free(one_model)


async def test_a_v1_body_is_checked_before_the_model_is_taken(one_model):
    r = await one_model.client.post("/v1/chat/completions", json={
        "model": "tiny", "stream": True, "stream_options": "yes", "messages": [{"role": "user", "content": "x"}]})
    assert r.status == 400 and "stream_options" in (await r.json())["error"]["message"]
    assert one_model.factory.started == []
    await assert_model_free(one_model)


@pytest.mark.parametrize("module, name, path, body", [
    (routes_openai, "_respond", "/v1/chat/completions",
     {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}),
    (routes_openai, "_respond", "/v1/completions", {"model": "tiny", "prompt": "x", "stream": True}),
    (routes_inference, "stream_ndjson", "/api/chat", {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}),
], ids=["v1 chat", "v1 completions", "native chat"])
async def test_a_failure_before_the_lines_are_read_releases_the_model(one_model, monkeypatch, module, name, path, body):
    async def broken(*args, **kwargs):
        raise RuntimeError("a bug while building the response")

    monkeypatch.setattr(module, name, broken)
    r = await one_model.client.post(path, json=body)
    assert r.status == 500
    monkeypatch.undo()
    await assert_model_free(one_model)


async def test_a_response_that_cannot_be_sent_releases_the_model(one_model, monkeypatch):
    prepare = web.StreamResponse.prepare

    async def failing(self, request):
        if self.content_type in ("application/x-ndjson", "text/event-stream"):
            raise ConnectionResetError("the client went away")
        return await prepare(self, request)

    monkeypatch.setattr(web.StreamResponse, "prepare", failing)
    for path, body in (("/api/generate", {"model": "tiny", "prompt": "x"}),
                       ("/v1/chat/completions", {"model": "tiny", "stream": True,
                                                 "messages": [{"role": "user", "content": "x"}]})):
        try:
            await (await one_model.client.post(path, json=body)).read()
        except aiohttp.ClientError:
            pass  # the server dropped the connection: what a client that left would not see anyway
    monkeypatch.undo()
    await assert_model_free(one_model)


async def test_a_client_gone_before_the_first_line_releases_the_model(one_model):
    one_model.factory.gate, one_model.factory.gate_at = asyncio.Event(), 0
    server = one_model.client.server
    _reader, writer = await asyncio.open_connection(server.host, server.port)
    body = json.dumps({"model": "tiny", "prompt": "x"}).encode()
    writer.write(f"POST /api/generate HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    await writer.drain()
    await eventually(lambda: one_model.factory.started and one_model.factory.started[0].bodies,
                     what="the request in the runner")
    writer.close()
    await writer.wait_closed()
    one_model.factory.gate.set()  # the first line comes after the client has gone
    await assert_model_free(one_model)


# --- item 5: load options are bounded; num_batch below the sequence count no longer aborts -------

@pytest.mark.parametrize("options, message", [
    ({"num_batch": 2 * 10**7}, 'option "num_batch" must be between 0 and 65536'),
    ({"num_batch": 10**9}, 'option "num_batch" must be between 0 and 65536'),
    ({"num_batch": -1}, 'option "num_batch" must be between'),
    ({"num_ctx": 2**24 + 1}, 'option "num_ctx" must be between 0 and 16777216'),
    ({"num_ctx": -5}, 'option "num_ctx" must be between'),
    ({"num_thread": 100000}, 'option "num_thread" must be between 0 and 512'),
    ({"num_gpu": -2}, 'option "num_gpu" must be between -1'),
    ({"top_k": 2**40}, 'option "top_k" must be between'),
], ids=["2e7 batch", "1e9 batch", "negative batch", "huge ctx", "negative ctx", "threads", "num_gpu", "int32"])
async def test_out_of_range_load_options_are_400_and_load_nothing(harness, options, message):
    r = await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "x", "options": options})
    assert r.status == 400 and message in (await r.json())["error"]
    assert harness.factory.started == []


@pytest.mark.parametrize("num_batch, num_ctx, parallel, given", [
    (1, 2048, 4, 4),  # llama.cpp aborts a context whose batch is smaller than its sequence count
    (512, 2048, 4, 512),
    (65536, 2048, 1, 2048),  # never more than the KV cache holds
])
def test_the_runner_gets_a_batch_llama_cpp_can_use(num_batch, num_ctx, parallel, given):
    assert runner_batch(spec(num_batch=num_batch, num_ctx=num_ctx, parallel=parallel)) == given


def test_the_estimate_follows_num_batch(tiny_gguf):
    small, large = (estimate_for_spec(spec(model_path=tiny_gguf, num_ctx=65536, num_batch=n)) for n in (512, 65536))
    assert large - small >= BATCH_BYTES_PER_TOKEN * (65536 - 512)
    # what the runner is not given is not counted either
    assert estimate_for_spec(spec(model_path=tiny_gguf, num_ctx=256, num_batch=65536)) == \
        estimate_for_spec(spec(model_path=tiny_gguf, num_ctx=256, num_batch=256))


async def test_num_batch_1_with_4_sequences_loads_and_answers(tmp_path, tiny_gguf):
    factory = ProcessRunnerFactory(tmp_path / "sockets", load_timeout=60)
    runner = await factory.start(LoadSpec(key="k", model_path=tiny_gguf, num_ctx=256, parallel=4, num_batch=1,
                                          num_gpu=0, threads=1))
    try:
        lines = [line async for line in runner.completion({"prompt": "Hello", "options": {"num_predict": 3}})]
        assert lines[-1]["done"] is True
    finally:
        await runner.close()
        await factory.close()


# --- item 7: keep_alive ---------------------------------------------------------------------------

@pytest.mark.parametrize("raw, status", [
    ('{"model": "tiny", "prompt": "x", "keep_alive": ""}', 400),
    ('{"model": "tiny", "prompt": "x", "keep_alive": NaN}', 400),
    ('{"model": "tiny", "prompt": "x", "keep_alive": Infinity}', 400),
    ('{"model": "tiny", "prompt": "x", "keep_alive": 1e308, "stream": false}', 200),
], ids=["empty", "NaN", "Infinity", "1e308"])
async def test_keep_alive_is_refused_or_bounded_and_ps_keeps_answering(harness, raw, status):
    code, body = await post_raw(harness, "/api/generate", raw)
    assert code == status, body
    r = await harness.client.get("/api/ps")
    assert r.status == 200
    models = (await r.json())["models"]
    assert [m["expires_at"] for m in models] == ([FOREVER] if status == 200 else [])


# --- item 8: nesting, long names, paths in errors -------------------------------------------------

def nested(depth: int) -> str:
    """A request whose ``format`` makes the body ``depth`` levels of objects deep."""
    return '{"model": "tiny", "prompt": "x", "stream": false, "format": ' + '{"a": ' * (depth - 1) + "1" \
        + "}" * (depth - 1) + "}"


@pytest.mark.parametrize("depth, status", [(MAX_JSON_DEPTH, 200), (MAX_JSON_DEPTH + 1, 400), (1000, 400),
                                           (100_000, 400)])
async def test_deeply_nested_json_is_400(harness, depth, status):
    code, body = await post_raw(harness, "/api/generate", nested(depth))
    assert code == status
    if status == 400:
        assert body["error"] == f"invalid JSON in request body: nested more than {MAX_JSON_DEPTH} levels deep"


@pytest.mark.parametrize("raw, message", [
    ('{"model": "tiny", "temperature": 1e400}', "number 1e400 is out of range"),
    ('{"model": "tiny", "n": ' + "9" * 5000 + "}", "a number has too many digits"),
])
async def test_numbers_json_does_not_have_are_400(harness, raw, message):
    code, body = await post_raw(harness, "/api/generate", raw)
    assert code == 400 and message in body["error"]


@pytest.mark.parametrize("path", ["/api/generate", "/api/show"])
async def test_a_host_longer_than_a_file_name_is_400_without_paths(harness, path):
    code, body = await post_raw(harness, path, json.dumps({"model": "h" * 300 + ".io/ns/m", "prompt": "x"}))
    assert code == 400 and "longer than 255" in body["error"]
    assert str(harness.store.root) not in body["error"]


async def test_an_unexpected_os_error_is_reported_without_its_path(harness, monkeypatch):
    where = str(harness.store.root / "manifests" / ("h" * 300))

    def load(name):
        raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), where)

    monkeypatch.setattr(harness.store, "load", load)
    code, body = await post_raw(harness, "/api/generate", '{"model": "tiny", "prompt": "x"}')
    assert (code, body) == (500, {"error": "internal error: file name too long"})


async def test_an_os_error_mid_stream_is_reported_without_its_path(harness):
    harness.factory.words = ["Hello", OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/var/lib/secret/x")]
    r = await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "x"})
    lines = [json.loads(line) for line in (await r.text()).splitlines()]
    assert lines[-1] == {"error": "internal error: no space left on device"}


def test_internal_error_messages():
    assert internal_error_message(FileNotFoundError(2, "No such file or directory", "/x/y")) == \
        "internal error: no such file or directory"
    assert internal_error_message(ValueError("bad")) == "internal error: bad"


# --- item 10: origins -----------------------------------------------------------------------------

ORIGINS = {
    "IPv6 loopback": ("http://[::1]", (), True),
    "IPv6 loopback with a port": ("http://[::1]:3000", (), True),
    "IPv6 loopback over https": ("https://[::1]:8443", (), True),
    "a character of [::1] is not a host": ("http://1", (), False),
    "nor is a colon": ("http://:", (), False),
    "another IPv6 address": ("http://[::2]", (), False),
    "a port that is not a number": ("http://localhost:abc", (), False),
    "a wildcard sent as an origin": ("http://localhost:*", (), False),
    "a path": ("http://localhost:3000/x", (), False),
    "user info": ("http://evil@localhost", (), False),
    "case does not matter": ("HTTP://LOCALHOST:3000", (), True),
    "vscode-file": ("vscode-file://vscode-app", (), True),
    "subdomain wildcard": ("https://a.example.org", ("https://*.example.org",), True),
    "subdomain wildcard is not the domain": ("https://example.org", ("https://*.example.org",), False),
    "subdomain wildcard is not a suffix": ("https://evilexample.org", ("https://*.example.org",), False),
    "port wildcard in LLMHOST_ORIGINS": ("http://192.168.1.7:8080", ("http://192.168.1.7:*",), True),
    "port wildcard needs a port": ("http://192.168.1.7", ("http://192.168.1.7:*",), False),
    "* alone allows all": ("https://anything.example", ("*",), True),
}


@pytest.mark.parametrize("origin, extra, allowed", ORIGINS.values(), ids=ORIGINS.keys())
def test_origins_are_matched_part_by_part(origin, extra, allowed):
    assert origin_allowed(origin, extra) is allowed


async def test_an_ipv6_loopback_page_can_call_the_api(harness):
    r = await harness.client.get("/api/tags", headers={"Origin": "http://[::1]:3000"})
    assert r.status == 200 and r.headers["Access-Control-Allow-Origin"] == "http://[::1]:3000"
    r = await harness.client.get("/api/tags", headers={"Origin": "http://1"})
    assert r.status == 403


@pytest.mark.parametrize("pattern", ["http://a*b*c", "localhost:3000", "http://x:port", "http://x/path"])
def test_a_malformed_llmhost_origins_pattern_stops_the_daemon(pattern):
    with pytest.raises(ConfigError, match="LLMHOST_ORIGINS"):
        make_security_middleware(True, (pattern,))


# --- item 11: float options are finite ------------------------------------------------------------

@pytest.mark.parametrize("path, raw", [
    ("/api/generate", '{"model": "tiny", "prompt": "x", "options": {"repeat_penalty": NaN}}'),
    ("/api/chat", '{"model": "tiny", "messages": [], "options": {"temperature": NaN}}'),
    ("/v1/chat/completions", '{"model": "tiny", "messages": [{"role": "user", "content": "x"}], "top_p": NaN}'),
])
async def test_nan_options_are_400_and_load_nothing(harness, path, raw):
    code, body = await post_raw(harness, path, raw)
    message = body["error"]["message"] if path.startswith("/v1/") else body["error"]
    assert code == 400 and message == "invalid JSON in request body: NaN is not a JSON number"
    assert harness.factory.started == []


async def test_create_refuses_a_float_parameter_beyond_float32(harness):
    r = await harness.client.post("/api/create", json={"model": "hot", "from": "tiny",
                                                       "parameters": {"temperature": 1e39}, "stream": False})
    assert r.status == 400 and "finite" in (await r.json())["error"]


def test_the_runner_refuses_a_nan_option_too():
    from llmhost.engine.sampling import SamplingParams

    with pytest.raises(InvalidOption, match="finite"):
        SamplingParams.from_options({"repeat_penalty": float("nan")})


# --- item 12: a runner stopped for not answering says so -----------------------------------------

async def test_a_runner_killed_for_not_answering_is_reported_as_such(tmp_path, tiny_gguf):
    factory = ProcessRunnerFactory(tmp_path / "sockets", load_timeout=60, health_interval=0.2, health_misses=2)
    runner = await factory.start(LoadSpec(key="k", model_path=tiny_gguf, num_ctx=256, parallel=1, num_batch=64,
                                          num_gpu=0, threads=1))
    try:
        os.kill(runner.pid, signal.SIGSTOP)  # alive but silent, as a deadlocked process would be
        with pytest.raises(RunnerError) as err:
            async for _ in runner.completion({"prompt": "Hello", "options": {"num_predict": 3}}):
                pass
        assert "stopped answering" in err.value.message and "crashed" not in err.value.message
    finally:
        await runner.close()
        await factory.close()
