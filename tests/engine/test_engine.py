"""The engine loop on the tiny model: batching, stop criteria, cancellation, prefix reuse."""

from __future__ import annotations

import threading

import pytest

from llmhost.engine import prompt as prompt_module
from llmhost.engine.llamacpp import DecodeError, Model, Sampler, SamplerChain
from llmhost.engine.prompt import CompletionRequest, PromptBuilder
from llmhost.engine.sequence import Failed, Finished, FinishReason
from tests.support.engine_harness import EngineHarness
from tests.support.waiting import wait_until

GREEDY = {"temperature": 0, "seed": 42}


@pytest.fixture
def harness(model):
    h = EngineHarness(model, ctx_size=256, parallel=4, batch=64)
    yield h
    h.close()


def chat(text: str, **options) -> dict:
    return {"messages": [{"role": "user", "content": text}], "options": {**GREEDY, **options}}


def test_greedy_output_is_deterministic(harness):
    first = harness.run(chat("Tell me a story", num_predict=12))
    second = harness.run(chat("Tell me a story", num_predict=12))
    assert first.text and first.text == second.text
    assert first.final.done_reason == FinishReason.LENGTH and first.final.eval_count == 12


def test_batched_sequences_match_each_alone(model):
    prompts = [f"Question {i}: what is {i} + {i}?" * (i + 1) for i in range(4)]
    alone = []
    for p in prompts:
        h = EngineHarness(model, ctx_size=256, parallel=1, batch=64, reuse_prefixes=False)
        try:
            alone.append(h.run(chat(p, num_predict=10)).text)
        finally:
            h.close()
    h = EngineHarness(model, ctx_size=256, parallel=4, batch=64, reuse_prefixes=False)
    try:
        sinks = [h.submit(chat(p, num_predict=10))[1] for p in prompts]
        together = [s.wait().text for s in sinks]
    finally:
        h.close()
    assert together == alone
    assert len(set(alone)) == 4  # the prompts really lead to different outputs


def test_more_requests_than_slots_all_finish(harness):
    sinks = [harness.submit(chat(f"n{i}", num_predict=5))[1] for i in range(9)]
    finals = [s.wait().final for s in sinks]
    assert all(isinstance(f, Finished) and f.eval_count == 5 for f in finals)


def test_num_predict_zero_generates_nothing(harness):
    sink = harness.run(chat("hi", num_predict=0))
    assert sink.text == "" and sink.final.eval_count == 0 and sink.final.done_reason == FinishReason.LENGTH


