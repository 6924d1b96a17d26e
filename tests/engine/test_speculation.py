"""Speculative decoding by prompt lookup: drafts come from the history, and the output never changes."""

from __future__ import annotations

import numpy as np
import pytest

from llmhost.api.option_table import MAX_DRAFT
from llmhost.engine import engine as engine_module
from llmhost.engine.llamacpp import Context, Model
from llmhost.engine.sequence import Failed, Finished, FinishReason
from llmhost.engine.speculation import PROBE_CELLS, DraftPolicy, History, Probe, lookup_draft, probe, step_row_cost
from tests.support.engine_harness import EngineHarness
from tests.support.runner_process import RunnerProcess

GREEDY = {"temperature": 0, "seed": 42}
# Drafting's policy weighs a batch row's cost, which the runner times: the tests fix it (SmolLM2 on
# 2 cores measures 0.27–0.38), so what they draft does not depend on how busy the machine is.
ROW_COST = 0.3
# A reply that quotes its prompt: what prompt lookup is for.
PASSAGE = ("The old lighthouse keeper climbed the spiral stairs every evening at dusk, lit the great lamp, "
           "and watched the ships pass safely through the narrow channel between the rocks.")
QUOTE = {"messages": [{"role": "user", "content": f"Repeat this sentence exactly, twice:\n\n{PASSAGE}"}]}


def tokens(*ids: int) -> np.ndarray:
    return np.array(ids, dtype=np.int32)


# --- the lookup -------------------------------------------------------------------------------------


def test_the_tokens_after_an_earlier_occurrence_of_the_last_ones_are_drafted():
    history = tokens(5, 1, 2, 3, 7, 8, 9, 1, 2, 3)
    assert lookup_draft(history, 3).tolist() == [7, 8, 9]
    assert lookup_draft(history, 2).tolist() == [7, 8]


def test_the_longest_matching_suffix_wins_over_a_later_shorter_one():
    # "2 3" occurs last at 6-7 (followed by 4), but "1 2 3" only at 1-3 (followed by 9).
    history = tokens(0, 1, 2, 3, 9, 5, 2, 3, 4, 6, 1, 2, 3)
    assert lookup_draft(history, 1).tolist() == [9]


def test_the_latest_occurrence_wins_among_equally_long_ones():
    history = tokens(1, 2, 10, 11, 1, 2, 20, 21, 1, 2)
    assert lookup_draft(history, 2).tolist() == [20, 21]


def test_nothing_is_drafted_without_a_match_of_two_tokens():
    assert lookup_draft(tokens(1, 2, 3, 4, 5, 6, 1), 4).tolist() == []  # one token matches: too weak
    assert lookup_draft(tokens(1, 2), 4).tolist() == []
    assert lookup_draft(tokens(1, 2, 3, 1, 2), 0).tolist() == []


def test_a_draft_may_run_into_the_suffix_itself():
    assert lookup_draft(tokens(4, 4, 4, 4), 5).tolist() == [4]  # from position 3: what is there
    assert lookup_draft(tokens(7, 1, 2, 1, 2, 1, 2), 3).tolist() == [1, 2]


def test_a_draft_stops_before_an_image_position():
    history = tokens(1, 2, 3, 8, -5, -5, 9, 1, 2, 3)
    assert lookup_draft(history, 4).tolist() == [8]


def test_history_grows_past_its_first_buffer():
    history = History(tokens(1, 2, 3))
    for t in range(200):
        history.append(t)
    assert history.n == 203 and history.tokens[:5].tolist() == [1, 2, 3, 0, 1] and history.tokens[-1] == 199


CPU_ROW = 0.35  # a row's cost over a one-token step, SmolLM2 on 2 cores
GPU_ROW = 0.02


def judged(policy: DraftPolicy, drafts: list[tuple[int, int]]) -> DraftPolicy:
    for drafted, accepted in drafts:
        policy.record(drafted, accepted)
    return policy


def test_a_fresh_sequence_drafts_little_where_rows_are_dear_and_more_where_they_are_cheap():
    assert DraftPolicy(8).length(CPU_ROW) == 1
    assert 3 <= DraftPolicy(8).length(GPU_ROW) <= 6
    assert DraftPolicy(2).length(GPU_ROW) == 2  # never more than draft_num_predict
    assert DraftPolicy(1000).maximum == MAX_DRAFT and DraftPolicy(-3).maximum == 0


def test_drafts_that_are_accepted_grow_the_length():
    policy = judged(DraftPolicy(16), [(8, 8)] * 10)
    assert policy.acceptance > 0.9
    assert policy.length(CPU_ROW) >= 6 and policy.length(GPU_ROW) == 16
    assert (policy.drafted, policy.accepted) == (80, 80)


