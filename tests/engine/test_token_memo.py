"""Prompt tokens reused from recent prompts (engine/token_memo.py): always the whole text's tokens."""

from __future__ import annotations

import logging
import random
import threading

import numpy as np
import pytest

from llmhost.engine.llamacpp import Model
from llmhost.engine.prompt import CompletionRequest, PromptBuilder
from llmhost.engine.token_memo import MIN_REUSE, TokenMemo


def whole(model: Model, text: str) -> np.ndarray:
    return model.tokenize(text, add_special=True, parse_special=True)


@pytest.fixture(scope="module")
def tiny(tiny_model):
    model = Model(tiny_model)
    yield model
    model.close()


def unchecked(model: Model, **limits) -> TokenMemo:
    """A memo without its first-uses check, so that a wrong cut shows as a wrong result."""
    memo = TokenMemo(model, **limits)
    memo._unverified = 0
    return memo


def fragments(model: Model) -> list[str]:
    """Pieces that stress the special-token split: special texts, halves of them, whitespace,
    multi-byte characters, long runs."""
    specials = [model.token_text(int(t)) for t in np.flatnonzero(model.special_tokens().cut)[:12]]
    halves = [s[: len(s) // 2] for s in specials] + [s[len(s) // 2:] for s in specials]
    return specials + halves + [" ", "\n", "\n\n", "  ", "\t", "hello", " world", "héllo", "😀", "user\n",
                                "a" * 40, " " * 17, "<", ">", "|", "_", "Ω≈ç"]


@pytest.mark.parametrize("which", ["smollm2_model", "gemma3_model"])
def test_texts_that_share_heads_tokenize_as_whole_texts(which, request):
    """BPE (SmolLM2) and SentencePiece with a BOS (Gemma 3): texts that start like earlier ones at
    random places, special tokens and their halves everywhere, give exactly the whole text's tokens."""
    model = request.getfixturevalue(which)
    memo = unchecked(model)
    pieces = fragments(model)
    rng = random.Random(7)
    recent: list[str] = []
    for _ in range(600):
        if recent and rng.random() < 0.8:
            earlier = rng.choice(recent)
            text = earlier[: rng.randrange(len(earlier) + 1)] + "".join(rng.choice(pieces) for _ in range(rng.randrange(12)))
        else:
            text = "".join(rng.choice(pieces) for _ in range(rng.randrange(20, 160)))
        recent = [*recent[-30:], text]
        assert memo.tokenize(text).tolist() == whole(model, text).tolist(), repr(text)
    assert memo.tokens_reused > 5_000  # much of it came from earlier texts


def conversation(turns: int) -> list[list[dict]]:
    """The message lists a chat client sends, turn after turn."""
    messages = [{"role": "system", "content": "You answer questions about lists, with examples. " * 12}]
    sent = []
    for t in range(turns):
        messages.append({"role": "user", "content": f"Question {t}: what is item {t}? <|im_end|> ünïcödé\n\n  "})
        sent.append(list(messages))
        messages.append({"role": "assistant", "content": f"Item {t} is this one.  " * 20 + "\n"})
    return sent


def test_a_conversations_next_turn_tokenizes_only_what_it_adds(smollm2_model):
    builder = PromptBuilder(smollm2_model, 8192)
    calls: list[int] = []
    real = smollm2_model.tokenize

    def counted(text, **kw):
        calls.append(len(text))
        return real(text, **kw)

    sent = conversation(6)
    for i, messages in enumerate(sent):
        req = CompletionRequest.from_json({"messages": messages})
        text = builder.render(req)
        calls.clear()
        smollm2_model.tokenize = counted
        try:
            prepared = builder.prepare(req)
        finally:
            del smollm2_model.tokenize
        assert prepared.tokens.tolist() == whole(smollm2_model, text).tolist()
        if i >= 4:  # past the checked first uses: only the turn's new text (and the system turn's tail)
            previous = builder.render(CompletionRequest.from_json({"messages": sent[i - 1]}))
            assert sum(calls) < (len(text) - len(previous)) + 200, (calls, len(text), len(previous))
    assert builder.memo.enabled


def test_a_prefix_of_a_remembered_text_reuses_it_up_to_its_last_special_token(smollm2_model):
    memo = unchecked(smollm2_model)
    system = "<|im_start|>system\n" + "Be brief and exact. " * 30 + "<|im_end|>\n"
    full = system + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    memo.tokenize(full)
    before = memo.tokens_reused
    assert memo.tokenize(system).tolist() == whole(smollm2_model, system).tolist()
    assert memo.tokens_reused - before == len(whole(smollm2_model, system)) - 2  # all but <|im_end|> and "\n"


def test_short_heads_are_tokenized_whole(smollm2_model):
    memo = unchecked(smollm2_model)
    memo.tokenize("<|im_start|>user\nabc<|im_end|>\n")
    memo.tokenize("<|im_start|>user\nabc<|im_end|>\n<|im_start|>assistant\n")
    assert memo.tokens_reused == 0 and MIN_REUSE > 8


def test_a_cut_that_differs_from_the_whole_tokenization_switches_the_memo_off(smollm2_model, caplog):
    memo = TokenMemo(smollm2_model)
    head = "<|im_start|>system\n" + "Be brief. " * 60 + "<|im_end|>\n"
    memo.tokenize(head + "<|im_start|>user\nfirst")
    real = smollm2_model.tokenize

    def wrong_tails(text, *, add_special, parse_special=True):
        tokens = real(text, add_special=add_special, parse_special=parse_special)
        return tokens if add_special else tokens[:-1]  # what a tokenizer the cut does not suit might give

    smollm2_model.tokenize = wrong_tails
    try:
        with caplog.at_level(logging.WARNING, logger="llmhost.engine.token_memo"):
            text = head + "<|im_start|>user\nsecond question"
            assert memo.tokenize(text).tolist() == real(text, add_special=True).tolist()
    finally:
        del smollm2_model.tokenize
    assert not memo.enabled and "tokenized whole" in caplog.text
    assert memo.tokens_reused == 0 and not memo._entries


def test_what_it_remembers_is_bounded(tiny):
    memo = unchecked(tiny, max_entries=4, max_chars=4000)
    for i in range(10):
        memo.tokenize(f"<|im_start|>user\nprompt {i} " + "x " * 100)
    assert len(memo._entries) == 4
    memo.tokenize("<|im_start|>user\n" + "y " * 600)  # 1,217 characters: more than a quarter of 4,000
    assert len(memo._entries) == 4 and sum(len(t) for t in memo._entries) <= 4000
    for i in range(5):
        memo.tokenize(f"<|im_start|>user\nlonger {i} " + "z " * 450)  # ~920 characters each
    assert sum(len(t) for t in memo._entries) <= 4000 and len(memo._entries) == 4


def test_threads_preparing_prompts_at_once_each_get_their_own_tokens(smollm2_model):
    """The runner prepares requests on several worker threads: they share the memo."""
    memo = unchecked(smollm2_model)
    system = "<|im_start|>system\n" + "Answer in one line. " * 40 + "<|im_end|>\n"
    texts = [system + "".join(f"<|im_start|>user\nq{t}-{i}<|im_end|>\n<|im_start|>assistant\nreply {i}<|im_end|>\n"
                              for i in range(n)) for t in range(4) for n in range(1, 12)]
    results: dict[str, list[int]] = {}
    failures: list[BaseException] = []

    def work(mine: list[str]) -> None:
        try:
            for text in mine:
                results[text] = memo.tokenize(text).tolist()
        except BaseException as e:  # reported below, not lost in the thread
            failures.append(e)

    threads = [threading.Thread(target=work, args=(texts[t::4],)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures and len(results) == len(texts)
    assert all(results[text] == whole(smollm2_model, text).tolist() for text in texts)
    assert memo.tokens_reused > 0


def test_the_special_tokens_are_the_ones_a_text_is_split_at(smollm2_model, gemma3_model):
    for model, marker in ((smollm2_model, "<|im_end|>"), (gemma3_model, "<end_of_turn>")):
        specials = model.special_tokens()
        (token,) = model.tokenize(marker, add_special=False).tolist()
        assert specials.cut[token] and not specials.cut[model.tokenize(" hello", add_special=False)[0]]
        assert specials.longest >= len(marker.encode())
        assert model.special_tokens() is specials  # one pass over the vocabulary per model
