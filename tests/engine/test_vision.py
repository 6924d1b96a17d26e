"""Images through a projector (``--mmproj``): the wire, the prompt, the KV cache, the runner.

A tiny random-weight text model (byte tokenizer, width 64) and a tiny LLaVA-style projector
(``tests/support/tiny_mmproj.py``: 16 positions per image) through real llama.cpp, so everything
runs in seconds and needs no downloaded model; one test puts the projector in front of SmolLM2.
"""

from __future__ import annotations

import base64
import hashlib
import struct
import threading
import zlib

import numpy as np
import pytest

from llmhost.engine.images import (
    MAX_IMAGE_BYTES,
    MEDIA_MARKER,
    WEBP_UNSUPPORTED,
    EmbeddingCache,
    image_run_bounds,
    image_token_ids,
    place_markers,
)
from llmhost.engine.kv_cache import KVCacheManager
from llmhost.engine.llamacpp import LoadError, Model
from llmhost.engine.prompt import CompletionRequest, PromptBuilder
from llmhost.engine.sequence import Finished, FinishReason
from llmhost.engine.vision import ImageEncoder, Projector
from llmhost.errors import BadRequest
from tests.engine.test_kv_cache import FakeContext
from tests.support.engine_harness import Collector, EngineHarness
from tests.support.runner_process import RunnerProcess, text_of
from tests.support.tiny_gguf import byte_tokenizer, write_tiny_llama
from tests.support.tiny_mmproj import png, write_tiny_mmproj

GREEDY = {"temperature": 0, "seed": 7, "repeat_penalty": 1.0}
IMAGE_TOKENS = 16  # (32 / 8)² patches of the tiny projector


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


IMAGE = b64(png(40, 30, seed=1))
OTHER_IMAGE = b64(png(24, 24, seed=2))


def chat(content: str, *images: str, n: int = 8, **body) -> dict:
    return {"messages": [{"role": "user", "content": content, "images": list(images)}],
            "options": {**GREEDY, "num_predict": n}, **body}