def test_drafts_that_fail_stop_drafting_but_one_token_is_tried_now_and_then():
    policy = judged(DraftPolicy(8), [(4, 0)])
    assert policy.acceptance < 0.3

    def lengths(n: int) -> list[int]:
        return [policy.length(CPU_ROW) for _ in range(n)]

    rest = 2 * DraftPolicy.REST  # one failed draft so far: the rest has doubled once
    assert lengths(rest + 1) == [0] * rest + [1]
    policy.record(1, 0)  # the try failed: the next rest is twice as long
    assert lengths(2 * rest + 1) == [0] * (2 * rest) + [1]
    judged(policy, [(1, 0)] * 5)
    assert lengths(DraftPolicy.MAX_REST + 1) == [0] * DraftPolicy.MAX_REST + [1]  # capped
    judged(policy, [(1, 1)] * 8)  # the text started repeating: drafting pays again
    assert policy.length(CPU_ROW) >= 1


def test_only_the_tokens_up_to_the_first_rejection_count_as_evidence():
    policy = judged(DraftPolicy(8), [(8, 2)])  # 2 kept, the 3rd rejected, the other 5 never judged
    assert policy.acceptance == pytest.approx((0.9 * 0.5 + 2) / (0.9 * 1 + 3))


# --- the engine: drafting never changes what is generated ------------------------------------------


@pytest.fixture(scope="module")
def drafting_smollm2(smollm2_model):
    """SmolLM2, where this CPU computes its batched rows exactly (so the engine drafts for it); on a
    CPU whose kernels round batches differently, drafting is off there and these tests skip."""
    ctx = Context(smollm2_model, n_ctx=256, n_seq_max=1, n_batch=64, n_threads=1)
    try:
        exact = probe(ctx, smollm2_model, 0).exact
    finally:
        ctx.close()
    if not exact:
        pytest.skip("this CPU's batched rows of SmolLM2 differ from single rows: the engine does not draft here")
    return smollm2_model


def generate(model: Model, body: dict, *, draft: int, ctx_size: int = 512, parallel: int = 1,
             row_cost: float = ROW_COST):
    """(text, final line, engine counters) of ``body`` run alone on a fresh engine."""
    harness = EngineHarness(model, ctx_size=ctx_size, parallel=parallel, batch=256, draft_row_cost=row_cost)
    try:
        options = {**body.get("options", {}), "draft_num_predict": draft}
        sink = harness.run({**body, "options": options})
        return sink.text, sink.final, harness.engine.snapshot()
    finally:
        harness.close()


def assert_same_with_drafts(model: Model, body: dict, **kw):
    """The body's output with drafting on is the output without it; the counters with it on."""
    plain, plain_final, plain_stats = generate(model, body, draft=0, **kw)
    drafted, final, stats = generate(model, body, draft=8, **kw)
    assert drafted == plain
    assert (final.done_reason, final.eval_count) == (plain_final.done_reason, plain_final.eval_count)
    assert plain_stats["draft_tokens"] == 0
    return stats, plain_stats


@pytest.mark.model
def test_a_quoting_reply_is_the_same_and_takes_fewer_steps(drafting_smollm2):
    body = {**QUOTE, "options": {**GREEDY, "num_predict": 96}}
    stats, plain = assert_same_with_drafts(drafting_smollm2, body)
    assert stats["draft_accepted"] >= 20, stats
    assert stats["steps"] <= plain["steps"] // 2  # each accepted draft is a step saved


@pytest.mark.model
@pytest.mark.parametrize("options", [
    pytest.param({"temperature": 0.9, "seed": 11}, id="seeded sampling"),
    pytest.param({"temperature": 0, "repeat_penalty": 1.3, "repeat_last_n": 32}, id="repetition penalty"),
    pytest.param({"temperature": 0.7, "seed": 5, "top_k": 20, "top_p": 0.8, "min_p": 0.05}, id="truncation"),
    pytest.param({"temperature": 0.8, "seed": 3, "mirostat": 2}, id="mirostat"),
])
def test_sampling_options_give_the_same_tokens_with_drafts(drafting_smollm2, options):
    body = {**QUOTE, "options": {**options, "num_predict": 64}}
    stats, _ = assert_same_with_drafts(drafting_smollm2, body)
    assert stats["draft_tokens"] > 0


