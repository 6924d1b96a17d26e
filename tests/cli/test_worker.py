"""``llm worker``: llama.cpp's RPC server on this machine, loopback unless told otherwise, with a warning."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from llmhost.engine.rpc import supports_rpc
from tests.support.processes import free_port
from tests.support.rpc_workers import skip_without_rpc, start_worker


def llm(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llmhost.cli.app", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_lists_its_options_and_says_it_is_unauthenticated():
    result = llm("worker", "--help")
    assert result.returncode == 0
    for option in ("--host", "--port", "--mem", "--threads"):
        assert option in result.stdout
    assert "trusted networks only" in " ".join(result.stdout.split())


def test_without_the_rpc_backend_it_says_how_to_rebuild():
    if supports_rpc():
        pytest.skip("this llama.cpp has the RPC backend")
    result = llm("worker", "--port", str(free_port()))
    assert result.returncode == 1
    assert "scripts/setup" in result.stderr and "-DGGML_RPC=ON" in result.stderr


def test_it_listens_on_loopback_by_default_and_warns_loudly(tmp_path):
    skip_without_rpc()
    worker = start_worker(tmp_path / "worker.log", "--mem", "64")
    try:
        host, port = worker.address.split(":")
        assert host == "127.0.0.1"
        listening = [line for line in Path(f"/proc/{worker.proc.pid}/net/tcp").read_text().splitlines()[1:]
                     if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == int(port)]
        assert [line.split()[1].split(":")[0] for line in listening] == ["0100007F"], "bound to 127.0.0.1 only"
        assert "no authentication" in worker.output()
    finally:
        worker.kill()


def test_a_port_in_use_is_a_clear_error(tmp_path):
    skip_without_rpc()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = llm("worker", "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