def test_stop_string_ends_output_before_it(harness):
    reference = harness.run(chat("Write something", num_predict=12)).text
    stop = reference[len(reference) // 2 :][:4]
    assert stop.strip(), reference
    sink = harness.run(chat("Write something", num_predict=12, stop=[stop]))
    assert sink.final.done_reason == FinishReason.STOP
    assert sink.text == reference[: reference.index(stop)]


def test_long_prompt_is_truncated_or_rejected(harness):
    long_text = "word " * 600
    sink = harness.run({"prompt": long_text, "options": {**GREEDY, "num_predict": 3}})
    assert sink.final.prompt_eval_count < 256
    with pytest.raises(Exception, match="does not fit"):
        harness.submit({"prompt": long_text, "truncate": False})


def test_cancelled_sequence_frees_its_slot(harness):
    seq, sink = harness.submit({"prompt": "go", "options": GREEDY}, gated=True)
    assert sink.first.wait(30)
    harness.engine.cancel(seq)
    sink.gate.set()
    sink.wait()
    assert sink.final.done_reason == FinishReason.CANCELLED
    assert harness.engine.snapshot()["running"] == 0
    # its slot is usable again
    assert harness.run(chat("after", num_predict=3)).final.eval_count == 3


def test_json_format_constrains_output(harness):
    sink = harness.run({"prompt": "data:", "format": "json", "options": {"seed": 3, "num_predict": 30}})
    assert sink.text.lstrip().startswith("{")


def test_grammar_checked_after_sampling_gives_what_grammar_first_gives(harness, monkeypatch):
    """Greedy output must not depend on whether the grammar filters the whole vocabulary first
    (the slow way) or only checks the token the chain picked (the fast way)."""
    body = {"prompt": "data:", "format": "json", "options": {**GREEDY, "num_predict": 40}}
    fast = harness.run(body).text

    def grammar_inside_chain(model, params, *, grammar, n_ctx, prompt=None, logit_bias=None):
        chain = SamplerChain().add_grammar(model, grammar).add_greedy()
        return Sampler(chain, n_vocab=model.n_vocab)

    monkeypatch.setattr(prompt_module, "build_sampler", grammar_inside_chain)
    slow = harness.run(body).text
    assert fast == slow and fast.lstrip().startswith("{")


def test_repetition_penalties_pick_what_llama_cpps_own_sampler_picks(harness, monkeypatch):
    """The penalties are applied to the logits in numpy (llama.cpp's sampler looks up the whole
    vocabulary); the tokens must be the ones llama.cpp's penalties sampler gives."""
    options = {**GREEDY, "repeat_penalty": 1.6, "frequency_penalty": 0.4, "presence_penalty": 0.3,
               "repeat_last_n": 12, "num_predict": 40}
    body = {"prompt": "the the the the the", "options": options}
    ours = harness.run(body).text

    def native_penalties(model, params, *, grammar, n_ctx, prompt=None, logit_bias=None):
        chain = SamplerChain().add_penalties(model.n_vocab, params.repeat_last_n, params.repeat_penalty,
                                             params.frequency_penalty, params.presence_penalty)
        sampler = Sampler(chain.add_greedy(), n_vocab=model.n_vocab)
        sampler.accept_history(prompt[-params.repeat_last_n:])
        return sampler

    monkeypatch.setattr(prompt_module, "build_sampler", native_penalties)
    native = harness.run(body).text
    monkeypatch.undo()
    unpenalised = harness.run({**body, "options": {**GREEDY, "num_predict": 40}}).text
    assert ours == native and ours != unpenalised


def test_next_chat_turn_evaluates_only_the_new_tokens(harness):
    messages = [{"role": "user", "content": "Hello, how are you?"}]
    prompt_lengths = []
    for turn in range(3):
        body = {"messages": messages, "options": {**GREEDY, "num_predict": 6}}
        prompt_lengths.append(len(harness.builder.tokens(CompletionRequest.from_json(body))))
        sink = harness.run(body)
        final = sink.final
        if turn > 0:
            assert final.prompt_cached_count >= prompt_lengths[turn - 1]
            assert final.prompt_eval_count == prompt_lengths[turn] - final.prompt_cached_count
            assert final.prompt_eval_count < prompt_lengths[turn] - prompt_lengths[turn - 1] + 8
        messages = messages + [{"role": "assistant", "content": sink.text}, {"role": "user", "content": f"and {turn}?"}]


def test_shared_system_prompt_is_evaluated_once(harness):
    system = {"role": "system", "content": "You are a terse assistant. " * 10}
    a = harness.run({"messages": [system, {"role": "user", "content": "one"}], "options": {**GREEDY, "num_predict": 2}})
    b = harness.run({"messages": [system, {"role": "user", "content": "two"}], "options": {**GREEDY, "num_predict": 2}})
    assert a.final.prompt_cached_count == 0
    assert b.final.prompt_cached_count > 40
    # the reused prefix gives the same tokens as evaluating from scratch
    fresh = EngineHarness(harness.model, ctx_size=256, parallel=1, batch=64, reuse_prefixes=False)
    try:
        again = fresh.run({"messages": [system, {"role": "user", "content": "two"}], "options": {**GREEDY, "num_predict": 2}})
    finally:
        fresh.close()
    assert again.text == b.text


def test_conversations_arriving_together_evaluate_a_shared_system_prompt_once(model):
    system = {"role": "system", "content": "You are a terse assistant who answers briefly. " * 12}
    h = EngineHarness(model, ctx_size=512, parallel=4, batch=32, start=False)  # prefill takes several steps
    try:
        sinks = [h.submit({"messages": [system, {"role": "user", "content": f"question {i}"}],
                           "options": {**GREEDY, "num_predict": 2}})[1] for i in range(4)]
        h.start()
        finals = [sink.wait().final for sink in sinks]
    finally:
        h.close()
    evaluated = [f.prompt_eval_count for f in finals]
    cached = [f.prompt_cached_count for f in finals]
    assert cached[0] == 0 and all(c > 100 for c in cached[1:]), (evaluated, cached)
    assert sum(evaluated) < evaluated[0] + 3 * 20, "the others evaluate only their own question"


def test_stop_fails_waiting_and_running_sequences(model):
    h = EngineHarness(model, ctx_size=256, parallel=1, batch=64)
    sinks = [h.submit({"prompt": "x", "options": GREEDY}, gated=True)[1] for _ in range(3)]
    assert sinks[0].first.wait(30)
    closing = threading.Thread(target=h.close)
    closing.start()
    # The stop request is queued behind the paused step.
    wait_until(lambda: not h.engine._inbox.empty(), what="the stop request queued")
    for sink in sinks:
        sink.gate.set()
    closing.join(30)
    for sink in sinks:
        assert isinstance(sink.wait().final, Failed)


def test_requests_after_stop_fail_immediately(model):
    h = EngineHarness(model, ctx_size=256, parallel=1, batch=64)
    h.close()
    _, sink = h.submit(chat("late", num_predict=2))
    assert isinstance(sink.wait(5).final, Failed)


def test_engine_crash_fails_requests_and_signals_exit(model, monkeypatch):
    h = EngineHarness(model, ctx_size=256, parallel=1, batch=64)
    exited = threading.Event()
    h.engine.on_exit = exited.set

    def boom():
        raise RuntimeError("boom")

    monkeypatch.setattr(h.engine, "step", boom)
    try:
        _, sink = h.submit(chat("x", num_predict=2))
        assert isinstance(sink.wait().final, Failed) and "boom" in sink.final.message
        assert exited.wait(5) and h.engine.crashed
    finally:
        h.close()


def test_failed_decode_ends_only_that_step_and_the_engine_keeps_serving(harness, monkeypatch):
    real_decode = harness.ctx.decode
    calls = {"n": 0}

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 1:
            raise DecodeError(-3)
        real_decode(batch)

    monkeypatch.setattr(harness.ctx, "decode", flaky)
    failed = harness.run(chat("first", num_predict=3))
    assert isinstance(failed.final, Failed) and "status -3" in failed.final.message
    ok = harness.run(chat("first", num_predict=3))
    assert isinstance(ok.final, Finished) and ok.final.prompt_cached_count == 0


def test_model_without_template_falls_back_to_chatml(tiny_model_no_template):
    m = Model(tiny_model_no_template)
    try:
        req = CompletionRequest.from_json({"messages": [{"role": "user", "content": "Hi"}]})
        assert PromptBuilder(m, 256).render(req) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    finally:
        m.close()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"mirostat": 1, "seed": 5}, id="mirostat-1"),
        pytest.param({"mirostat": 2, "seed": 5}, id="mirostat-2"),
        pytest.param({"top_k": 5, "top_p": 0.5, "min_p": 0.05, "typical_p": 0.9, "seed": 5}, id="truncation"),
        pytest.param({"presence_penalty": 0.5, "frequency_penalty": 0.5, "repeat_last_n": -1, "seed": 5}, id="penalties"),
    ],
)
def test_sampler_configurations_generate_reproducibly(harness, options):
    body = {"prompt": "Sample me", "options": {**options, "num_predict": 8}}
    first, second = harness.run(body), harness.run(body)
    assert first.final.eval_count == 8 and first.text == second.text


def test_a_long_prompt_after_a_few_reused_tokens_fills_steps_to_llamas_256_cell_boundaries(model):
    """llama.cpp attends over the cells in use rounded up to 256: a step that ends a few cells past a
    boundary makes it and every later step attend over 255 cells more (4% slower prefill)."""
    from llmhost.engine.scheduler import KV_PAD

    h = EngineHarness(model, ctx_size=2048, parallel=2, batch=512)
    steps: list[int] = []
    real = h.ctx.decode
    h.ctx.decode = lambda batch: (steps.append(int(batch.struct.n_tokens)), real(batch))[1]
    try:
        opening = "Once upon a time"
        h.run({"prompt": opening, "raw": True, "options": {**GREEDY, "num_predict": 1}})
        steps.clear()
        long = opening + " there was a lighthouse" + " and a storm that came every night" * 200
        final = h.run({"prompt": long, "raw": True, "options": {**GREEDY, "num_predict": 1}}).final
    finally:
        h.close()
    reused = final.prompt_cached_count
    assert 0 < reused < KV_PAD and final.prompt_eval_count > 2 * 512
    assert steps[:2] == [512 - reused, 512], steps  # the cells in use end at 512, then 1,024
    assert sum(steps) == final.prompt_eval_count
