"""A fake runner and factory for daemon tests: canned output, declared memory, observable lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmhost.daemon.runner_client import LoadSpec, Placement, requested_placement
from llmhost.errors import RunnerError


def spec(key: str = "sha256:" + "a" * 64, num_ctx: int = 2048, **kw) -> LoadSpec:
    values = dict(key=key, model_path=Path("/nonexistent"), num_ctx=num_ctx, parallel=1, num_batch=512,
                  num_gpu=-1, threads=1)
    values.update(kw)
    return LoadSpec(**values)


class FakeRunner:
    def __init__(self, spec: LoadSpec, memory_bytes: int, words: list, gate: asyncio.Event | None,
                 gate_at: int = 1):
        self.spec = spec
        self.memory_bytes = memory_bytes
        self.vram_bytes = 0  # set by the factory, as ProcessRunnerFactory sets it
        self.placement = Placement()
        self.words = words
        self.gate = gate
        self.gate_at = gate_at  # the gate holds back the line of this index
        self.closed = False
        self.bodies: list[dict] = []
        self.cached = 0  # prompt tokens the final line reports as reused from the KV cache
        self.active = 0  # completions streaming now (the fake runs them all at once)
        self.totals = {"prompt_tokens": 0, "cached_tokens": 0, "generated_tokens": 0}
        self.last_health: dict = {}
        self._exited: asyncio.Future = asyncio.get_running_loop().create_future()

    async def completion(self, body: dict):
        self.active += 1
        try:
            async with contextlib.aclosing(self._lines(body)) as lines:
                async for line in lines:
                    yield line
        finally:
            self.active -= 1

    async def _lines(self, body: dict):
        self.bodies.append(body)
        for i, word in enumerate(self.words):
            if self._exited.done():
                raise RunnerError("model runner crashed (signal 9)")
            if self.gate is not None and i == self.gate_at:
                await self.gate.wait()
            if isinstance(word, Exception):  # an exception: the runner's stream fails here
                raise word
            yield word if isinstance(word, dict) else {"content": word}  # a dict: a whole runner line
            await asyncio.sleep(0)
        if self._exited.done():
            raise RunnerError("model runner crashed (signal 9)")
        self.totals["prompt_tokens"] += 5
        self.totals["cached_tokens"] += self.cached
        self.totals["generated_tokens"] += len(self.words)
        yield {"done": True, "done_reason": "stop", "prompt_eval_count": 5, "prompt_cached_count": self.cached,
               "prompt_eval_duration": 1000, "eval_count": len(self.words), "eval_duration": 2000,
               **({"context": [1, 2, 3]} if body.get("return_context") else {})}

    async def health(self) -> dict:
        """The runner's /health, its engine shaped as a real one's (docs/runner-protocol.md)."""
        running = min(self.active, self.spec.parallel)
        engine = {"running": running, "waiting": self.active - running, "swapped": 0, "kv_cells": 1024,
                  "kv_cells_used": 5 * self.active, "swapped_out_total": 0, "swapped_in_total": 0,
                  "preempted_total": 0, "context_shifts": 0, "evicted_total": 0, "parked_bytes": 2048,
                  "parked_prompts": 1, "parked_total": 3, "parked_restored_total": 2, "parked_dropped_total": 0,
                  **self.totals}
        self.last_health = {"status": "ok", "parallel": self.spec.parallel, "memory_bytes": self.memory_bytes,
                            "engine": engine}
        return self.last_health

    async def tokenize(self, body: dict) -> dict:
        """One token per character: its code point."""
        return {"tokens": [ord(c) for c in body["content"]]}

    async def detokenize(self, body: dict) -> dict:
        result = {"content": "".join(chr(t) for t in body["tokens"])}
        if body.get("pieces"):
            result["pieces"] = [chr(t) for t in body["tokens"]]
        return result

    async def embed(self, body: dict) -> dict:
        return {"embeddings": [[0.6, 0.8, 0.0] for _ in body["input"]], "prompt_eval_count": 3}

    async def rerank(self, body: dict) -> dict:
        """Score: the share of the query's words in the document (so relevance is easy to predict)."""
        self.bodies.append(body)
        words = set(re.findall(r"\w+", body["query"].lower()))
        scores = [len(words & set(re.findall(r"\w+", d.lower()))) / max(len(words), 1) for d in body["documents"]]
        return {"scores": scores, "prompt_eval_count": 4 * len(scores)}

    def crash(self) -> None:
        if not self._exited.done():
            self._exited.set_result(-9)

    async def close(self) -> None:
        self.closed = True
        if not self._exited.done():
            self._exited.set_result(0)

    async def wait_exited(self) -> int:
        return await self._exited


@dataclass
class FakeFactory:
    """Starts FakeRunners; ``memory`` maps a model key to the bytes its runner declares."""

    memory: dict[str, int] = field(default_factory=dict)
    words: list = field(default_factory=lambda: ["Hello", ",", " world"])  # str: content; dict: a raw line
    gate: asyncio.Event | None = None
    gate_at: int = 1
    load_delay: float = 0.0
    started: list[FakeRunner] = field(default_factory=list)
    fail_with: str | None = None
    place: Callable[[LoadSpec], Placement] = requested_placement  # as ProcessRunnerFactory's ``place``

    async def start(self, spec: LoadSpec) -> FakeRunner:
        if self.load_delay:
            await asyncio.sleep(self.load_delay)
        if self.fail_with:
            raise RunnerError(self.fail_with)
        runner = FakeRunner(spec, self.memory.get(spec.key, 100), self.words, self.gate, self.gate_at)
        runner.placement = self.place(spec)
        runner.vram_bytes = runner.placement.vram_bytes
        self.started.append(runner)
        return runner

    def live(self) -> list[FakeRunner]:
        return [r for r in self.started if not r.closed and not r._exited.done()]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