def total(final: dict) -> int:
    return final["prompt_eval_count"] + final["prompt_cached_count"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("vision")
    text = write_tiny_llama(d / "tiny.gguf", tokenizer=byte_tokenizer())
    return text, write_tiny_mmproj(d / "mmproj.gguf")


@pytest.fixture(scope="module")
def loaded(files):
    model = Model(files[0])
    projector = Projector(str(files[1]), model, n_threads=1)
    yield model, projector
    projector.close()
    model.close()


def vision_harness(loaded, *, cache_bytes: int | None = None, start: bool = True, **kw) -> EngineHarness:
    """An in-process engine with the projector (``start=False``: requests submitted before
    ``start()`` all reach the first step)."""
    model, projector = loaded
    h = EngineHarness(model, start=False, images=ImageEncoder(projector, cache_bytes), **kw)
    h.builder = PromptBuilder(model, h.engine.kv.slot_capacity, projector=projector)
    if start:
        h.start()
    return h


@pytest.fixture
def harness(loaded):
    h = vision_harness(loaded)
    yield h
    h.close()


# --- the wire and the prompt ------------------------------------------------------------------------


@pytest.mark.parametrize(("content", "n", "expected"), [
    ("what is this?", 1, "Mwhat is this?"),
    ("compare [img] and [img]", 2, "compare M and M"),
    ("first [img] then", 2, "Mfirst M then"),  # Ollama's rule: placeholders first, the rest prefixed
    ("no images", 0, "no images"),
], ids=["prefixed", "placeholders", "more-images-than-placeholders", "none"])
def test_markers_go_where_ollama_puts_images(content, n, expected):
    assert place_markers(content, n, "M") == expected


def test_image_ids_are_never_vocabulary_ids_and_follow_the_content():
    a, again, other = image_token_ids(b"a", 576), image_token_ids(b"a", 576), image_token_ids(b"b", 576)
    assert a.dtype == np.int32 and (a < -1).all()
    assert (a == again).all() and not (a == other).any()
    assert len(set(a.tolist())) == 576  # positions within an image differ too


def test_embedding_cache_drops_the_least_recently_used_beyond_its_bytes():
    cache = EmbeddingCache(max_bytes=3 * 64)
    rows = {k: np.full((4, 4), i, np.float32) for i, k in enumerate((b"a", b"b", b"c", b"d"))}  # 64 bytes each
    for key in (b"a", b"b", b"c"):
        cache.put(key, rows[key])
    assert cache.get(b"a") is not None  # now the most recent
    cache.put(b"d", rows[b"d"])
    assert cache.get(b"b") is None and cache.get(b"a") is not None and len(cache) == 3


def test_prompt_holds_the_images_positions(loaded):
    builder = PromptBuilder(loaded[0], 512, projector=loaded[1])
    req = CompletionRequest.from_json(chat("Look: [img] and [img]", IMAGE, OTHER_IMAGE))
    assert MEDIA_MARKER in req.messages[0]["content"] and "images" not in req.messages[0]
    prepared = builder.prepare(req)
    spans = prepared.images
    assert [span.n for span in spans] == [IMAGE_TOKENS, IMAGE_TOKENS]
    for span in spans:
        assert (prepared.tokens[span.start:span.end] < -1).all()
    assert (prepared.tokens >= -1).sum() == len(prepared.tokens) - 2 * IMAGE_TOKENS
    text = builder.model.detokenize(prepared.tokens[prepared.tokens >= 0])
    assert "Look:  and " in text and MEDIA_MARKER not in text
    prepared.free_images()


def test_prompt_style_request_takes_top_level_images(loaded):
    builder = PromptBuilder(loaded[0], 512, projector=loaded[1])
    req = CompletionRequest.from_json({"prompt": "Describe [img].", "images": [IMAGE]})
    prepared = builder.prepare(req)
    assert [span.start for span in prepared.images] == [len(builder.model.tokenize("Describe ", add_special=True))]
    prepared.free_images()


def test_a_prompt_may_end_with_an_image(harness):
    sink = harness.run({"prompt": "Describe", "images": [IMAGE], "options": {**GREEDY, "num_predict": 5}})
    assert isinstance(sink.final, Finished) and sink.final.prompt_eval_count == len("Describe") + IMAGE_TOKENS


def test_truncation_drops_old_images_whole_and_keeps_the_last(loaded):
    builder = PromptBuilder(loaded[0], 128, projector=loaded[1])
    messages = [{"role": "user", "content": "x" * 40, "images": [IMAGE]},
                {"role": "assistant", "content": "y" * 40},
                {"role": "user", "content": "z" * 20, "images": [OTHER_IMAGE]}]
    prepared = builder.prepare(CompletionRequest.from_json({"messages": messages, "options": {"num_predict": 16}}))
    tokens, spans = prepared.tokens, prepared.images
    assert len(tokens) < 128 and len(spans) == 1  # the first image went whole
    assert (tokens[spans[0].start:spans[0].end] == image_token_ids(spans[0].media.key, IMAGE_TOKENS)).all()
    assert (tokens < -1).sum() == IMAGE_TOKENS
    prepared.free_images()


def test_a_history_far_longer_than_the_context_is_read_from_its_end(loaded):
    builder = PromptBuilder(loaded[0], 128, projector=loaded[1])
    messages = [{"role": "user", "content": "old " * 5000, "images": [OTHER_IMAGE]},
                {"role": "user", "content": "now [img]?", "images": [IMAGE]}]
    prepared = builder.prepare(CompletionRequest.from_json({"messages": messages, "options": {"num_predict": 16}}))
    assert len(prepared.tokens) < 128 and len(prepared.images) == 1
    assert prepared.images[0].media.key.startswith(hashlib.sha256(base64.b64decode(IMAGE)).digest())
    prepared.free_images()


def test_a_prompt_that_fits_only_without_its_last_image_is_refused(loaded):
    builder = PromptBuilder(loaded[0], 64, projector=loaded[1])
    body = chat("q" * 60, IMAGE)
    with pytest.raises(BadRequest, match="an image cannot be cut"):
        builder.prepare(CompletionRequest.from_json(body))
    with pytest.raises(BadRequest, match=r"does not fit the context of 64 tokens.*truncate is false"):
        builder.prepare(CompletionRequest.from_json({**body, "truncate": False}))
    with pytest.raises(BadRequest, match=r"after its last image.*an image cannot be cut"):  # too long to tokenize whole
        builder.prepare(CompletionRequest.from_json(chat("[img]" + "long text " * 500, IMAGE)))


def test_context_shift_never_splits_an_image():
    kv = KVCacheManager(FakeContext(1), 1, 64)
    image = image_token_ids(b"img", 16)
    tokens = np.concatenate([np.arange(30, dtype=np.int32), image, np.arange(18, dtype=np.int32)])  # 30 + 16 + 18
    slot = kv.allocate(tokens[:1]).seq_id
    kv.commit(slot, 0, tokens)
    dropped = kv.shift(slot, n_keep=20)  # the plain half would end at 20 + 22 = 42, inside the image
    held = kv.slots[slot].held
    assert dropped == 26 and (held[:20] == tokens[:20]).all() and (held[20:] == tokens[46:]).all()
    assert image_run_bounds(tokens, 42) == (30, 46)


# --- the engine -----------------------------------------------------------------------------------


def test_resent_image_is_neither_encoded_nor_decoded_again(harness):
    first = harness.run(chat("What is [img]?", IMAGE))
    second = harness.run(chat("What is [img]?", IMAGE))
    stats = harness.engine.snapshot()
    assert first.text and second.text == first.text
    assert second.final.prompt_cached_count == first.final.prompt_eval_count - 1
    assert stats["images_encoded"] == 1


def test_a_later_turn_reuses_the_image_in_its_history(harness):
    turn1 = chat("What is [img]?", IMAGE)
    first = harness.run(turn1)
    history = [*turn1["messages"], {"role": "assistant", "content": first.text},
               {"role": "user", "content": "And the colour?"}]
    second = harness.run({**turn1, "messages": history})
    prepared = harness.builder.prepare(CompletionRequest.from_json(turn1))
    prepared.free_images()
    assert second.final.prompt_cached_count >= prepared.images[0].end
    assert harness.engine.snapshot()["images_encoded"] == 1


def test_a_parked_turn_about_an_image_comes_back_with_its_image_cells(loaded):
    """One slot: another request, sharing the template's opening, runs between the turns in place, so
    the first turn is parked in host memory first; the copy back holds the image's cells, and the
    image is neither encoded nor decoded again."""
    h = vision_harness(loaded, parallel=1, host_cache_bytes=16 << 20, park_after=0)
    try:
        turn1 = chat("What is [img]?", IMAGE)
        first = h.run(turn1)
        h.run(chat("Say something else entirely, please.", n=4))
        history = [*turn1["messages"], {"role": "assistant", "content": first.text},
                   {"role": "user", "content": "And the colour?"}]
        second = h.run({**turn1, "messages": history})
        prepared = h.builder.prepare(CompletionRequest.from_json(turn1))
        prepared.free_images()
        stats = h.engine.snapshot()
    finally:
        h.close()
    assert second.final.prompt_cached_count >= prepared.images[0].end
    assert stats["parked_restored_total"] == 1
    assert stats["images_encoded"] == 1 and stats["images_cached"] == 0


def test_image_whose_cells_were_evicted_comes_from_the_embedding_cache(loaded):
    h = vision_harness(loaded, reuse_prefixes=False)
    try:
        first, second = h.run(chat("[img]", IMAGE)), h.run(chat("[img]", IMAGE))
        stats = h.engine.snapshot()
    finally:
        h.close()
    assert second.text == first.text and second.final.prompt_cached_count == 0
    assert stats["images_encoded"] == 1 and stats["images_cached"] == 1


def test_different_images_give_different_answers(harness):
    a = harness.run(chat("[img]", IMAGE, n=12)).text
    b = harness.run(chat("[img]", OTHER_IMAGE, n=12)).text
    assert a != b


def test_image_split_over_steps_decodes_as_in_one(loaded):
    body = chat("Look at [img] closely", IMAGE, n=10)
    one = vision_harness(loaded, batch=128)
    try:
        expected = one.run(body)
    finally:
        one.close()
    small = vision_harness(loaded, batch=6)  # the image's 16 rows take three steps
    try:
        got = small.run(body)
    finally:
        small.close()
    assert got.text == expected.text and got.final.prompt_eval_count == expected.final.prompt_eval_count


def record_decodes(h: EngineHarness) -> list[list[tuple[int, str, int]]]:
    """Each llama_decode the engine runs from now on, as (sequence id, "image" or "tokens", rows)."""
    decodes: list[list[tuple[int, str, int]]] = []
    real = h.engine._execute

    def execute(chunks):
        decodes.append([(c.seq.id, "image" if c.image is not None else "tokens", len(c.tokens)) for c in chunks])
        return real(chunks)

    h.engine._execute = execute  # type: ignore[method-assign]
    return decodes


def text_and_image_together(h: EngineHarness, n: int):
    """A text request and an image request started in the same step, run to the end: each one's
    (sequence, collector), and every decode the engine ran."""
    decodes = record_decodes(h)
    try:
        text = h.submit({"messages": [{"role": "user", "content": "plain"}], "options": {**GREEDY, "num_predict": n}})
        image = h.submit(chat("Look: [img]", IMAGE, n=n))
        h.start()
        text[1].wait(), image[1].wait()
    finally:
        h.close()
    assert isinstance(text[1].final, Finished) and image[1].final.eval_count == n
    return text[0], image[0], decodes


def test_image_rows_share_a_step_with_other_sequences_tokens(loaded):
    text_seq, image_seq, decodes = text_and_image_together(vision_harness(loaded, start=False), 30)
    image_decodes = [i for i, d in enumerate(decodes) if any(c[:2] == (image_seq.id, "image") for c in d)]
    assert image_decodes and all(any(c[:2] == (text_seq.id, "tokens") for c in decodes[i + 1]) for i in image_decodes)


def test_an_image_decoded_non_causally_goes_alone_and_whole(loaded, monkeypatch):
    """Gemma 3's path, taken here by flagging the tiny LLaVA projector's chunks non-causal (its
    numbers mean nothing then; what is checked is the plumbing)."""
    real_piece = Projector._piece

    def non_causal(self, chunk, image, i):
        piece = real_piece(self, chunk, image, i)
        if not isinstance(piece, np.ndarray):
            piece.non_causal = True
        return piece

    monkeypatch.setattr(Projector, "_piece", non_causal)
    _, image_seq, decodes = text_and_image_together(vision_harness(loaded, start=False, batch=20), 20)
    assert [d for d in decodes if (image_seq.id, "image", IMAGE_TOKENS) in d] == [[(image_seq.id, "image", IMAGE_TOKENS)]]


def test_sequence_swapped_out_inside_its_image_resumes_where_it_stopped(loaded):
    body = chat("Look at [img] closely", IMAGE, n=12)
    alone = vision_harness(loaded, parallel=1, batch=6)
    try:
        expected = alone.run(body)
    finally:
        alone.close()
    h = vision_harness(loaded, parallel=1, batch=6, start=False)  # the image's 16 rows take three steps
    seq, low = h.submit(body)
    real, urgent, swapped_at = h.engine.step, [], []

    def step():
        span = seq.images[0]
        if not urgent and span.start < seq.n_past < span.end:  # mid-image: a more urgent request arrives
            swapped_at.append(seq.n_past)
            urgent.append(h.submit({**chat("urgent", n=4), "priority": 5})[1])
        real()

    h.engine.step = step  # type: ignore[method-assign]
    h.start()
    try:
        low.wait()
        stats = h.engine.snapshot()
    finally:
        h.close()
    assert swapped_at and low.text == expected.text and low.final.prompt_eval_count == len(seq.prompt)
    assert urgent[0].wait().final.eval_count == 4
    assert stats["preempted_total"] == 1 and stats["swapped_in_total"] == 1
    assert stats["images_encoded"] == 1  # its rows waited with it


def test_generation_past_the_window_shifts_around_the_image(loaded):
    h = vision_harness(loaded, ctx_size=96, parallel=1)
    body = {"messages": [{"role": "system", "content": "Be brief."},
                         {"role": "user", "content": "[img] go on", "images": [IMAGE]}],
            "options": {**GREEDY, "num_predict": 150}}
    try:
        sink = h.run(body)
        stats = h.engine.snapshot()
    finally:
        h.close()
    assert isinstance(sink.final, Finished) and sink.final.eval_count == 150
    assert stats["context_shifts"] >= 1


def test_returned_context_holds_only_token_ids(harness):
    sink = harness.run({"prompt": "[img] is", "images": [IMAGE], "return_context": True,
                        "options": {**GREEDY, "num_predict": 4}})
    assert isinstance(sink.final, Finished) and sink.final.context
    final = sink.final
    assert min(final.context) >= 0 and len(final.context) == final.prompt_eval_count - IMAGE_TOKENS + final.eval_count


# --- the runner process ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runner(files, tmp_path_factory):
    proc = RunnerProcess(files[0], tmp_path_factory.mktemp("runner"), extra=("--mmproj", str(files[1])))
    with proc:
        yield proc
    assert proc.proc.returncode == 0, proc.stderr()


def test_health_says_the_runner_takes_images(runner):
    health = runner.health()
    assert health["vision"] is True and health["engine"]["images_encoded"] == 0


def test_chat_with_an_image_counts_its_positions(runner):
    with_image = runner.completion(chat("Look:[img]now", IMAGE))
    again = runner.completion(chat("Look:[img]now", IMAGE))
    without = runner.completion(chat("Look:now"))
    assert text_of(with_image) and with_image[-1]["done"] is True
    assert total(with_image[-1]) == total(without[-1]) + IMAGE_TOKENS
    assert again[-1]["prompt_cached_count"] == total(again[-1]) - 1  # the image's positions too
    assert text_of(again) == text_of(with_image)
    assert runner.health()["engine"]["images_encoded"] == 1


def test_concurrent_image_requests_both_finish(runner):
    results: dict[int, list[dict]] = {}

    def ask(i: int, image: str) -> None:
        results[i] = runner.completion(chat(f"Request {i}: [img]", image, n=12))

    threads = [threading.Thread(target=ask, args=(i, image)) for i, image in enumerate((IMAGE, OTHER_IMAGE))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [0, 1]
    assert all(lines[-1]["done_reason"] == "length" and lines[-1]["eval_count"] == 12 for lines in results.values())


def huge_png(width: int, height: int) -> bytes:
    """A PNG's header for a large image and nothing to decompress: stb reads its size up to the
    first IDAT."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"") + chunk(b"IEND", b"")


@pytest.mark.parametrize(("images", "message"), [
    (["not base64!"], "image 0 is not valid base64"),
    ([IMAGE, b64(b"hello, world")], "image 1 is not an image in a supported format"),
    ([b64(b"RIFF\x10\x00\x00\x00WEBPVP8 " + bytes(16))], f"image 0: {WEBP_UNSUPPORTED}"),
    ([b64(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)], "image 0 (PNG) could not be decoded"),
    ([b64(huge_png(10000, 10000))], "image 0 is 10000×10000 pixels, more than the limit"),
    (["A" * ((MAX_IMAGE_BYTES // 3 + 1) * 4)], f"image 0 is {(MAX_IMAGE_BYTES // 3 + 1) * 3} bytes, more than the "
                                               f"limit of {MAX_IMAGE_BYTES} bytes (20 MiB)"),
], ids=["not-base64", "not-an-image", "webp", "corrupt", "too-many-pixels", "too-large"])
def test_bad_images_are_400s_and_the_runner_stays_up(runner, images, message):
    status, body = runner.request("POST", "/completion", chat("[img]" * len(images), *images))
    assert status == 400 and message in body["error"]
    assert runner.health()["status"] == "ok"
    assert runner.completion(chat("still there?", n=2))[-1]["done"] is True


def test_images_sent_to_a_model_without_a_projector_are_refused(files, tmp_path):
    with RunnerProcess(files[0], tmp_path) as plain:
        assert plain.health()["vision"] is False
        status, body = plain.request("POST", "/completion", chat("[img]", IMAGE))
        assert (status, body) == (400, {"error": "this model does not support images"})
        status, body = plain.request("POST", "/completion", {"prompt": "x", "images": [IMAGE]})
        assert status == 400 and plain.health()["status"] == "ok"


@pytest.mark.parametrize(("write", "message"), [
    (lambda p: write_tiny_mmproj(p, omit=("clip.vision.image_size",)), "Key not found: clip.vision.image_size"),
    (lambda p: write_tiny_mmproj(p, n_embd_text=48), "mismatch between text model (n_embd = 64) and mmproj"),
], ids=["missing-key", "wrong-width"])
def test_a_bad_projector_fails_the_load_with_its_reason(files, tmp_path, write, message):
    proc = RunnerProcess(files[0], tmp_path, extra=("--mmproj", str(write(tmp_path / "bad.gguf"))))
    with pytest.raises(RuntimeError, match="exited with 1"):
        proc.start()
    lines = proc.stderr().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: failed to load the projector") and message in lines[0]


def test_a_missing_projector_file_is_a_load_error(files):
    model = Model(files[0])
    try:
        with pytest.raises(LoadError, match="projector file not found"):
            Projector("/nonexistent.gguf", model, n_threads=1)
    finally:
        model.close()


# --- a real model ----------------------------------------------------------------------------------


def test_smollm2_answers_in_words_after_an_image(smollm2_path, tmp_path):
    model = Model(smollm2_path)
    projector = Projector(str(write_tiny_mmproj(tmp_path / "mmproj-576.gguf", n_embd_text=576)), model, n_threads=2)
    h = EngineHarness(model, start=False, images=ImageEncoder(projector), ctx_size=512)
    h.builder = PromptBuilder(model, h.engine.kv.slot_capacity, projector=projector)
    h.start()
    try:
        sink: Collector = h.run(chat("Here is a picture: [img]. Write one sentence about the sea.", IMAGE, n=24))
    finally:
        h.close()
        projector.close()
        model.close()
    words = sink.text.split()
    assert sink.final.done_reason in (FinishReason.STOP, FinishReason.LENGTH)
    assert len(words) >= 4 and sum(w.strip(".,!?\"'").isalpha() for w in words) >= len(words) // 2, sink.text
