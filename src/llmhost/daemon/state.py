"""What every route handler needs: settings, the store, the residency scheduler and their threads."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

from aiohttp import web

from llmhost.api.options import load_option
from llmhost.config import Settings
from llmhost.daemon.metrics import Metrics
from llmhost.daemon.residency import Residency
from llmhost.daemon.runner_client import LoadSpec
from llmhost.errors import BadRequest, InvalidOption
from llmhost.registry.store import Store

if TYPE_CHECKING:
    from llmhost.registry.record import ModelRecord

T = TypeVar("T")
P = ParamSpec("P")
log = logging.getLogger(__name__)

# Store calls are short file reads and small writes; a few threads let one slow GGUF read leave the
# others (tags, show) free. Upload writes are one bounded write at a time per upload.
STORE_THREADS = 4
UPLOAD_THREADS = 4
VISION_MIN_CTX = 2048  # Ollama's floor for a model with a projector: one image alone takes hundreds of tokens


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
    store: Store
    residency: Residency
    store_io: ThreadPoolExecutor = field(default_factory=_executor(STORE_THREADS, "llmhost-store"))
    upload_io: ThreadPoolExecutor = field(default_factory=_executor(UPLOAD_THREADS, "llmhost-upload"))
    started: float = field(default_factory=time.monotonic)
    shutting_down: bool = False  # set when shutdown begins: /health answers 503
    metrics: Metrics = field(init=False)  # this daemon's registry; residency reports into it

    def __post_init__(self) -> None:
        self.metrics = Metrics(self.residency)
        self.residency.observer = self.metrics

    async def in_store(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` on the store's threads."""
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self.store_io, call)

    def close(self) -> None:
        """Stop the executors: queued work is dropped, running work finishes on its own."""
        for executor in (self.store_io, self.upload_io):
            executor.shutdown(wait=False, cancel_futures=True)

    def load_spec(self, record: ModelRecord, load: dict[str, Any]) -> LoadSpec:
        """The runner a request needs, from its effective load options (defaults: api.option_table)."""
        option = functools.partial(load_option, load, settings=self.settings)
        num_ctx = int(option("num_ctx"))
        if num_ctx < 1:
            raise BadRequest(f"num_ctx must be positive, got {num_ctx}")
        num_ctx = max(num_ctx, 4)  # an absurdly large one is refused by the memory estimate
        if record.projector_path is not None:
            num_ctx = max(num_ctx, VISION_MIN_CTX)
        return LoadSpec(
            key=record.runner_key,
            model_path=record.model_path,
            num_ctx=num_ctx,
            parallel=self.settings.num_parallel,
            num_batch=int(option("num_batch")),
            num_gpu=int(option("num_gpu")),
            main_gpu=int(option("main_gpu")),
            threads=int(option("num_thread")),
            use_mmap=bool(option("use_mmap")),
            kv_cache_type=_kv_cache_type(option("kv_cache_type"), self.settings.flash_attention),
            cpu_repack=self.settings.cpu_repack,
            flash_attention=self.settings.flash_attention,
            kv_host_cache=self.settings.kv_host_cache,
            projector=record.projector_path,
            rpc_servers=_rpc_servers(option("rpc_servers")),
        )


def _kv_cache_type(kv_cache_type: str, flash_attention: str) -> str:
    """The KV cache type a runner gets: llama.cpp reads a quantized cache only with flash attention,
    so with LLMHOST_FLASH_ATTENTION=off it falls back to f16, as Ollama does."""
    if flash_attention == "off" and kv_cache_type != "f16":
        log.warning("kv_cache_type %s needs flash attention, which LLMHOST_FLASH_ATTENTION turns off: "
                    "using f16", kv_cache_type)
        return "f16"
    return kv_cache_type


def _rpc_servers(value: str | tuple[str, ...]) -> tuple[str, ...]:
    """The option's workers: LLMHOST_RPC_SERVERS's (parsed when the daemon started) or a request's
    or Modelfile's ``host:port,...`` (an empty one: none, whatever the setting says)."""
    if isinstance(value, tuple):
        return value
    from llmhost.engine.rpc import parse_servers  # stdlib only

    try:
        return parse_servers(value)
    except ValueError as e:
        raise InvalidOption(f'option "rpc_servers": {e}') from None


STATE_KEY = web.AppKey("state", DaemonState)


def state_of(request: web.Request) -> DaemonState:
    return request.app[STATE_KEY]
