"""Quantized KV caches (q8_0, q4_0): the cache shrinks, and everything that moves KV cells — prefix
reuse, swapping to host memory, context shift — keeps working (tiny model, in-process engine; the
accuracy of a shifted cache on SmolLM2)."""

from __future__ import annotations

import numpy as np
import pytest

from llmhost.engine.llamacpp import Batch, Context, LoadError, Model
from llmhost.engine.sequence import Finished, FinishReason
from tests.support.engine_harness import EngineHarness
from tests.support.tiny_gguf import TinyShape, write_tiny_llama

GREEDY = {"temperature": 0, "seed": 42, "repeat_penalty": 1.0}
QUANTIZED = ["q8_0", "q4_0"]


def tiny_with_heads(tmp_path_factory, tokenizer, head_size: int) -> Model:
    path = tmp_path_factory.mktemp("kv") / f"tiny-head{head_size}.gguf"
    return Model(write_tiny_llama(path, tokenizer=tokenizer, shape=TinyShape(n_embd=2 * head_size, n_head=2,
                                                                             n_head_kv=1)))


@pytest.fixture(scope="module")
def model64(tmp_path_factory, tiny_tokenizer):
    """The tiny model with heads of 64 values: a quantized cache stores K and V in blocks of 32, and
    llama.cpp rotates (and so can shift) a quantized K whose heads are a multiple of 64."""
    m = tiny_with_heads(tmp_path_factory, tiny_tokenizer, 64)
    yield m
    m.close()


@pytest.fixture(scope="module")
def model32(tmp_path_factory, tiny_tokenizer):
    m = tiny_with_heads(tmp_path_factory, tiny_tokenizer, 32)
    yield m
    m.close()


def story(text: str, n: int) -> dict:
    return {"messages": [{"role": "system", "content": "You tell long stories."}, {"role": "user", "content": text}],
            "options": {**GREEDY, "num_predict": n}}


def run_alone(model, body: dict, **kw):
    h = EngineHarness(model, **{"ctx_size": 256, "parallel": 1, "batch": 64, **kw})
    try:
        return h.run(body), h.engine.snapshot()
    finally:
        h.close()


def test_a_quantized_cache_holds_a_sequence_in_fewer_bytes(model64):
    """What a sequence costs in the cache (and in host memory when swapped out) follows the type:
    q8_0 keeps 34 bytes per 32 values, q4_0 18, against f16's 64."""
    sizes = {}
    for kv in ["f16", *QUANTIZED]:
        h = EngineHarness(model64, parallel=1, batch=64, kv_cache_type=kv)
        try:
            h.run(story("Hello there", 40))
            sizes[kv] = h.ctx.state_seq_get(0).nbytes
        finally:
            h.close()
    assert sizes["q4_0"] < sizes["q8_0"] < sizes["f16"]
    # Each cell also records its position and sequences whatever the type: compare what is saved.
    saved_q8, saved_q4 = sizes["f16"] - sizes["q8_0"], sizes["f16"] - sizes["q4_0"]
    assert saved_q8 / saved_q4 == pytest.approx((64 - 34) / (64 - 18), rel=0.01)


def test_a_model_whose_heads_do_not_fill_a_block_is_refused_clearly(model):
    """The default tiny model has heads of 16 values: no quantized cache, and the error says why."""
    with pytest.raises(LoadError, match=r"q8_0 KV cache: .*n_embd_head_k=16.*head size divisible by 32"):
        Context(model, n_ctx=256, n_seq_max=1, n_batch=64, kv_cache_type="q8_0")


@pytest.mark.parametrize("kv", QUANTIZED)
def test_the_next_identical_request_reuses_the_quantized_prefix(model64, kv):
    h = EngineHarness(model64, parallel=1, batch=64, kv_cache_type=kv)
    try:
        first = h.run(story("Tell me about the sea", 30))
        second = h.run(story("Tell me about the sea", 30))
    finally:
        h.close()
    assert second.final.prompt_cached_count == first.final.prompt_eval_count - 1
    assert second.text == first.text


