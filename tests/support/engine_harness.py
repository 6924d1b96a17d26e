"""Drive an in-process Engine (no HTTP) from tests: submit requests, collect their outputs."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

from llmhost.engine.engine import Engine
from llmhost.engine.llamacpp import Context, Model
from llmhost.engine.prompt import CompletionRequest, PromptBuilder
from llmhost.engine.sequence import Failed, Finished, Output, Sequence, TextChunk


@dataclass
class Collector:
    """A sink that records a sequence's outputs and signals the final one."""

    outputs: list[Output] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    first: threading.Event = field(default_factory=threading.Event)
    gate: threading.Event | None = None  # when set up, the engine thread blocks on the first output

    def __call__(self, output: Output) -> None:
        self.outputs.append(output)
        self.first.set()
        if self.gate is not None:
            assert self.gate.wait(60), "gate never opened"
        if isinstance(output, (Finished, Failed)):
            self.done.set()

    def wait(self, timeout: float = 60.0) -> Collector:
        assert self.done.wait(timeout), "sequence did not finish"
        return self

    @property
    def text(self) -> str:
        return "".join(o.text for o in self.outputs if isinstance(o, TextChunk))

    @property
    def final(self) -> Finished | Failed:
        return self.outputs[-1]  # type: ignore[return-value]


class EngineHarness:
    """Model + context + engine thread; ``close`` stops and frees everything."""

    def __init__(
        self,
        model: Model,
        *,
        ctx_size: int = 256,
        parallel: int = 2,
        batch: int = 128,
        kv_cells: int | None = None,
        start: bool = True,
        kv_cache_type: str = "f16",
        flash_attention: str = "auto",
        **kw: Any,
    ):
        """``kv_cells``: the shared KV pool (default ctx_size × parallel, which can never overflow).
        ``start=False``: requests submitted before ``start()`` all reach the first step together,
        so batch composition (and with it floating-point rounding) does not depend on timing."""
        self.model = model
        n_ctx = kv_cells or ctx_size * parallel
        self.ctx = Context(model, n_ctx=n_ctx, n_seq_max=parallel + 1, n_batch=batch, n_threads=1,
                           kv_cache_type=kv_cache_type, flash_attention=flash_attention)
        self.engine = Engine(model, self.ctx, n_slots=parallel, slot_capacity=ctx_size, **kw)
        self.builder = PromptBuilder(model, self.engine.kv.slot_capacity)
        if start:
            self.engine.start()

    def start(self) -> None:
        self.engine.start()

    def submit(self, body: dict[str, Any], *, gated: bool = False) -> tuple[Sequence, Collector]:
        """Queue a request; ``gated`` pauses the whole engine at the sequence's first output until
        ``sink.gate.set()`` — a deterministic way to act while it is mid-generation."""
        sink = Collector(gate=threading.Event() if gated else None)
        seq = self.builder.sequence(CompletionRequest.from_json(body), sink)
        assert seq is not None
        self.engine.submit(seq)
        return seq, sink

    def run(self, body: dict[str, Any]) -> Collector:
        return self.submit(body)[1].wait()

    def close(self) -> None:
        self.engine.stop()
        self.ctx.close()
