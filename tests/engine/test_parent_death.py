"""A spare or runner never outlives the daemon that started it, even one that died before it could ask."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_gone(pid: int, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("command, dies_by", [
    pytest.param(["-m", "llmhost.engine.spare"], -signal.SIGKILL, id="spare"),
    pytest.param(["-m", "llmhost.engine.runner", "--model", "/nonexistent.gguf", "--socket", "/nonexistent.sock"],
                 -signal.SIGTERM, id="runner"),
])
def test_a_process_whose_daemon_is_already_gone_exits_at_once(command, dies_by):
    # Our pid is not its parent's: as if the daemon had died and it had been re-parented.
    not_the_parent = os.getppid()
    proc = subprocess.run([sys.executable, *command, "--parent-pid", str(not_the_parent)],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    assert proc.returncode == dies_by and proc.stdout == b""


def test_a_spare_dies_with_its_daemon():
    # A stand-in daemon starts a spare, says its pid, and is then killed.
    with subprocess.Popen(
        [sys.executable, "-c",
         "import os, subprocess, sys, time\n"
         "p = subprocess.Popen([sys.executable, '-m', 'llmhost.engine.spare', '--parent-pid', str(os.getpid())],"
         " stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)\n"
         "print(p.pid, flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE) as daemon:
        try:
            spare_pid = int(daemon.stdout.readline())
            assert alive(spare_pid)
        finally:
            daemon.kill()
    assert wait_gone(spare_pid), "the spare outlived its daemon"