@pytest.mark.parametrize("kv", QUANTIZED)
def test_swapping_quantized_sequences_to_host_memory_changes_no_output(model64, kv):
    bodies = [story(f"Tell story number {i} about {t}", 100) for i, t in enumerate(["a cat", "rain", "bread", "fog"])]

    def run_together(**kw) -> tuple[list[str], dict]:
        h = EngineHarness(model64, ctx_size=256, parallel=4, batch=64, start=False, kv_cache_type=kv, **kw)
        try:
            sinks = [h.submit(b)[1] for b in bodies]
            h.start()
            return [s.wait().text for s in sinks], h.engine.snapshot()
        finally:
            h.close()

    expected, _ = run_together()
    got, stats = run_together(kv_cells=256)  # 4 × ~130 tokens in 256 cells: some must be swapped out
    assert got == expected
    assert stats["swapped_out_total"] >= 1 and stats["swapped_in_total"] == stats["swapped_out_total"]
    assert stats["kv_full_retries"] == 0


@pytest.mark.parametrize("kv", QUANTIZED)
def test_a_quantized_cache_shifts_and_generation_goes_on(model64, kv):
    shifted, stats = run_alone(model64, story("Go on", 150), ctx_size=64, kv_cache_type=kv)
    unshifted, _ = run_alone(model64, story("Go on", 150), ctx_size=64, kv_cache_type=kv, context_shift=False)
    assert shifted.final.eval_count == 150 and stats["context_shifts"] >= 2
    assert unshifted.final.done_reason == FinishReason.LENGTH
    assert unshifted.text and shifted.text.startswith(unshifted.text)


@pytest.mark.parametrize("kv", QUANTIZED)
def test_where_the_cache_cannot_shift_the_answer_ends_with_length(model32, kv):
    """llama.cpp segfaults shifting a quantized K it did not rotate (heads of 32, 96, 160 values):
    such a cache counts as one that cannot shift, and the full window ends the answer instead."""
    sink, stats = run_alone(model32, story("Go on", 150), ctx_size=64, kv_cache_type=kv)
    assert isinstance(sink.final, Finished) and sink.final.done_reason == FinishReason.LENGTH
    assert sink.final.prompt_eval_count + sink.final.eval_count <= 65 and stats["context_shifts"] == 0


# --- accuracy on a real model -------------------------------------------------------------------------


def next_logits_after_shift(model: Model, kv: str, tokens: np.ndarray, keep: int = 4, drop: int = 40) -> np.ndarray:
    """Evaluate ``tokens``, drop ``drop`` of them after the first ``keep`` and move the rest down (the
    engine's shift), then evaluate one more token: its logits."""
    ctx = Context(model, n_ctx=512, n_seq_max=1, n_batch=512, n_threads=2, kv_cache_type=kv)
    try:
        batch = Batch(512)
        batch.add(tokens, 0, 0)
        ctx.decode(batch)
        assert ctx.can_shift()
        ctx.seq_rm(0, keep, keep + drop)
        ctx.seq_add(0, keep + drop, -1, -drop)
        batch.clear()
        batch.add(tokens[5:6], len(tokens) - drop, 0)
        ctx.decode(batch)
        return ctx.logits(0).copy()
    finally:
        ctx.close()


@pytest.mark.model
@pytest.mark.parametrize("kv, similarity", [("q8_0", 0.995), ("q4_0", 0.95)])
def test_a_shifted_quantized_cache_predicts_what_a_shifted_f16_cache_does(smollm2_model, kv, similarity):
    """llama.cpp re-rotates a quantized K by dequantizing and quantizing it again; the next token's
    logits stay as close to f16's as without a shift (measured: q8_0 0.9998, q4_0 0.991)."""
    text = "Once upon a time, in a small village by the sea, there lived an old fisherman. " * 4
    tokens = smollm2_model.tokenize(text, add_special=True)
    reference = next_logits_after_shift(smollm2_model, "f16", tokens)
    got = next_logits_after_shift(smollm2_model, kv, tokens)
    cosine = float(got @ reference / np.linalg.norm(got) / np.linalg.norm(reference))
    assert cosine >= similarity
