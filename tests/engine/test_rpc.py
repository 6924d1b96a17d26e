"""llama.cpp's RPC backend through ``engine/rpc.py``: addresses, and a real runner whose layers live
on two ``llm worker`` processes on loopback ports (SmolLM2; needs the RPC build)."""

from __future__ import annotations

import http.client

import pytest

from llmhost.engine import rpc
from tests.support.processes import free_port
from tests.support.rpc_workers import running_workers, skip_without_rpc
from tests.support.runner_process import RunnerProcess, text_of

GREEDY = {"prompt": "The capital of France is", "options": {"temperature": 0, "num_predict": 24}}

ADDRESSES = {
    "host and port": ("10.0.0.2:50052", ("10.0.0.2", 50052)),
    "a host name, spaces around": (" worker-1:7000 ", ("worker-1", 7000)),
}


@pytest.mark.parametrize("text,expected", ADDRESSES.values(), ids=ADDRESSES.keys())
def test_an_endpoint_is_host_and_port(text, expected):
    assert rpc.split_endpoint(text) == expected


BAD = {"no port": "host", "port 0": "h:0", "letters for a port": "h:x", "IPv6": "[::1]:50052", "no host": ":1"}


@pytest.mark.parametrize("text", BAD.values(), ids=BAD.keys())
def test_an_endpoint_ggml_could_not_parse_is_refused(text):
    with pytest.raises(ValueError, match="host:port"):
        rpc.split_endpoint(text)


def test_an_address_nothing_listens_on_is_named():
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(rpc.RpcError, match=f"RPC worker {address} is not reachable .*llm worker"):
        rpc.check_reachable(address)


def test_the_backend_check_agrees_with_llama_cpp():
    import llama_cpp

    assert rpc.supports_rpc() == bool(llama_cpp.llama_supports_rpc())


def test_without_the_backend_the_message_says_how_to_rebuild():
    if rpc.supports_rpc():
        pytest.skip("this llama.cpp has the RPC backend")
    with pytest.raises(rpc.RpcError, match="scripts/setup.*CMAKE_ARGS=-DGGML_RPC=ON"):
        rpc.require_rpc()


# ---- real workers --------------------------------------------------------------------------------------


@pytest.fixture
def two_workers(tmp_path):
    skip_without_rpc()
    with running_workers(2, tmp_path, "--mem", "512") as workers:
        yield workers


def test_the_probe_reports_each_workers_memory_as_capped(two_workers):
    lines: list[dict] = []
    rpc.probe([w.address for w in two_workers], lines.append)
    assert [line["server"] for line in lines] == [w.address for w in two_workers]
    for line in lines:
        (device,) = line["devices"]
        assert device["total"] == 512 * 1024**2, "--mem caps what the worker reports"
        assert 0 < device["free"] <= device["total"]


def test_a_model_split_over_two_workers_answers_as_it_does_here(smollm2_path, two_workers, tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "split").mkdir()
    with RunnerProcess(smollm2_path, tmp_path / "local") as local:
        expected = text_of(local.completion(GREEDY))
    servers = ",".join(w.address for w in two_workers)
    with RunnerProcess(smollm2_path, tmp_path / "split", extra=("--rpc", servers, "--rpc-layers", "15,16")) as split:
        health = split.health()
        got = text_of(split.completion(GREEDY))
    assert [(d["server"], d["layers"]) for d in health["rpc"]] == [(two_workers[0].address, 15),
                                                                   (two_workers[1].address, 16)]
    assert got == expected and got.strip()


def test_a_worker_that_is_not_there_is_a_load_error_naming_it(smollm2_path, two_workers, tmp_path):
    missing = f"127.0.0.1:{free_port()}"
    runner = RunnerProcess(smollm2_path, tmp_path, extra=("--rpc", f"{two_workers[0].address},{missing}"))
    with pytest.raises(RuntimeError, match="exited with 1"):
        runner.start()
    assert f"error: RPC worker {missing} is not reachable" in runner.stderr()


def test_losing_a_worker_ends_the_runner_with_a_line_naming_it(smollm2_path, two_workers, tmp_path):
    servers = ",".join(w.address for w in two_workers)
    with RunnerProcess(smollm2_path, tmp_path, extra=("--rpc", servers)) as runner:
        stream = runner.stream({"prompt": "Once upon a time", "options": {"temperature": 0, "num_predict": 2000}})
        assert "content" in next(stream)
        two_workers[1].kill()
        try:
            for _ in stream:
                pass
        except (OSError, http.client.HTTPException, ValueError):
            pass  # the connection drops mid-stream
        assert runner.proc is not None
        assert runner.proc.wait(30) != 0
    errors = [line for line in runner.stderr().splitlines() if line.startswith("error: ")]
    assert errors and f"lost RPC worker {two_workers[1].address}" in errors[-1], runner.stderr()[-2000:]
