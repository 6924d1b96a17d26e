"""Starting the daemon in the background when no daemon answers (Ollama's checkServerHeartbeat, but
it starts the daemon instead of failing).

The daemon runs as ``python -m llmhost.cli.app serve`` in its own session, so a Ctrl+C in the
terminal that started it does not stop it; its output goes to a log file the user can read.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from llmhost.api.client import Client
from llmhost.errors import DaemonUnreachable

DAEMON_ARGV: tuple[str, ...] = (sys.executable, "-m", "llmhost.cli.app", "serve")
START_TIMEOUT = 15.0


def log_path() -> Path:
    """Where a daemon started by the CLI writes its output."""
    import platformdirs

    return Path(platformdirs.user_log_dir("llmhost")) / "daemon.log"


def ensure_daemon(
    client: Client,
    *,
    autostart: bool = True,
    argv: Sequence[str] | None = None,
    log: Path | None = None,
    timeout: float = START_TIMEOUT,
) -> subprocess.Popen | None:
    """Return once a daemon answers; start one if needed. Returns the process it started, if any."""
    try:
        client.heartbeat()
        return None
    except DaemonUnreachable as e:
        if not autostart:
            raise DaemonUnreachable(f"{e} (is `llm serve` running?)") from None
    log = log or log_path()
    process = start_daemon(argv or DAEMON_ARGV, log)
    wait_for_daemon(client, process, log, timeout)
    return process


def start_daemon(argv: Sequence[str], log: Path) -> subprocess.Popen:
    """Spawn the daemon detached from this terminal, its output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )


def wait_for_daemon(client: Client, process: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.heartbeat(timeout=1.0)
            return
        except DaemonUnreachable:
            pass
        code = process.poll()
        if code is not None:
            # another CLI may have started a daemon at the same moment; ours then lost the race
            if _answers(client):
                return
            raise DaemonUnreachable(f"the llmhost daemon exited with status {code} while starting; see {log}")
        if time.monotonic() >= deadline:
            raise DaemonUnreachable(f"the llmhost daemon did not answer within {timeout:.0f}s; see {log}")
        time.sleep(0.1)


def _answers(client: Client) -> bool:
    try:
        client.heartbeat(timeout=1.0)
        return True
    except DaemonUnreachable:
        return False