@pytest.mark.model
def test_a_json_grammar_gives_the_same_output_with_drafts(drafting_smollm2):
    body = {"messages": [{"role": "user", "content": 'Give {"city": "Paris", "country": "France"} back as JSON, '
                                                      "with the same keys, three times in a list."}],
            "format": "json", "options": {**GREEDY, "num_predict": 80}}
    stats, _ = assert_same_with_drafts(drafting_smollm2, body)
    assert stats["draft_tokens"] > 0


@pytest.mark.model
def test_a_stop_string_inside_an_accepted_draft_ends_the_reply_there(smollm2_model):
    reference, _, _ = generate(smollm2_model, {**QUOTE, "options": {**GREEDY, "num_predict": 96}}, draft=0)
    stop = "narrow channel"
    assert reference.count(stop) >= 1, reference
    body = {**QUOTE, "options": {**GREEDY, "num_predict": 96, "stop": [stop]}}
    assert_same_with_drafts(smollm2_model, body)
    text, final, _ = generate(smollm2_model, body, draft=8)
    assert text == reference[: reference.index(stop)] and final.done_reason == FinishReason.STOP


@pytest.mark.model
@pytest.mark.parametrize("num_predict", [1, 2, 5, 17])
def test_num_predict_is_exact_with_drafts(smollm2_model, num_predict):
    body = {**QUOTE, "options": {**GREEDY, "num_predict": num_predict}}
    _, final, _ = generate(smollm2_model, body, draft=8)
    assert final.eval_count == num_predict and final.done_reason == FinishReason.LENGTH


@pytest.mark.model
def test_a_reply_that_fills_the_context_shifts_it_as_without_drafts(drafting_smollm2):
    body = {"prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,", "options": {**GREEDY, "num_predict": 300}}
    stats, plain = assert_same_with_drafts(drafting_smollm2, body, ctx_size=128)
    assert plain["context_shifts"] >= 1 and stats["context_shifts"] >= 1 and stats["draft_accepted"] > 0


@pytest.mark.model
def test_sequences_drafting_together_each_get_what_they_get_alone(drafting_smollm2):
    bodies = [{"messages": [{"role": "user", "content": f"Repeat exactly: {PASSAGE[: 40 + 25 * i]}"}],
               "options": {**GREEDY, "num_predict": 48, "draft_num_predict": 6}} for i in range(3)]
    # Rows as cheap as on a GPU, so that three sequences decoding together still find drafting worth it.
    alone = [generate(drafting_smollm2, body, draft=6, row_cost=GPU_ROW)[0] for body in bodies]
    harness = EngineHarness(drafting_smollm2, ctx_size=512, parallel=3, batch=256, start=False,
                            draft_row_cost=GPU_ROW)
    try:
        sinks = [harness.submit(body)[1] for body in bodies]
        harness.start()
        together = [sink.wait().text for sink in sinks]
        stats = harness.engine.snapshot()
    finally:
        harness.close()
    assert together == alone and stats["draft_accepted"] > 0


@pytest.mark.model
def test_gemma3_drafts_only_where_its_rows_are_exact(gemma3_path):
    """Gemma 3 on the CPUs seen so far: a batch's later rows differ from the same rows decoded
    alone, so the engine finds that out and does not draft for it; either way, the output is the
    output without drafts."""
    model = Model(gemma3_path)
    try:
        body = {"prompt": "Monday, Tuesday, Wednesday, Thursday, Friday, Saturday, Sunday. Monday, Tuesday,",
                "options": {**GREEDY, "num_predict": 60}}
        stats, _ = assert_same_with_drafts(model, body)
    finally:
        model.close()
    assert stats["draft_exact"] in (0, 1)
    if stats["draft_exact"] == 0:
        assert stats["draft_tokens"] == 0


@pytest.mark.model
def test_a_model_whose_rows_are_found_inexact_never_drafts(smollm2_model, monkeypatch):
    def inexact(ctx, model, seq_id):
        return Probe(exact=False, row_cost=ROW_COST)

    monkeypatch.setattr(engine_module, "probe", inexact)
    text, _, stats = generate(smollm2_model, {**QUOTE, "options": {**GREEDY, "num_predict": 48}}, draft=8)
    assert (stats["draft_exact"], stats["draft_tokens"]) == (0, 0)
    assert PASSAGE[:30] in text


@pytest.mark.model
def test_smollm2s_batched_rows_are_exact_so_it_drafts(drafting_smollm2):
    _, _, stats = generate(drafting_smollm2, {**QUOTE, "options": {**GREEDY, "num_predict": 8}}, draft=4)
    assert stats["draft_exact"] == 1


