"""The daemon's Prometheus metrics (``GET /metrics``), with a ``model`` label where one applies.

Every app has its own ``CollectorRegistry``, so daemons (and tests) in one process never mix.
Three kinds of source:

- counted as things happen: HTTP requests by route and status (``middleware``); each completion's
  prompt tokens evaluated and reused from the KV cache, generated tokens, time to first token and
  the gaps between tokens (``CompletionMeter``, fed every runner line); loads, evictions, crashes
  and admission refusals (residency reports them: ``ResidencyObserver``);
- read when scraped: loaded models, resident bytes against the budget, admitted requests
  (residency), bytes pulled (the downloader), and each runner's engine from its ``/health``
  (``refresh_health`` asks first, with a short timeout): running and waiting sequences, KV cells,
  and its swaps, preemptions and context shifts since the runner started (so they restart with a
  new runner, which Prometheus' ``rate``/``increase`` take as a counter reset);
- the daemon process itself (``process_*``).

Model labels are names of installed models (a request for an unknown one fails before it is
counted), so a client cannot grow the label sets; methods and routes are a fixed set too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from llmhost import __version__
from llmhost.api.responses import ModelUsage
from llmhost.api.types import JsonObject
from llmhost.daemon.residency import Residency, ResidencyObserver, Resident, ResidentView
from llmhost.daemon.runner_client import Runner

if TYPE_CHECKING:
    from llmhost.registry.download import Downloads

# Seconds. Time to first token includes a cold load; inter-token gaps are milliseconds on a CPU.
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
HEALTH_TIMEOUT = 0.5  # a runner busy beyond this at scrape time keeps its previous numbers
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

# Runner engine counters (docs/runner-protocol.md, /health "engine") → metric name, help.
_ENGINE_GAUGES = {
    "running": ("llmhost_running_sequences", "Sequences holding a slot in the runner"),
    "waiting": ("llmhost_waiting_sequences", "Sequences queued in the runner (swapped ones included)"),
    "swapped": ("llmhost_swapped_sequences", "Sequences swapped out to host memory"),
    "kv_cells_used": ("llmhost_kv_cells_used", "KV cache cells in use (cached prefixes included)"),
    "kv_cells": ("llmhost_kv_cells", "KV cache cells in the runner's pool"),
    "parked_bytes": ("llmhost_parked_prompt_bytes", "Host memory of cached prompts parked out of the KV cache"),
    "parked_prompts": ("llmhost_parked_prompts", "Cached prompts parked out of the KV cache in host memory"),
}
_ENGINE_COUNTERS = {
    "swapped_out_total": ("llmhost_swap_outs", "Sequences swapped out of the KV cache (since the runner started)"),
    "swapped_in_total": ("llmhost_swap_ins", "Swapped sequences copied back (since the runner started)"),
    "preempted_total": ("llmhost_preemptions",
                        "Swap-outs made for a higher-priority request (since the runner started)"),
    "context_shifts": ("llmhost_context_shifts", "Context shifts of full sequences (since the runner started)"),
    "evicted_total": ("llmhost_prefix_evictions",
                      "Idle cached prefixes dropped to make room (since the runner started)"),
    "parked_total": ("llmhost_prompts_parked",
                     "Idle cached prompts moved out of the KV cache to host memory (since the runner started)"),
    "parked_restored_total": ("llmhost_parked_prompts_restored",
                              "Parked prompts copied back for a request that continued them (since the runner started)"),
    "parked_dropped_total": ("llmhost_parked_prompts_dropped",
                             "Parked prompts dropped for LLMHOST_KV_HOST_CACHE's budget (since the runner started)"),
    "draft_tokens": ("llmhost_draft_tokens",
                     "Speculative draft tokens verified (draft_num_predict; since the runner started)"),
    "draft_accepted": ("llmhost_draft_tokens_accepted",
                       "Speculative draft tokens accepted, each a token generated without a step of its own"),
}


class Metrics(ResidencyObserver):
    """The daemon's registry and the instruments the request path feeds."""

    def __init__(self, residency: Residency, downloads: Downloads | None = None):
        from llmhost.registry.download import DOWNLOADS

        self.registry = CollectorRegistry()
        self._residency = residency
        self._downloads = downloads or DOWNLOADS
        r = self.registry
        self.requests = Counter("llmhost_requests", "HTTP requests answered, by route and status",
                                ["method", "route", "status"], registry=r)
        self.prompt_evaluated = Counter("llmhost_prompt_tokens_evaluated", "Prompt tokens the model evaluated",
                                        ["model"], registry=r)
        self.prompt_cached = Counter("llmhost_prompt_tokens_cached",
                                     "Prompt tokens reused from the KV cache instead of evaluated", ["model"], registry=r)
        self.generated = Counter("llmhost_generated_tokens", "Tokens generated", ["model"], registry=r)
        self.completions = Counter("llmhost_completions", "Completions ended, by done_reason (error: ended by an error)",
                                   ["model", "reason"], registry=r)
        self.ttft = Histogram("llmhost_time_to_first_token_seconds",
                              "From a completion's start (a load included) to its first generated token",
                              ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("llmhost_inter_token_latency_seconds", "Gap between consecutive generated tokens",
                             ["model"], buckets=ITL_BUCKETS, registry=r)
        self.loads = Counter("llmhost_model_loads", "Runners started for a model", ["model"], registry=r)
        self.load_seconds = Histogram("llmhost_model_load_duration_seconds", "Time to start a runner and load the model",
                                      ["model"], buckets=LOAD_BUCKETS, registry=r)
        self.evictions = Counter("llmhost_model_evictions", "Idle models unloaded to make room for another",
                                 ["model"], registry=r)
        self.crashes = Counter("llmhost_runner_crashes", "Runners that exited on their own", ["model"], registry=r)
        self.restarts = Counter("llmhost_runner_restarts", "Models loaded again after their runner crashed",
                                ["model"], registry=r)
        self.rejections = Counter("llmhost_requests_rejected",
                                  "Requests refused (503) because the model's running and waiting places were full",
                                  ["model"], registry=r)
        ProcessCollector(registry=r)
        r.register(_Scraped(self))

    # ---- residency reports -------------------------------------------------------------------

    def loaded(self, name: str, seconds: float) -> None:
        self.loads.labels(name).inc()
        self.load_seconds.labels(name).observe(seconds)

    def evicted(self, name: str) -> None:
        self.evictions.labels(name).inc()

    def crashed(self, name: str) -> None:
        self.crashes.labels(name).inc()

    def restarted(self, name: str) -> None:
        self.restarts.labels(name).inc()

    def rejected(self, name: str) -> None:
        self.rejections.labels(name).inc()

    # ---- completions and requests ------------------------------------------------------------

    def completion(self, model: str, started: float) -> CompletionMeter:
        """A meter for one completion of ``model`` that started at ``started`` (time.monotonic)."""
        return CompletionMeter(self, model, started)

    def finished(self, model: str, final: JsonObject) -> None:
        """The runner's own final line: evaluated and cached prompt tokens are separate there."""
        self.prompt_evaluated.labels(model).inc(final.get("prompt_eval_count", 0))
        self.prompt_cached.labels(model).inc(final.get("prompt_cached_count", 0))
        self.generated.labels(model).inc(final.get("eval_count", 0))
        self.completions.labels(model, str(final.get("done_reason") or "stop")).inc()

    def middleware(self) -> Middleware:
        """Counts every answered request by method, route template and status (499: client gone)."""

        @web.middleware
        async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
            status = 500
            try:
                response = await handler(request)
                status = response.status
                return response
            except web.HTTPException as e:
                status = e.status
                raise
            except asyncio.CancelledError:
                status = 499
                raise
            finally:
                method = request.method if request.method in _METHODS else "other"
                self.requests.labels(method, _route(request), str(status)).inc()

        return count_requests


class CompletionMeter:
    """One completion's runner lines → time to first token, inter-token gaps, and the final counts.

    Called for every line, so it does little: a clock read and one histogram observation per token.
    """

    __slots__ = ("_itl", "_last", "_metrics", "_model", "_started", "_ttft")

    def __init__(self, metrics: Metrics, model: str, started: float):
        self._metrics, self._model, self._started = metrics, model, started
        self._ttft = metrics.ttft.labels(model)
        self._itl = metrics.itl.labels(model)
        self._last: float | None = None

    def line(self, line: JsonObject) -> None:
        if "content" in line or "thinking" in line or "tool_calls" in line:
            now = time.monotonic()
            if self._last is None:
                self._ttft.observe(now - self._started)
            else:
                self._itl.observe(now - self._last)
            self._last = now
        elif line.get("done"):
            self._metrics.finished(self._model, line)

    def failed(self) -> None:
        """The completion ended with an error (an error line, or the runner failed)."""
        self._metrics.completions.labels(self._model, "error").inc()


async def refresh_health(residents: Iterable[Resident], timeout: float = HEALTH_TIMEOUT) -> None:
    """Ask every resident's runner for its ``/health`` now (a runner keeps its last answer as
    ``last_health``); one that does not answer within ``timeout`` keeps the previous answer."""

    async def ask(runner: Runner) -> None:
        with contextlib.suppress(Exception):  # busy, gone or dying: the watchdog deals with that
            await asyncio.wait_for(runner.health(), timeout)

    await asyncio.gather(*(ask(r.runner) for r in residents))


def usage(view: ResidentView) -> ModelUsage:
    """How a loaded model is used (llmhost's fields in /api/ps), from its runner's last ``/health``:
    parallel slots, slots in use, queue depth, and the share of prompt tokens the KV cache supplied
    since the runner started (None before any prompt)."""
    engine, parallel = view.engine, view.parallel
    evaluated, cached = engine.get("prompt_tokens", 0), engine.get("cached_tokens", 0)
    return {
        "parallel": parallel,
        "slots_in_use": engine.get("running", min(view.leases, parallel)),
        "queue_depth": engine.get("waiting", max(0, view.leases - parallel)),
        "cache_hit_rate": round(cached / (evaluated + cached), 4) if evaluated + cached else None,
    }


class _Scraped:
    """Numbers read when scraped: residency's books, the downloader's bytes, runners' engines."""

    def __init__(self, metrics: Metrics):
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        residency = self._metrics._residency
        residents = residency.views()
        info = GaugeMetricFamily("llmhost_build_info", "The running llmhost version", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield GaugeMetricFamily("llmhost_loaded_models", "Models loaded now", value=len(residents))
        yield GaugeMetricFamily("llmhost_memory_budget_bytes", "Memory budget for loaded models (LLMHOST_MAX_MEMORY)",
                                value=residency.memory_budget)
        yield _per_model(GaugeMetricFamily, "llmhost_resident_bytes", "Memory held by a model's runner",
                         ((r.name, r.memory) for r in residents))
        admissions = residency.admissions()
        yield _per_model(GaugeMetricFamily, "llmhost_requests_admitted",
                         "Requests admitted for a model and not finished (running or waiting)",
                         ((a.name, a.count) for a in admissions))
        yield _per_model(GaugeMetricFamily, "llmhost_requests_queued",
                         "Admitted requests beyond the model's parallel slots (waiting for a load or a slot)",
                         ((a.name, a.waiting) for a in admissions))
        yield CounterMetricFamily("llmhost_pull_bytes", "Bytes received from model sources by pulls",
                                  value=self._metrics._downloads.received)
        stats = [(r.name, r.engine) for r in residents]
        for key, (name, help_text) in _ENGINE_GAUGES.items():
            yield _per_model(GaugeMetricFamily, name, help_text, ((m, s[key]) for m, s in stats if key in s))
        for key, (name, help_text) in _ENGINE_COUNTERS.items():
            yield _per_model(CounterMetricFamily, name, help_text, ((m, s[key]) for m, s in stats if key in s))


def _per_model(kind: type[GaugeMetricFamily] | type[CounterMetricFamily], name: str, help_text: str,
               values: Iterable[tuple[str, float]]) -> Metric:
    """One family with a sample per model (summed: two runners of one model give one sample)."""
    totals: dict[str, float] = defaultdict(float)
    for model, value in values:
        totals[model] += value
    family = kind(name, help_text, labels=["model"])
    for model, value in sorted(totals.items()):
        family.add_metric([model], value)
    return family


def _route(request: web.Request) -> str:
    """The matched route's template (``/api/blobs/{digest}``), never the raw path."""
    resource = request.match_info.route.resource
    return getattr(resource, "canonical", None) or "unmatched"
