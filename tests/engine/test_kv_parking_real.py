"""Parked prompts on a real model (SmolLM2): the cells copied back are the ones that left, so a
conversation continued from host memory gets the reply it would have had from the KV cache."""

from __future__ import annotations

from llmhost.engine.llamacpp import Model
from llmhost.engine.sequence import Finished
from tests.support.engine_harness import EngineHarness

GREEDY = {"temperature": 0, "seed": 7, "num_predict": 24}
STORY = "Write two sentences about a lighthouse keeper and the storm that came one night."
OTHER = "List five fruits that are red, one per line, with nothing else."


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


def test_a_parked_sliding_window_prompt_continued_whole_comes_back(gemma3_model):
    """Gemma 3's window layers save only a sequence's last 512 positions when it is parked, so the
    copy back holds the window alone (llama.cpp's pos_min is past 0): the reuse still holds, since
    those layers never look further back."""
    harness = EngineHarness(gemma3_model, ctx_size=2048, parallel=2, batch=64, host_cache_bytes=64 << 20,
                            park_after=0)
    sentence = "The keeper wrote down the weather, the ships and the tides in his book every day. "
    try:
        first = ("[first] " + sentence * 60).rstrip()
        harness.run({"prompt": first, "raw": True, "options": {"num_predict": 1}})
        harness.run({"prompt": "[second] " + sentence * 10, "raw": True, "options": {"num_predict": 1}})
        seq, sink = harness.submit({"prompt": first + " Then he slept.", "raw": True,
                                    "options": {"num_predict": 1}}, gated=True)
        assert sink.first.wait(60)
        assert harness.ctx.seq_pos_min(seq.held_slot) > 0, "only the window came back"
        sink.gate.set()
        again = sink.wait().final
        assert isinstance(again, Finished)
        assert again.prompt_cached_count > 1000 and again.prompt_eval_count < 16, again
        assert harness.engine.snapshot()["parked_restored_total"] == 1
    finally:
        harness.close()