def test_the_probe_leaves_its_slot_empty_and_the_cache_usable(model):
    harness = EngineHarness(model, ctx_size=256, parallel=2, batch=64, start=False)
    try:
        engine = harness.engine
        seq_id = engine.kv.scratch_slot(PROBE_CELLS)
        assert seq_id is not None
        found = probe(engine.ctx, model, seq_id)
        assert isinstance(found.exact, bool) and 0 < found.row_cost <= 1
        assert engine.ctx.seq_pos_max(seq_id) == -1 and engine.kv.used_cells() == 0
        harness.start()
        body = {"prompt": "a b c a b c a b", "options": {**GREEDY, "num_predict": 20, "draft_num_predict": 4}}
        assert harness.run(body).final.eval_count == 20
        assert engine.snapshot()["draft_exact"] in (0, 1)
    finally:
        harness.close()


def test_a_sequence_that_reports_logprobs_does_not_draft(model):
    harness = EngineHarness(model, ctx_size=256, parallel=1, batch=64)
    try:
        body = {"prompt": "a b c a b c a b", "logprobs": 0,
                "options": {**GREEDY, "num_predict": 20, "draft_num_predict": 8}}
        harness.run(body)
        stats = harness.engine.snapshot()
        assert stats["draft_tokens"] == 0 and stats["draft_exact"] == -1  # nobody wanted to draft
    finally:
        harness.close()


@pytest.mark.model
def test_a_cache_that_cannot_drop_rejected_drafts_ends_the_sequence_and_drafting(drafting_smollm2):
    """Should llama.cpp refuse to drop just the rejected drafts (and drop the whole sequence), the
    sequence ends with an error instead of going on with cells it no longer has, and the runner
    drafts no more; the next request is served."""
    harness = EngineHarness(drafting_smollm2, ctx_size=512, parallel=1, batch=256, draft_row_cost=ROW_COST)
    try:
        real = harness.ctx.seq_rm

        def no_tail_removal(seq_id: int, p0: int = -1, p1: int = -1) -> bool:  # in the one slot's sequence
            return False if p0 > 0 and seq_id == 0 else real(seq_id, p0, p1)

        harness.ctx.seq_rm = no_tail_removal  # type: ignore[method-assign]
        body = {"prompt": "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,",
                "options": {**GREEDY, "num_predict": 200, "draft_num_predict": 8}}
        final = harness.run(body).final
        assert isinstance(final, Failed) and "rejected speculative drafts" in final.message
        stats = harness.engine.snapshot()
        assert stats["draft_tokens"] > stats["draft_accepted"] and harness.engine.scheduler.drafts_allowed is False
        again = harness.run(body).final
        assert isinstance(again, Finished) and again.eval_count == 200
        assert harness.engine.snapshot()["draft_tokens"] == stats["draft_tokens"]  # no drafting since
    finally:
        harness.close()


def test_a_row_costs_more_of_a_tokens_share_as_the_batch_grows():
    assert step_row_cost(CPU_ROW, 1) == CPU_ROW
    assert step_row_cost(CPU_ROW, 4) == pytest.approx(4 * 0.35 / (1 + 3 * 0.35))
    assert step_row_cost(CPU_ROW, 2) < step_row_cost(CPU_ROW, 4) < step_row_cost(CPU_ROW, 8) < 1
    assert step_row_cost(GPU_ROW, 8) < 0.15  # still cheap where rows are
    # Four sequences on a CPU need a better acceptance to draft than one does.
    assert DraftPolicy(8).length(step_row_cost(CPU_ROW, 1)) == 1
    assert DraftPolicy(8).length(step_row_cost(CPU_ROW, 4)) == 0


@pytest.mark.model
@pytest.mark.parametrize("parallel", [1, 4], ids=["an id to spare", "a borrowed slot"])
def test_a_small_num_batch_never_makes_the_probe_overflow_a_decode(smollm2_path, tmp_path, parallel):
    """llama.cpp aborts the whole process on a decode larger than n_batch: with ``num_batch`` 4 the
    probe must cut its text and skip its larger batches (in a runner process, so an abort is a
    failed request here, not a dead test session)."""
    body = {"messages": QUOTE["messages"], "options": {**GREEDY, "num_predict": 24, "draft_num_predict": 8}}
    with RunnerProcess(smollm2_path, tmp_path, parallel=parallel, batch=4) as runner:
        reply = runner.completion(body)
        health = runner.health()
    assert reply[-1].get("done") and reply[-1]["eval_count"] > 0, reply[-1]
    assert health["engine"]["draft_exact"] in (0, 1)  # the probe ran, and the runner lives
