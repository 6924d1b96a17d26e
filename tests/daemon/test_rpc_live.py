"""A real daemon whose model is split over two ``llm worker`` processes on loopback ports (SmolLM2;
needs llama.cpp's RPC backend): the same greedy answer as unsplit, the split in /api/ps, and clear
errors when a worker is missing at load or lost mid-stream, the daemon staying up."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from tests.support.daemon_process import running_daemon
from tests.support.processes import free_port
from tests.support.rpc_workers import running_workers, skip_without_rpc

pytestmark = pytest.mark.model
SETTINGS = {"LLMHOST_NUM_THREADS": "2", "LLMHOST_NUM_PARALLEL": "2", "LLMHOST_CONTEXT_LENGTH": "1024"}
GREEDY = {"temperature": 0, "num_predict": 24}


def post(url: str, body: dict, timeout: float = 180) -> dict:
    request = urllib.request.Request(url + "/api/generate", data=json.dumps({"stream": False, **body}).encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as answer:
        return {"status": answer.code, **json.loads(answer.read())}


def stream_lines(url: str, body: dict, timeout: float = 180):
    request = urllib.request.Request(url + "/api/generate", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for line in response:
            yield json.loads(line)


@pytest.fixture
def split_daemon(tmp_path, smollm2_path):
    skip_without_rpc()
    with running_workers(2, tmp_path, "--mem", "512") as workers:
        servers = ",".join(w.address for w in workers)
        with running_daemon(tmp_path / "d", {**SETTINGS, "LLMHOST_RPC_SERVERS": servers}) as daemon:
            (tmp_path / "Modelfile").write_text(f"FROM {smollm2_path}\n")
            created = daemon.llm("create", "smol", "-f", str(tmp_path / "Modelfile"))
            assert created.returncode == 0, created.stderr
            yield daemon, workers


def test_a_split_model_answers_as_the_local_one_and_ps_shows_the_split(split_daemon):
    daemon, workers = split_daemon
    local = post(daemon.url, {"model": "smol", "prompt": "The capital of France is",
                              "options": {**GREEDY, "rpc_servers": ""}})
    split = post(daemon.url, {"model": "smol", "prompt": "The capital of France is", "options": GREEDY})
    assert split.get("response") and split["response"] == local["response"], (split, local)
    with urllib.request.urlopen(daemon.url + "/api/ps", timeout=10) as response:
        models = json.loads(response.read())["models"]
    (shown,) = [m for m in models if m.get("rpc")]
    assert [share["server"] for share in shown["rpc"]] == [w.address for w in workers]
    assert sum(share["layers"] for share in shown["rpc"]) == 31, "SmolLM2's 30 blocks and its output layer"
    assert all(share["bytes"] > 0 for share in shown["rpc"])


def test_losing_a_worker_mid_stream_is_an_in_band_error_and_the_daemon_stays_up(split_daemon):
    daemon, workers = split_daemon
    lines = stream_lines(daemon.url, {"model": "smol", "prompt": "Once upon a time",
                                      "options": {"temperature": 0, "num_predict": 2000}})
    assert next(lines).get("response") is not None
    workers[1].kill()
    last = list(lines)[-1]
    assert f"lost RPC worker {workers[1].address}" in last.get("error", ""), last
    with urllib.request.urlopen(daemon.url + "/", timeout=10) as response:
        assert response.status == 200, "the daemon stays up"
    again = post(daemon.url, {"model": "smol", "prompt": "Hi", "options": GREEDY})
    assert again["status"] == 500
    assert f"RPC worker {workers[1].address} is not reachable" in again["error"]


def test_a_worker_that_is_not_there_is_a_load_error_naming_it(split_daemon):
    daemon, _ = split_daemon
    missing = f"127.0.0.1:{free_port()}"
    answer = post(daemon.url, {"model": "smol", "prompt": "Hi", "options": {**GREEDY, "rpc_servers": missing}})
    assert answer["status"] == 500
    assert answer["error"].startswith(f"failed to load model: RPC worker {missing} is not reachable"), answer
