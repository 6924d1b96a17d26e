"""Per-token log-probabilities and logit bias, through the engine on the tiny model (and SmolLM2)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from llmhost.engine.llamacpp import Batch, Context, Model
from llmhost.engine.logprobs import top_tokens
from llmhost.engine.prompt import CompletionRequest
from llmhost.engine.runner_stream import encode
from llmhost.engine.sampling import SamplingParams, build_sampler
from llmhost.engine.sequence import Finished, TextChunk, TokenLogprobs
from llmhost.errors import BadRequest
from tests.support.engine_harness import Collector, EngineHarness

# No repetition penalty: greedy then picks the raw distribution's most likely token.
GREEDY = {"temperature": 0, "seed": 42, "repeat_penalty": 1.0}


@pytest.fixture
def harness(model):
    h = EngineHarness(model, ctx_size=256, parallel=2, batch=64)
    yield h
    h.close()


def chat(text: str, **fields) -> dict:
    options = {**GREEDY, "num_predict": 8, **fields.pop("options", {})}
    return {"messages": [{"role": "user", "content": text}], "options": options, **fields}


def logprobs_of(sink: Collector) -> list[TokenLogprobs]:
    return [o for o in sink.outputs if isinstance(o, TokenLogprobs)]


def same_alternatives(a: TokenLogprobs, b: TokenLogprobs) -> bool:
    """Equal top lists, logprobs up to rounding (a prompt reused from the KV cache is not evaluated
    in the same batch shape, so its logits can differ in the last bits)."""
    return ([(t, p) for t, _, p in a.top] == [(t, p) for t, _, p in b.top]
            and [lp for _, lp, _ in a.top] == pytest.approx([lp for _, lp, _ in b.top], abs=1e-4))


def run_recording(h: EngineHarness, body: dict) -> tuple[Collector, list[int]]:
    """Run a request and record the token ids its sampler picked."""
    sink = Collector()
    seq = h.builder.sequence(CompletionRequest.from_json(body), sink)
    picked: list[int] = []
    sample = seq.sampler.sample

    def recording(ctx, row):
        picked.append(sample(ctx, row))
        return picked[-1]

    seq.sampler.sample = recording
    h.engine.submit(seq)
    return sink.wait(), picked


def reference_logprobs(model: Model, prefixes: list[np.ndarray]) -> list[np.ndarray]:
    """The log-softmax (float64) of the logits after each token prefix, from a context of its own."""
    ctx = Context(model, n_ctx=256, n_seq_max=1, n_batch=256, n_threads=1)
    out = []
    try:
        for tokens in prefixes:
            ctx.clear()
            batch = Batch(256)
            row = batch.add(tokens, 0, 0)
            ctx.decode(batch)
            logits = ctx.logits(row).astype(np.float64)
            shifted = logits - logits.max()
            out.append(shifted - math.log(np.exp(shifted).sum()))
    finally:
        ctx.close()
    return out


# --- log-probabilities --------------------------------------------------------------------------


def test_each_generated_token_gets_its_logprobs_before_its_text(harness):
    sink = harness.run(chat("Tell me a story", logprobs=5))
    entries = logprobs_of(sink)
    assert len(entries) == sink.final.eval_count == 8
    assert isinstance(sink.outputs[0], TokenLogprobs)  # the first token's text comes after it
    for entry in entries:
        assert entry.logprob <= 0
        values = [lp for _, lp, _ in entry.top]
        assert len(values) == 5 and values == sorted(values, reverse=True)
        assert entry.logprob == pytest.approx(values[0])  # greedy picks the likeliest token
        assert entry.token == entry.top[0][0] and entry.piece == entry.top[0][2]
        assert sum(math.exp(v) for v in values) <= 1 + 1e-6


def test_logprobs_are_a_log_softmax_of_the_raw_logits_at_every_step(harness, model):
    """Penalties change the logits row in place before the chain samples from it: the logprobs
    must still be those of the model's own logits for the prompt and the tokens so far."""
    body = chat("What is two plus two?", logprobs=20,
                options={"num_predict": 6, "repeat_penalty": 1.8, "presence_penalty": 2.0})
    prompt = harness.builder.tokens(CompletionRequest.from_json(body))
    sink, picked = run_recording(harness, body)
    expected = reference_logprobs(model, [np.concatenate([prompt, picked[:i]]).astype(np.int32) for i in range(6)])
    for entry, token, reference in zip(logprobs_of(sink), picked, expected, strict=True):
        best = np.argsort(-reference, kind="stable")[:20]
        assert [p for _, _, p in entry.top] == [model.special_piece(int(t)) for t in best]
        assert [lp for _, lp, _ in entry.top] == pytest.approx(reference[best].tolist(), abs=1e-4)
        assert entry.logprob == pytest.approx(reference[token], abs=1e-4)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"options": {"temperature": 1.5, "top_k": 3, "seed": 1}}, id="temperature-top_k"),
        pytest.param({"options": {"mirostat": 2, "seed": 1}}, id="mirostat"),
        pytest.param({"format": "json"}, id="grammar"),
    ],
)
def test_logprobs_describe_the_model_not_the_sampler(harness, fields):
    """The first token's distribution depends on the prompt alone, whatever the sampling options."""
    options = {"num_predict": 1, **fields.pop("options", {})}
    plain = logprobs_of(harness.run(chat("Same prompt", logprobs=10, options={"num_predict": 1})))[0]
    sampled = logprobs_of(harness.run(chat("Same prompt", logprobs=10, options=options, **fields)))[0]
    assert same_alternatives(sampled, plain)


