"""Residency with real runners: supervision, eviction under a memory budget, no orphans."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path

import pytest

from tests.e2e.conftest import start_daemon, stop_daemon
from tests.support.waiting import wait_until

pytestmark = pytest.mark.model


def post(url: str, path: str, body: dict, timeout: float = 120):
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    return urllib.request.urlopen(request, timeout=timeout)


def get_json(url: str, path: str) -> dict:
    with urllib.request.urlopen(url + path, timeout=10) as response:
        return json.loads(response.read())


def create(daemon, name: str, gguf) -> None:
    modelfile = daemon.workdir / f"{name}.Modelfile"
    modelfile.write_text(f"FROM {gguf}\n")
    result = daemon.llm("create", name, "-f", str(modelfile))
    assert result.returncode == 0, result.stderr


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:  # reaped between the two looks
        return False
    return "State:\tZ" not in status


def test_runner_killed_mid_stream_gives_error_line_and_daemon_recovers(live_daemon, smollm2_path):
    create(live_daemon, "smol", smollm2_path)
    body = {"model": "smol", "prompt": "Tell me a very long story about the sea.",
            "options": {"num_predict": 400, "temperature": 0}}
    with post(live_daemon.url, "/api/generate", body) as response:
        first = json.loads(response.readline())
        assert first["done"] is False
        [runner] = live_daemon.runner_pids()
        os.kill(runner, signal.SIGKILL)
        lines = [json.loads(line) for line in response.read().splitlines() if line.strip()]
    assert "error" in lines[-1], lines[-3:]
    assert "crashed" in lines[-1]["error"] or "runner" in lines[-1]["error"]
    with post(live_daemon.url, "/api/generate", {**body, "stream": False,
                                                 "options": {"num_predict": 8}}) as response:
        answer = json.loads(response.read())
    assert answer["done"] is True and answer["response"], "the next request loads the model again"


def test_two_models_under_a_budget_that_fits_one_alternate(tmp_path, smollm2_path, gemma3_path):
    daemon = start_daemon(tmp_path / "d", LLMHOST_MAX_MEMORY="600MiB")
    try:
        create(daemon, "smol", smollm2_path)
        create(daemon, "gemma", gemma3_path)
        for name in ("smol", "gemma", "smol", "gemma"):
            with post(daemon.url, "/api/generate", {"model": name, "prompt": "Hello", "stream": False,
                                                    "options": {"num_predict": 4}}) as response:
                assert json.loads(response.read())["done"] is True
            loaded = [m["name"] for m in get_json(daemon.url, "/api/ps")["models"]]
            assert loaded == [f"{name}:latest"], f"only {name} is resident: {loaded}"
            assert len(daemon.runner_pids()) == 1
    finally:
        stop_daemon(daemon)


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_no_runner_outlives_the_daemon(tmp_path, smollm2_path, how):
    daemon = start_daemon(tmp_path / "d")
    try:
        create(daemon, "smol", smollm2_path)
        with post(daemon.url, "/api/generate", {"model": "smol", "prompt": "", "keep_alive": -1}) as response:
            assert json.loads(response.read())["done_reason"] == "load"
        assert len(daemon.runner_pids()) == 1
        runners = daemon.runner_pids(spare=True)
        daemon.proc.send_signal(how)
        daemon.proc.wait(20)
    finally:
        stop_daemon(daemon)
    wait_until(lambda: not any(alive(pid) for pid in runners), timeout=10, interval=0.1,
               what="every runner gone with the daemon")
    if how != signal.SIGKILL:
        assert not (daemon.workdir / "llmhost.sock").exists(), "a clean exit removes its socket"
    else:  # a daemon started after a crash cleans the stale socket
        again = start_daemon(daemon.workdir)
        stop_daemon(again)
