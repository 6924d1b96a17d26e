"""The runner's control lines: a few JSON lines on stdin/stdout between the daemon and a runner.

    runner → daemon (stdout)   spare {"pid": N, "files": {path: [mtime_ns, size], ...}}
    daemon → runner (stdin)    load {"args": ["--model", PATH, "--socket", PATH, ...]}
    runner → daemon (stdout)   ready {health}

A spare (``--spare``) imports everything a runner needs, announces itself and waits for its load
line, so a cold start skips Python's start-up and imports. ``files`` lets the daemon refuse a spare
whose code or llama.cpp build changed on disk since it started. ``ready`` comes once the socket
answers, with what ``/health`` would say, so the daemon needs no polling. stdout carries nothing
else; errors stay on stderr (``error: <message>``). See docs/runner-protocol.md.

Also here: the process's name (``llmhost-spare`` / ``llmhost-runner`` in ps and /proc/PID/comm)
and its parent-death signal, both set with prctl; this module stays light for ``engine.spare``.
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
from typing import Any

_PACKAGES = ("llmhost", "llama_cpp")  # our code and the llama.cpp build: what an upgrade changes


def identity() -> dict[str, Any]:
    """What this process has loaded: the interpreter, shared libraries and the packages' modules.

    The daemon re-stats these files before handing a spare a model; a change means the spare runs
    code that a freshly started runner would not.
    """
    paths = {os.path.realpath(sys.executable)}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if path and name.split(".")[0] in _PACKAGES:
            paths.add(path)
    paths.update(_shared_libraries())
    files = {}
    for path in sorted(paths):
        try:
            st = os.stat(path)
        except OSError:
            continue
        files[path] = [st.st_mtime_ns, st.st_size]
    return {"pid": os.getpid(), "files": files}


def _shared_libraries() -> list[str]:
    """The llama.cpp libraries mapped into this process (libllama, libggml*), from /proc."""
    libraries = set()
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                fields = line.split(None, 5)  # address perms offset dev inode [path]
                if len(fields) == 6 and ("/libllama" in fields[5] or "/libggml" in fields[5]):
                    libraries.add(fields[5].strip())
    except OSError:
        pass
    return sorted(libraries)


def announce(kind: str, payload: dict[str, Any]) -> None:
    """Write one ``kind {json}`` line to stdout; a daemon that stopped listening is not an error."""
    line = f"{kind} {json.dumps(payload, separators=(',', ':'))}\n".encode()
    try:
        os.write(sys.stdout.fileno(), line)
    except (OSError, ValueError):  # closed pipe or no stdout at all
        pass


def wait_for_load() -> list[str] | None:
    """Block until the daemon sends ``load {"args": [...]}``; None when stdin closes first."""
    for raw in sys.stdin.buffer:
        kind, _, payload = raw.decode("utf-8", errors="replace").strip().partition(" ")
        if kind != "load":
            continue
        args = json.loads(payload).get("args")
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ValueError(f"malformed load line: {raw[:200]!r}")
        return args
    return None


_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def set_process_name(name: str) -> None:
    """The name ps and /proc/PID/comm show (15 bytes at most): tells a spare from a runner."""
    _prctl(_PR_SET_NAME, name.encode()[:15])


def die_with_parent(sig: int, parent_pid: int | None) -> None:
    """Linux: get ``sig`` when the parent (the daemon, ``parent_pid``) exits, so no runner outlives it.

    A parent that died before this call never signals: then we are no longer its child, and
    ``sig`` comes at once. None: no parent to check (started by hand).
    """
    _prctl(_PR_SET_PDEATHSIG, sig)
    if parent_pid is not None and os.getppid() != parent_pid:
        os.kill(os.getpid(), sig)


def _prctl(option: int, value) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value)
    except (OSError, AttributeError):  # not Linux
        pass
