"""Background tasks with an owner: kept referenced, failures logged, cancelled together.

asyncio keeps only a weak reference to a task, so a task nobody holds may vanish mid-run, and an
exception in one nobody awaits is reported (if ever) when it is garbage-collected. Whatever starts
work it does not await (residency's unloads and runner watches, the spare's start, a runner's pipe
readers) spawns it on a ``Tasks`` it owns and closes that with itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class Tasks:
    """The background tasks of one owner (like ``asyncio.TaskGroup``, but never waited for as a block).

    ``spawn`` starts a task and holds it until it ends; an exception other than cancellation is
    logged with the task's name. ``aclose`` cancels every task still running and waits for them;
    a task spawned after that is cancelled before it runs.
    """

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(self, coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        if self._closed:
            task.cancel()  # not started yet: the coroutine never runs
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def __len__(self) -> int:
        """Tasks still running."""
        return len(self._tasks)

    async def aclose(self) -> None:
        """Cancel every task and wait until all have ended (their exceptions are logged, not raised)."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
