"""LLMHOST_API_KEY: every TCP request needs a key; the unix socket needs none; keys never show."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest
from aiohttp import web

from llmhost.api.client import Client
from llmhost.daemon.app import create_app
from llmhost.errors import Unauthorized
from tests.daemon.conftest import daemon_state
from tests.support.processes import free_port

KEYS = ("sk-first-0123456789", "sk-second-abcdef")
MODEL_BODY = {"model": "tiny", "prompt": "x", "stream": False}


class Daemon:
    """One app served on a unix socket and on TCP, as ``llm serve`` does."""

    def __init__(self, runner: web.AppRunner, socket_path, port: int):
        self.runner, self.socket_path, self.port = runner, socket_path, port
        self.url = f"http://127.0.0.1:{port}"

    def tcp(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(self.url)

    def unix(self) -> aiohttp.ClientSession:
        return aiohttp.ClientSession("http://localhost", connector=aiohttp.UnixConnector(path=str(self.socket_path)))


@pytest.fixture
async def daemon(tmp_path, template_store):
    state = daemon_state(tmp_path, template_store, {"LLMHOST_API_KEY": ",".join(KEYS)})
    runner = web.AppRunner(create_app(state), handler_cancellation=True)
    await runner.setup()
    socket_path, port = tmp_path / "d.sock", free_port()
    await web.UnixSite(runner, str(socket_path)).start()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield Daemon(runner, socket_path, port)
    await runner.cleanup()


@pytest.mark.parametrize("headers, status", [
    pytest.param({}, 401, id="no-key"),
    pytest.param({"Authorization": "Bearer sk-wrong"}, 401, id="wrong-key"),
    pytest.param({"Authorization": f"Basic {KEYS[0]}"}, 401, id="not-bearer"),
    pytest.param({"Authorization": f"Bearer {KEYS[0]}x"}, 401, id="key-with-more"),
    pytest.param({"Authorization": f"Bearer {KEYS[0]}"}, 200, id="first-key"),
    pytest.param({"Authorization": f"bearer {KEYS[1]}"}, 200, id="second-key-any-case-scheme"),
    pytest.param({"x-api-key": KEYS[1]}, 200, id="anthropic-header"),
])
async def test_tcp_requests_need_a_key(daemon, headers, status):
    async with daemon.tcp() as http:
        for method, path, body in [("GET", "/api/tags", None), ("POST", "/api/generate", MODEL_BODY),
                                   ("GET", "/metrics", None), ("GET", "/health", None)]:
            async with http.request(method, path, json=body, headers=headers) as r:
                assert r.status == status, (path, await r.text())
                if status == 401:
                    assert "API key" in (await r.json())["error"]


async def test_the_unix_socket_needs_no_key(daemon):
    async with daemon.unix() as http:
        async with http.post("/api/generate", json=MODEL_BODY) as r:
            assert r.status == 200 and (await r.json())["done"] is True
        async with http.get("/api/tags") as r:
            assert r.status == 200


async def test_refusals_come_in_each_protocols_shape_and_change_nothing(daemon):
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "x"}]}
    async with daemon.tcp() as http:
        async with http.post("/v1/chat/completions", json=chat) as r:
            assert r.status == 401 and "API key" in (await r.json())["error"]["message"]
        async with http.post("/v1/messages", json={**chat, "max_tokens": 8}) as r:
            body = await r.json()
            assert r.status == 401 and body["error"]["type"] == "authentication_error"
        async with http.delete("/api/delete", json={"model": "tiny"}) as r:
            assert r.status == 401
    async with daemon.unix() as http, http.get("/api/tags") as r:
        assert [m["name"] for m in (await r.json())["models"]] == ["tiny:latest"]


async def test_a_browser_preflight_needs_no_key(daemon):
    # Browsers never send credentials on a preflight; the request that follows carries the key.
    async with daemon.tcp() as http, http.options("/api/chat", headers={"Origin": "http://localhost:3000",
                                                  "Access-Control-Request-Method": "POST"}) as r:
        assert r.status == 204 and "Authorization" in r.headers["Access-Control-Allow-Headers"]


async def test_the_key_is_never_logged(daemon, caplog):
    caplog.set_level(logging.DEBUG)
    async with daemon.tcp() as http:
        for key in (KEYS[0], "sk-wrong-guess"):
            async with http.post("/api/generate", json=MODEL_BODY, headers={"Authorization": f"Bearer {key}"}) as r:
                await r.read()
    assert KEYS[0] not in caplog.text and "sk-wrong-guess" not in caplog.text


async def test_the_cli_client_sends_the_key_over_tcp(daemon):
    with_key = Client(None, f"127.0.0.1:{daemon.port}", timeout=10, api_key=KEYS[1])
    assert (await asyncio.to_thread(with_key.list))["models"]
    without = Client(None, f"127.0.0.1:{daemon.port}", timeout=10)
    with pytest.raises(Unauthorized, match="API key"):
        await asyncio.to_thread(without.list)
    over_socket = Client(daemon.socket_path, "127.0.0.1:1", timeout=10)  # socket first: no key needed
    assert (await asyncio.to_thread(over_socket.list))["models"]

