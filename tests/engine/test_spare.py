"""A spare runner (``python -m llmhost.engine.spare``) and the control lines on its stdin/stdout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.runner_process import SRC, UnixHTTPConnection


@pytest.fixture
def spare():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "llmhost.engine.spare"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        pipe.close()


def control_line(proc: subprocess.Popen) -> tuple[str, dict]:
    kind, _, payload = proc.stdout.readline().decode().strip().partition(" ")
    return kind, json.loads(payload) if payload else {}


def send_load(proc: subprocess.Popen, args: list[str]) -> None:
    proc.stdin.write(b"load " + json.dumps({"args": args}).encode() + b"\n")
    proc.stdin.flush()


def test_a_spare_announces_what_it_loaded(spare):
    kind, announcement = control_line(spare)
    assert kind == "spare" and announcement["pid"] == spare.pid
    files = announcement["files"]
    assert any("libllama" in path for path in files), "the llama.cpp build it runs"
    assert any(path.endswith(os.path.join("engine", "runner.py")) for path in files), "our own code"
    assert Path(f"/proc/{spare.pid}/comm").read_text().strip() == "llmhost-spare"


def test_a_spare_loads_the_model_it_is_sent_and_says_ready(spare, tiny_model, tmp_path):
    control_line(spare)
    socket_path = str(tmp_path / "r.sock")
    send_load(spare, ["--model", str(tiny_model), "--socket", socket_path, "--ctx-size", "256",
                      "--parallel", "1", "--threads", "1"])
    kind, health = control_line(spare)
    assert kind == "ready" and health["status"] == "ok" and health["model"] == str(tiny_model)
    assert health["memory_bytes"] > 0 and set(health["load_seconds"]) >= {"model", "context"}
    conn = UnixHTTPConnection(socket_path)  # ready means the socket answers
    conn.request("GET", "/health")
    assert json.loads(conn.getresponse().read())["n_ctx"] == 256
    conn.close()
    assert Path(f"/proc/{spare.pid}/comm").read_text().strip() == "llmhost-runner"
    spare.terminate()
    assert spare.wait(15) == 0 and not os.path.exists(socket_path)


def test_a_spare_that_cannot_load_prints_one_error_line(spare, tmp_path):
    control_line(spare)
    send_load(spare, ["--model", str(tmp_path / "nope.gguf"), "--socket", str(tmp_path / "r.sock")])
    assert spare.wait(30) == 1
    assert spare.stdout.read() == b"", "no ready line"
    assert spare.stderr.read().decode().strip() == f"error: model file not found: {tmp_path / 'nope.gguf'}"


def test_a_spare_whose_stdin_closes_exits_quietly(spare):
    control_line(spare)
    spare.stdin.close()
    assert spare.wait(15) == 0
    assert spare.stderr.read() == b""
