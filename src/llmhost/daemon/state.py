"""What every route handler needs: settings, the store and the residency scheduler."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from llmhost.config import Settings
from llmhost.daemon.residency import Residency
from llmhost.daemon.runners import LoadSpec
from llmhost.errors import BadRequest


@dataclass
class DaemonState:
    settings: Settings
    store: object  # llmhost.registry.store.Store
    residency: Residency

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
        )


STATE_KEY = web.AppKey("state", DaemonState)


def state_of(request: web.Request) -> DaemonState:
    return request.app[STATE_KEY]
