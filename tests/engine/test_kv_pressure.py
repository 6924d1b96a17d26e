"""The engine when the KV runs short: context shift, swapping to host memory, priorities, and
cancelled sequences giving their cells back (tiny model, in-process engine)."""

from __future__ import annotations

import pytest

from llmhost.engine.sequence import Finished, FinishReason
from tests.support.engine_harness import Collector, EngineHarness

GREEDY = {"temperature": 0, "seed": 42, "repeat_penalty": 1.0}
SYSTEM = {"role": "system", "content": "You are a patient storyteller who never stops talking."}


def harness(model, **kw) -> EngineHarness:
    return EngineHarness(model, **{"ctx_size": 256, "parallel": 2, "batch": 64, **kw})


def story(text: str, n: int, **body) -> dict:
    messages = [SYSTEM, {"role": "user", "content": text}]
    return {"messages": messages, "options": {**GREEDY, "num_predict": n}, **body}


# --- context shift ---------------------------------------------------------------------------------


def run_alone(model, body: dict, **kw) -> tuple[Collector, dict]:
    """One request on a fresh one-slot engine: its outputs and the engine's counters."""
    h = harness(model, parallel=1, **kw)
    try:
        sink = h.run(body)
        return sink, h.engine.snapshot()
    finally:
        h.close()


def test_generation_continues_past_num_ctx_with_context_shift(model):
    sink, stats = run_alone(model, story("Go on", 150), ctx_size=64)
    final = sink.final
    assert isinstance(final, Finished) and final.done_reason == FinishReason.LENGTH
    assert final.eval_count == 150  # far beyond the 64-token window
    assert final.prompt_eval_count + final.eval_count > 64 and stats["context_shifts"] >= 2


def test_without_context_shift_a_full_window_ends_with_length(model):
    sink, stats = run_alone(model, story("Go on", 150), ctx_size=64, context_shift=False)
    final = sink.final
    assert final.done_reason == FinishReason.LENGTH and stats["context_shifts"] == 0
    assert final.prompt_eval_count + final.eval_count <= 65


def test_output_before_the_first_shift_is_unchanged_by_it(model):
    long = run_alone(model, story("Go on", 120), ctx_size=64)[0].text
    short = run_alone(model, story("Go on", 120), ctx_size=64, context_shift=False)[0].text
    assert short and long.startswith(short) and len(long) > len(short)


def test_shifted_cells_are_not_reused_as_a_cached_prefix(model):
    """After a shift the cells past the kept system prompt no longer match their token prefix: the
    next request may reuse the system prompt only, and still produces a fresh run's output."""
    h = harness(model, ctx_size=64, parallel=1)
    fresh = harness(model, ctx_size=64, parallel=1, reuse_prefixes=False)
    try:
        seq, sink = h.submit(story("Go on", 100))
        sink.wait()
        again = h.run(story("Go on", 100))
        expected = fresh.run(story("Go on", 100))
    finally:
        h.close()
        fresh.close()
    assert 0 < seq.n_keep < len(seq.prompt) - 1
    assert again.final.prompt_cached_count == seq.n_keep
    assert again.text == expected.text == sink.text


# --- swapping and priorities ------------------------------------------------------------------------

PROMPTS = [f"Tell story number {i} about {topic}" for i, topic in enumerate(["a cat", "the sea", "rain", "bread"])]


def run_together(h: EngineHarness, bodies: list[dict]) -> list[str]:
    sinks = [h.submit(b)[1] for b in bodies]
    h.start()
    return [s.wait().text for s in sinks]


@pytest.mark.parametrize("reuse_prefixes", [True, False], ids=["prefix-cache", "no-prefix-cache"])
def test_small_kv_cache_swaps_sequences_without_changing_outputs(model, reuse_prefixes):
    bodies = [story(p, 100) for p in PROMPTS]
    roomy = harness(model, parallel=4, reuse_prefixes=reuse_prefixes, start=False)
    try:
        expected = run_together(roomy, bodies)
    finally:
        roomy.close()
    # 4 sequences of ~130 tokens each in 256 cells: they cannot all stay resident.
    tight = harness(model, parallel=4, kv_cells=256, reuse_prefixes=reuse_prefixes, start=False)
    try:
        got = run_together(tight, bodies)
        stats = tight.engine.snapshot()
    finally:
        tight.close()
    assert got == expected
    assert stats["swapped_out_total"] >= 1 and stats["swapped_in_total"] == stats["swapped_out_total"]
    assert stats["kv_full_retries"] == 0  # the cell accounting never let llama_decode run out
    assert stats["swapped"] == 0 and stats["swapped_bytes"] == 0


