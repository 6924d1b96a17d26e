"""``scripts/bench cli``: how long ``llm list`` takes as a whole process against a running daemon,
beside the floor of what it must import (Python with typer and ``http.client``) and bare Python.

The three commands run in turn, ``BENCH_CLI_RUNS`` times each (default 20) after a warm-up; medians.
With bytecode caches, as an installed ``llm`` has them: ``PYTHONDONTWRITEBYTECODE`` (which some
environments set) is dropped and the caches go to a temporary ``PYTHONPYCACHEPREFIX``, so the
warm-up writes them and the source tree stays clean; without them every start compiles llmhost's
modules again (about 30 ms here).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import daemon

RUNS = int(os.environ.get("BENCH_CLI_RUNS", "20"))
LLM = str(Path(sys.executable).with_name("llm"))


def _wall(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def cli() -> dict[str, Any]:
    commands = {
        "llm_list": [LLM, "list"],
        "import_floor": [sys.executable, "-c", "import typer, http.client"],
        "python": [sys.executable, "-c", "pass"],
    }
    with daemon() as live, tempfile.TemporaryDirectory(prefix="llmhost-pycache-") as pycache:
        env = {**os.environ, **live.env, "PYTHONPYCACHEPREFIX": pycache}
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        times: dict[str, list[float]] = {name: [] for name in commands}
        for argv in commands.values():
            _wall(argv, env)  # warm-up: the page cache, the daemon's first answer
        for _ in range(RUNS):
            for name, argv in commands.items():
                times[name].append(_wall(argv, env))
    out: dict[str, Any] = {f"{name}_ms": statistics.median(t) * 1000 for name, t in times.items()}
    out["llm_list_over_floor_ms"] = out["llm_list_ms"] - out["import_floor_ms"]
    out["runs"] = RUNS
    return out
