"""The API client: transports, error mapping, streaming, blob upload."""

from __future__ import annotations

import hashlib

import pytest

from llmhost.api.client import Client
from llmhost.config import Settings
from llmhost.errors import BadRequest, DaemonUnreachable, LlmhostError, NotFound, ServerBusy
from tests.support.fake_daemon import MODEL
from tests.support.processes import free_port


@pytest.fixture
def client(daemon) -> Client:
    return Client(daemon.socket_path, f"127.0.0.1:{free_port()}")


def test_returns_parsed_json_over_the_unix_socket(client):
    assert client.version() == {"version": "0.32.15", "llmhost": "0.1.0"}
    assert [m["name"] for m in client.list()["models"]] == [MODEL]


def test_falls_back_to_tcp_when_the_socket_is_absent(env):
    from tests.support.fake_daemon import FakeDaemon

    fake = FakeDaemon(str(env)).start(tcp=True)
    try:
        client = Client(str(env) + ".missing", f"127.0.0.1:{fake.tcp_port}")
        client.heartbeat()
        assert client.ps() == {"models": []}
    finally:
        fake.stop()


def test_nothing_listening_raises_daemon_unreachable(env):
    client = Client(str(env), f"127.0.0.1:{free_port()}")
    with pytest.raises(DaemonUnreachable, match="could not connect"):
        client.heartbeat()


@pytest.mark.parametrize(
    "status, error_class",
    [(400, BadRequest), (404, NotFound), (503, ServerBusy), (500, LlmhostError)],
    ids=["bad-request", "not-found", "busy", "internal"],
)
def test_error_status_maps_to_error_class(client, daemon, status, error_class):
    daemon.status_error = (status, "the daemon's message")
    with pytest.raises(error_class, match="the daemon's message") as caught:
        client.show(MODEL)
    assert caught.value.status == status


def test_streams_chunks_and_raises_on_an_in_stream_error(client, daemon):
    daemon.stream_error = "runner died"
    chunks = []
    with pytest.raises(LlmhostError, match="runner died"):
        for chunk in client.generate(MODEL, "hi"):
            chunks.append(chunk["response"])
    assert chunks == daemon.tokens


def test_non_streaming_generate_returns_one_object(client, daemon):
    answer = client.generate(MODEL, "hi", stream=False, options={"temperature": 0})
    assert answer["response"] == "Hello, world!" and answer["done"]
    assert daemon.bodies("/api/generate")[-1] == {
        "model": MODEL, "prompt": "hi", "options": {"temperature": 0}, "stream": False,
    }


def test_long_ndjson_lines_are_read_whole(client, daemon):
    daemon.tokens = ["x" * 3_000_000]
    assert next(c["response"] for c in client.generate(MODEL, "hi")) == "x" * 3_000_000


def test_upload_blob_streams_the_file_and_blob_exists_sees_it(client, daemon, tmp_path):
    data = bytes(range(256)) * 20_000
    path = tmp_path / "weights.gguf"
    path.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    seen = []
    assert not client.blob_exists(digest)
    client.upload_blob(digest, path, progress=seen.append)
    assert client.blob_exists(digest)
    assert daemon.blobs[digest] == data
    assert sum(seen) == len(data) and len(seen) > 1  # sent in blocks, not one read


def test_create_sends_from_and_drops_unset_fields(client, daemon):
    events = list(client.create("new", from_=MODEL, system="be brief"))
    assert events[-1] == {"status": "success"}
    assert daemon.bodies("/api/create")[-1] == {"model": "new", "from": MODEL, "system": "be brief", "stream": True}


def test_embed(client):
    assert client.embed(MODEL, "hello")["embeddings"] == [[0.6, 0.8]]


def test_from_settings_takes_the_first_key():
    settings = Settings.from_env({"LLMHOST_API_KEY": "sk-first-0123456789,sk-second"})
    assert Client.from_settings(settings)._api_key == "sk-first-0123456789"
