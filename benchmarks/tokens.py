"""``scripts/bench tokens``: a conversation's prompt prepared turn after turn, with and without the
token memo (engine/token_memo.py), side by side in one process.

Each turn resends the whole history, as chat clients do. Two ``PromptBuilder``s over one loaded model
prepare it (render, tokenize, fit): one remembers recent prompts' tokens, the other has its memo off.
They take turns at each step. The JSON line gives, per model, the median milliseconds of the last
``LAST`` turns for each, their ratio (off ÷ on) and the prompt's tokens then. That the two give the
same tokens is checked at every turn.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

from benchmarks.harness import GEMMA3, SMOLLM2

TURNS = 45
LAST = 10
NUM_CTX = 32768


def tokens() -> dict:
    return {path.stem: _conversation(path) for path in (SMOLLM2, GEMMA3)}


def _conversation(path: Path) -> dict:
    from llmhost.engine.llamacpp import Model
    from llmhost.engine.prompt import CompletionRequest, PromptBuilder

    model = Model(path)
    try:
        on, off = PromptBuilder(model, NUM_CTX), PromptBuilder(model, NUM_CTX)
        off.memo.enabled = False
        messages = [{"role": "system", "content": "You are a careful assistant who answers with examples. " * 30}]
        times: dict[str, list[float]] = {"on": [], "off": []}
        n_tokens = 0
        for turn in range(TURNS):
            messages.append({"role": "user", "content": f"Question {turn}: explain item {turn} of the list, "
                                                        "with an example or two."})
            req = CompletionRequest.from_json({"messages": messages})
            order = (("on", on), ("off", off)) if turn % 2 == 0 else (("off", off), ("on", on))
            prepared = {}
            for name, builder in order:
                started = time.perf_counter()
                prepared[name] = builder.prepare(req).tokens
                times[name].append(time.perf_counter() - started)
            if prepared["on"].tolist() != prepared["off"].tolist():
                raise AssertionError(f"turn {turn}: the memo's tokens differ from a whole tokenization")
            n_tokens = len(prepared["on"])
            messages.append({"role": "assistant", "content": f"Item {turn} works like this, for example. " * 50})
        on_ms, off_ms = (statistics.median(times[k][-LAST:]) * 1e3 for k in ("on", "off"))
        return {"prompt_tokens": n_tokens, "prepare_ms_memo": on_ms, "prepare_ms_whole": off_ms,
                "ratio": off_ms / on_ms, "tokens_reused": on.memo.tokens_reused}
    finally:
        model.close()
