"""What every route handler needs: settings, the store, the residency scheduler and their threads."""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, TypeVar

from aiohttp import web

from llmhost.config import Settings
from llmhost.daemon.metrics import Metrics
from llmhost.daemon.residency import Residency
from llmhost.daemon.runner_client import LoadSpec
from llmhost.errors import BadRequest

T = TypeVar("T")

# Store calls are short file reads and small writes; a few threads let one slow GGUF read leave the
# others (tags, show) free. Upload writes are one bounded write at a time per upload.
STORE_THREADS = 4
UPLOAD_THREADS = 4


def _executor(threads: int, name: str) -> Callable[[], ThreadPoolExecutor]:
    return lambda: ThreadPoolExecutor(threads, thread_name_prefix=name)


@dataclass
class DaemonState:
    """The daemon's shared objects, and the executors its blocking work runs on.

    Store work has its own threads (``in_store``) and upload writes have theirs (``upload_io``), both
    apart from asyncio's default executor, so neither can be starved by the other or by anything else
    that uses ``asyncio.to_thread``. ``close`` stops them.
    """

    settings: Settings
    store: object  # llmhost.registry.store.Store
    residency: Residency
    store_io: ThreadPoolExecutor = field(default_factory=_executor(STORE_THREADS, "llmhost-store"))
    upload_io: ThreadPoolExecutor = field(default_factory=_executor(UPLOAD_THREADS, "llmhost-upload"))
    started: float = field(default_factory=time.monotonic)
    shutting_down: bool = False  # set when shutdown begins: /health answers 503
    metrics: Metrics = field(init=False)  # this daemon's registry; residency reports into it

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.residency)
        self.residency.observer = self.metrics

    async def in_store(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """``fn(*args, **kwargs)`` on the store's threads."""
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.store_io, call)

    def close(self) -> None:
        """Stop the executors: queued work is dropped, running work finishes on its own."""
        for executor in (self.store_io, self.upload_io):
            executor.shutdown(wait=False, cancel_futures=True)

    def load_spec(self, record, load: dict) -> LoadSpec:
        """The runner a request needs, from its effective load options."""
        num_ctx = int(load.get("num_ctx") or self.settings.context_length)
        if num_ctx < 1:
            raise BadRequest(f"num_ctx must be positive, got {num_ctx}")
        num_ctx = max(num_ctx, 4)  # an absurdly large one is refused by the memory estimate
        return LoadSpec(
            key=record.runner_key,
            model_path=record.model_path,
            num_ctx=num_ctx,
            parallel=self.settings.num_parallel,
            num_batch=int(load.get("num_batch") or 512),
            num_gpu=int(load.get("num_gpu", -1)),
            threads=int(load.get("num_thread") or self.settings.num_threads),
            use_mmap=bool(load.get("use_mmap", True)),
            kv_cache_type=load.get("kv_cache_type") or self.settings.kv_cache_type,
            cpu_repack=self.settings.cpu_repack,
        )


STATE_KEY = web.AppKey("state", DaemonState)


def state_of(request: web.Request) -> DaemonState:
    return request.app[STATE_KEY]