def test_higher_priority_arrival_preempts_a_running_sequence(model):
    h = harness(model, parallel=1)
    try:
        expected = h.run(story("low", 40)).text
        low_seq, low = h.submit(story("low", 40), gated=True)
        assert low.first.wait(30)  # running, engine paused inside its first output
        high_seq, high = h.submit({**story("high", 5), "priority": 10})
        low.gate.set()
        high.wait()
        low.wait()
        stats = h.engine.snapshot()
    finally:
        h.close()
    assert high_seq.t_end < low_seq.t_end
    assert low.text == expected  # swapped out and back in without losing or repeating output
    assert stats["preempted_total"] == 1 and stats["swapped_in_total"] == 1


def test_waiting_requests_are_admitted_by_priority_then_age(model):
    h = harness(model, parallel=1)
    try:
        _, first = h.submit({**story("first", 3), "priority": 9}, gated=True)
        assert first.first.wait(30)
        queued = [h.submit({**story(name, 3), "priority": prio}) for name, prio in [("b", 0), ("c", 5), ("d", 5), ("e", 1)]]
        first.gate.set()
        for _, sink in queued:
            sink.wait()
        stats = h.engine.snapshot()
    finally:
        h.close()
    order = [name for name, (seq, _) in sorted(zip("bcde", queued), key=lambda item: item[1][0].t_end)]
    assert order == ["c", "d", "e", "b"]
    assert stats["preempted_total"] == 0  # all of them ranked below the running one


# --- cancellation ---------------------------------------------------------------------------------


def test_cancelled_sequence_leaves_the_running_set_and_its_cells_are_reclaimed(model):
    long_a = "alpha beta gamma delta " * 40
    long_b = "one two three four five " * 40
    h = harness(model, parallel=2, kv_cells=256)
    fresh = harness(model, parallel=1)
    try:
        seq, sink = h.submit({"prompt": long_a, "options": GREEDY}, gated=True)
        assert sink.first.wait(30)
        h.engine.cancel(seq)
        sink.gate.set()
        assert sink.wait().final.done_reason == FinishReason.CANCELLED
        after_cancel = h.engine.snapshot()
        # The cancelled prompt stays cached, but its cells are what the next prompt needs.
        other = h.run({"prompt": long_b, "options": {**GREEDY, "num_predict": 8}})
        after = h.engine.snapshot()
        expected = fresh.run({"prompt": long_b, "options": {**GREEDY, "num_predict": 8}})
    finally:
        h.close()
        fresh.close()
    assert after_cancel["running"] == 0 and after_cancel["kv_tokens"] >= 160
    assert other.final.done_reason == FinishReason.LENGTH and other.text == expected.text
    assert after["evicted_total"] >= 1 and after["kv_full_retries"] == 0


def test_sequence_preempted_during_its_prefill_resumes_where_it_stopped(model):
    low_body = {"prompt": "alpha beta gamma delta " * 30, "options": {**GREEDY, "num_predict": 12}}
    expected = run_alone(model, low_body)[0].text
    h = harness(model, parallel=1, batch=16)  # the long prompt takes several steps
    real_step, steps, queued = h.engine.step, [0], []

    def step():
        steps[0] += 1
        if steps[0] == 3:  # mid-prefill: a more urgent request arrives
            queued.append(h.submit({**story("urgent", 4), "priority": 5})[1])
        real_step()

    h.engine.step = step
    try:
        low_seq, low = h.submit(low_body)
        low.wait()
        stats = h.engine.snapshot()
    finally:
        h.close()
    assert low.text == expected and low.final.prompt_eval_count == len(low_seq.prompt)
    assert queued[0].final.eval_count == 4 and queued[0].final.done_reason == FinishReason.LENGTH
    assert stats["preempted_total"] == 1 and stats["swapped_in_total"] == 1


def test_swapped_out_sequence_can_be_cancelled(model):
    h = harness(model, parallel=1)
    try:
        low_seq, low = h.submit(story("low", 50), gated=True)
        assert low.first.wait(30)
        _, high = h.submit({**story("high", 30), "priority": 5}, gated=True)
        low.gate.set()
        assert high.first.wait(30)  # low is swapped out now, the engine paused in high's first output
        h.engine.cancel(low_seq)
        high.gate.set()
        assert low.wait().final.done_reason == FinishReason.CANCELLED
        high.wait()
        stats = h.engine.snapshot()
    finally:
        h.close()
    assert stats["swapped_out_total"] == 1 and stats["swapped_in_total"] == 0
    assert stats["swapped"] == 0 and stats["swapped_bytes"] == 0
