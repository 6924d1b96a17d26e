"""Browser-facing defences: foreign origins and Host headers (DNS rebinding) are refused."""

from __future__ import annotations

import pytest

from llmhost.daemon.security import origin_allowed


async def test_cross_site_simple_post_is_refused_and_changes_nothing(harness):
    before = harness.files()
    r = await harness.client.post("/api/copy", data='{"source":"tiny","destination":"evil.example/x/stolen"}',
                                  headers={"Origin": "https://evil.example", "Content-Type": "text/plain"})
    assert r.status == 403 and "LLMHOST_ORIGINS" in (await r.json())["error"]
    assert harness.files() == before


async def test_local_origin_gets_cors_headers_even_on_a_stream(harness):
    r = await harness.client.post("/api/generate", json={"model": "tiny", "prompt": "hi"},
                                  headers={"Origin": "http://localhost:3000"})
    assert r.status == 200
    assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    await r.read()


async def test_preflight_from_a_local_origin(harness):
    r = await harness.client.options("/api/chat", headers={"Origin": "http://127.0.0.1:8080",
                                                           "Access-Control-Request-Method": "POST"})
    assert r.status == 204 and "POST" in r.headers["Access-Control-Allow-Methods"]


@pytest.mark.parametrize("origin, extra, allowed", [
    ("http://localhost", (), True),
    ("http://localhost:5173", (), True),
    ("vscode-webview://abc", (), True),
    ("https://evil.example", (), False),
    ("http://localhost.evil.example", (), False),
    ("chrome-extension://abcdef", (), False),
    ("chrome-extension://abcdef", ("chrome-extension://*",), True),
    ("https://chat.example.org", ("https://chat.example.org",), True),
])
def test_origin_rules(origin, extra, allowed):
    assert origin_allowed(origin, extra) is allowed


async def test_foreign_host_header_is_refused(harness):
    r = await harness.client.get("/api/tags", headers={"Host": "evil.example.com"})
    assert r.status == 403
    r = await harness.client.get("/api/tags", headers={"Host": "localhost:11434"})
    assert r.status == 200
