"""Wait for something to become true, with a deadline: what tests synchronise on instead of sleeping.

    await eventually(lambda: residency.residents() == [], what="the crashed runner forgotten")
    wait_until(lambda: not runner.health()["engine"]["running"], timeout=30)

Both poll ``condition`` (at once, then every ``interval`` seconds) and raise AssertionError naming
``what`` if it is still false after ``timeout`` seconds. A sleep stays only where time itself is
what the test is about (a stalled upload, a window in which nothing may happen).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

TIMEOUT = 5.0
INTERVAL = 0.01


async def eventually(condition: Callable[[], Any], *, timeout: float = TIMEOUT, interval: float = INTERVAL,
                     what: str = "the condition") -> None:
    """Let the event loop run until ``condition()`` is true (async tests)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(interval)


def wait_until(condition: Callable[[], Any], *, timeout: float = TIMEOUT, interval: float = INTERVAL,
               what: str = "the condition") -> None:
    """Block until ``condition()`` is true (threads, processes)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        time.sleep(interval)
