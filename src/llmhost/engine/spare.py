"""``python -m llmhost.engine.spare``: a runner process that imports everything, then waits for a model.

The daemon keeps one of these so that a cold start skips Python's start-up and imports (~0.3 s of
CPU). It is started when the previous spare is handed a model, so it imports while that model
loads. llama.cpp's compute threads spin at barriers and suffer from any competition for a CPU: a
spare importing at normal priority slowed a concurrent 12-token prompt evaluation (2 CPUs) from
~30 ms to 0.4–1.5 s. So the imports run at idle priority (``SCHED_IDLE``), and the daemon also
stops the process while requests are served (at idle priority it still cost ~40 ms there).

Only the importing thread is demoted (Linux scheduling attributes are per thread): the main thread,
and so the engine and llama.cpp threads it starts later, keep normal priority, which an unprivileged
process could not restore once it had given it up.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from llmhost.engine import control


def _import_runner() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))  # this thread only
    except (AttributeError, OSError):
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        except (AttributeError, OSError):
            pass
    import llmhost.engine.runner  # noqa: F401  (the heavy part: llama_cpp, numpy, aiohttp, jinja2)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llmhost.engine.spare", description=__doc__.splitlines()[0])
    p.add_argument("--parent-pid", type=int, default=None, help="the daemon's pid: exit with it")
    args = p.parse_args(argv)
    # First, before the slow imports. SIGKILL: the daemon stops (SIGSTOP) a spare that is still
    # importing while requests run, and a stopped process would keep a SIGTERM pending forever.
    control.die_with_parent(signal.SIGKILL, args.parent_pid)
    control.set_process_name("llmhost-spare")  # from the start: the imports take a while
    importer = threading.Thread(target=_import_runner, name="llmhost-import")
    importer.start()
    importer.join()
    from llmhost.engine import runner

    return runner.main(["--spare"])


if __name__ == "__main__":
    sys.exit(main())
