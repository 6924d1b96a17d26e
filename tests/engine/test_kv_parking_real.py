"""Parked prompts on a real model (SmolLM2): the cells copied back are the ones that left, so a
conversation continued from host memory gets the reply it would have had from the KV cache."""

from __future__ import annotations

import pytest

from llmhost.engine.llamacpp import Model
from llmhost.engine.sequence import Finished
from tests.support.engine_harness import EngineHarness

GREEDY = {"temperature": 0, "seed": 7, "num_predict": 24}
STORY = "Write two sentences about a lighthouse keeper and the storm that came one night."
OTHER = "List five fruits that are red, one per line, with nothing else."


@pytest.fixture(scope="module")
def smollm2_model(smollm2_path):
    m = Model(smollm2_path)
    yield m
    m.close()


def chat(*turns: str) -> dict:
    roles = ["user", "assistant"]
    return {"messages": [{"role": roles[i % 2], "content": t} for i, t in enumerate(turns)], "options": GREEDY}


def conversation(model: Model, host_cache_bytes: int) -> tuple[list[str], list[Finished], dict]:
    """One conversation's two turns with another one in between, in a runner with one slot."""
    harness = EngineHarness(model, ctx_size=512, parallel=1, host_cache_bytes=host_cache_bytes)
    try:
        first = harness.run(chat(STORY))
        other = harness.run(chat(OTHER))
        second = harness.run(chat(STORY, first.text, "Now give the keeper a name."))
        finals = [s.final for s in (first, other, second)]
        assert all(isinstance(f, Finished) for f in finals), finals
        return [first.text, other.text, second.text], finals, harness.engine.snapshot()  # type: ignore[return-value]
    finally:
        harness.close()


def test_a_conversation_continued_from_host_memory_gets_the_same_reply(smollm2_model):
    texts, finals, stats = conversation(smollm2_model, 64 << 20)
    plain_texts, plain_finals, plain_stats = conversation(smollm2_model, 0)
    assert texts == plain_texts and texts[2]
    # One slot: without parking the other conversation overwrote the first, whose second turn is
    # evaluated whole; parked, it comes back and only the new turn is evaluated.
    assert plain_finals[2].prompt_eval_count > 60
    assert finals[2].prompt_eval_count < 25, finals[2]
    assert finals[2].prompt_eval_count + 40 < plain_finals[2].prompt_eval_count
    assert stats["parked_restored_total"] == 1 and stats["parked_total"] >= 2
    assert plain_stats["parked_total"] == 0 and stats["kv_cells_used"] == plain_stats["kv_cells_used"]