def test_zero_alternatives_give_the_tokens_own_logprob_only(harness):
    entries = logprobs_of(harness.run(chat("Hello", logprobs=0)))
    assert entries and all(e.top == () for e in entries)
    assert all("top_logprobs" not in e.to_json()[0] for e in entries)


def test_only_the_sequence_that_asked_gets_logprobs(harness):
    asked = harness.submit(chat("Question one", logprobs=3))[1]
    other = harness.submit(chat("Question two"))[1]
    assert len(logprobs_of(asked.wait())) == 8
    assert logprobs_of(other.wait()) == [] and other.final.eval_count == 8


def test_num_predict_zero_gives_no_logprobs(harness):
    sink = harness.run(chat("hi", logprobs=5, options={"num_predict": 0}))
    assert logprobs_of(sink) == [] and sink.final.eval_count == 0


def test_logprobs_line_has_ollamas_shape():
    top = (("é", -0.25, "é".encode()), ("<|im_end|>", -2.0, b"<|im_end|>"))
    entry = TokenLogprobs("é", -0.25, "é".encode(), top=top)
    payload, done = encode([entry])
    assert not done
    assert json.loads(payload) == {"logprobs": [{
        "token": "é", "logprob": -0.25, "bytes": [195, 169],
        "top_logprobs": [
            {"token": "é", "logprob": -0.25, "bytes": [195, 169]},
            {"token": "<|im_end|>", "logprob": -2.0, "bytes": list(b"<|im_end|>")},
        ],
    }]}
    assert TokenLogprobs("", -1.0, b"").to_json() == [{"token": "", "logprob": -1.0}]  # Ollama omits empty bytes


@pytest.mark.parametrize(
    "size, n",
    [
        pytest.param(49152, 20, id="whole-columns"),
        pytest.param(50257, 5, id="ragged-tail"),
        pytest.param(40, 20, id="tiny-vocabulary"),
        pytest.param(1000, 1, id="one"),
    ],
)
def test_top_tokens_are_the_largest_logits_in_order(size, n):
    rng = np.random.default_rng(size)
    logits = np.round(rng.standard_normal(size) * 4, 1).astype(np.float32)  # many ties
    logits[-1] = logits.max() + 1  # the largest in the tail the column view leaves out
    top = top_tokens(logits, n)
    assert top[0] == size - 1 and len(set(top.tolist())) == n
    assert logits[top].tolist() == sorted(logits, reverse=True)[:n]


# --- logit bias ---------------------------------------------------------------------------------

SAMPLING = [pytest.param({}, id="greedy"), pytest.param({"temperature": 0.9, "seed": 7}, id="sampled")]


@pytest.mark.parametrize("sampling", SAMPLING)
def test_a_bias_of_minus_100_bans_tokens(harness, sampling):
    body = chat("Tell me a story", options={"num_predict": 16, **sampling})
    first, picked = run_recording(harness, body)
    banned = {str(t): -100 for t in set(picked)}
    second, repicked = run_recording(harness, {**body, "logit_bias": banned})
    assert second.final.eval_count == 16 and second.text != first.text
    assert not set(repicked) & set(picked)


@pytest.mark.parametrize("sampling", SAMPLING)
def test_a_bias_of_plus_100_forces_a_token(harness, model, sampling):
    (token,) = model.tokenize(" yes", add_special=False)
    sink, picked = run_recording(harness, chat("Tell me a story", logit_bias={str(token): 100}, options=sampling))
    assert picked == [token] * 8 and sink.text == " yes" * 8


def test_logprobs_ignore_the_logit_bias(harness):
    body = chat("Same prompt", logprobs=5, options={"num_predict": 1})
    plain, (token,) = run_recording(harness, body)
    biased, (other,) = run_recording(harness, {**body, "logit_bias": {str(token): -100}})
    (plain_entry,), (biased_entry,) = logprobs_of(plain), logprobs_of(biased)
    assert other != token and same_alternatives(biased_entry, plain_entry)
    assert biased_entry.logprob < plain_entry.logprob == plain_entry.top[0][1]


@pytest.mark.parametrize("token", [-1, "n_vocab", "n_vocab+7"])
def test_unknown_token_in_logit_bias_is_a_bad_request(model, harness, token):
    token = {"n_vocab": model.n_vocab, "n_vocab+7": model.n_vocab + 7}.get(token, token)
    with pytest.raises(BadRequest, match=f"invalid token id {token} in logit_bias"):
        build_sampler(model, SamplingParams(), grammar=None, n_ctx=256, logit_bias={token: 5.0})
    with pytest.raises(BadRequest, match=f"invalid token id {token} in logit_bias"):
        harness.builder.sequence(CompletionRequest.from_json(chat("hi", logit_bias={str(token): 5})), Collector())


def test_a_bias_that_is_not_a_number_is_a_bad_request(model):
    with pytest.raises(BadRequest, match="logit_bias"):
        build_sampler(model, SamplingParams(), grammar=None, n_ctx=256, logit_bias={5: float("nan")})


# --- the real model -----------------------------------------------------------------------------


def test_token_bytes_spell_the_generated_text_on_smollm2(smollm2_path):
    model = Model(smollm2_path)
    h = EngineHarness(model, ctx_size=512, parallel=1, batch=128)
    try:
        sink = h.run(chat("Write one sentence about the sea, with an emoji.", logprobs=20,
                          options={"num_predict": 40}))
    finally:
        h.close()
        model.close()
    entries = logprobs_of(sink)
    text = "".join(o.text for o in sink.outputs if isinstance(o, TextChunk))
    assert isinstance(sink.final, Finished) and len(entries) == sink.final.eval_count
    assert b"".join(e.piece for e in entries).decode() == text
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top) == 20
        assert sum(math.exp(lp) for _, lp, _ in entry.top) <= 1 + 1e-6
