"""The owner of background tasks: held until done, failures logged, all cancelled on close."""

from __future__ import annotations

import asyncio
import gc
import logging

from llmhost.daemon.tasks import Tasks


async def test_a_spawned_task_runs_to_the_end_though_nobody_holds_it():
    tasks = Tasks()
    finished = asyncio.Event()

    async def work():
        await asyncio.sleep(0.01)
        gc.collect()  # asyncio itself holds tasks weakly
        finished.set()

    tasks.spawn(work(), "work")
    gc.collect()
    await asyncio.wait_for(finished.wait(), 1)
    await asyncio.sleep(0)
    assert len(tasks) == 0


async def test_a_failure_is_logged_with_the_tasks_name(caplog):
    tasks = Tasks()

    async def broken():
        raise ValueError("boom")

    with caplog.at_level(logging.ERROR, logger="llmhost.daemon.tasks"):
        task = tasks.spawn(broken(), "unload tiny")
        await asyncio.wait([task])
        await asyncio.sleep(0)
    assert "background task unload tiny failed" in caplog.text and "boom" in caplog.text


async def test_aclose_cancels_every_task_and_waits_for_its_clean_up():
    tasks = Tasks()
    cleaned = []

    async def forever(i: int):
        try:
            await asyncio.sleep(3600)
        finally:
            cleaned.append(i)

    for i in range(3):
        tasks.spawn(forever(i), f"forever {i}")
    await asyncio.sleep(0)
    await tasks.aclose()
    assert sorted(cleaned) == [0, 1, 2] and len(tasks) == 0


async def test_a_task_spawned_after_close_never_runs():
    tasks = Tasks()
    await tasks.aclose()
    ran = []

    async def late():
        ran.append(True)

    task = tasks.spawn(late(), "late")
    await asyncio.wait([task])
    assert task.cancelled() and ran == []
