"""Streaming text never splits a character and never shows any part of a stop string."""

from __future__ import annotations

import pytest

from llmhost.engine.detokenizer import Detokenizer


def run(pieces: list[bytes], stop: tuple[str, ...] = ()) -> tuple[list[str], str, bool]:
    """(text released after each piece, text released at finish, stopped)."""
    detok = Detokenizer(stop)
    released = [detok.push(p) for p in pieces]
    return released, detok.finish(), detok.stopped


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("👋🏽 hi", id="emoji-with-skin-tone"),
        pytest.param("日本語のテキスト", id="cjk"),
        pytest.param("naïve café", id="latin-1-accents"),
        pytest.param("👨‍👩‍👧", id="zwj-family"),
    ],
)
def test_multibyte_characters_split_across_pieces_are_never_emitted_half(text):
    data = text.encode()
    pieces = [data[i : i + 1] for i in range(len(data))]  # worst case: one byte per token
    released, tail, _ = run(pieces)
    for chunk in released:
        chunk.encode("utf-8")  # a lone surrogate or replacement would show a split
        assert "\ufffd" not in chunk
    assert "".join(released) + tail == text


def test_incomplete_character_at_the_end_becomes_a_replacement_char():
    released, tail, _ = run([b"ok", "é".encode()[:1]])
    assert "".join(released) == "ok"
    assert tail == "\ufffd"


@pytest.mark.parametrize(
    "pieces, stop, expected",
    [
        pytest.param([b"Hello", b" wor", b"ld", b"!"], ("world",), "Hello ", id="stop-split-across-tokens"),
        pytest.param([b"abc<|", b"end", b"|>xyz"], ("<|end|>",), "abc", id="special-looking-stop"),
        pytest.param([b"STOP", b"more"], ("STOP",), "", id="stop-at-start"),
        pytest.param([b"a\n\n", b"b"], ("\n\n", "b"), "a", id="earliest-of-several"),
        pytest.param([b"x", b"Us", b"er:", b" hi"], ("User:", "Us"), "x", id="shorter-stop-wins-first"),
    ],
)
def test_stop_string_is_never_emitted(pieces, stop, expected):
    released, tail, stopped = run(pieces, stop)
    assert stopped
    assert "".join(released) + tail == expected
    for s in stop:
        assert s not in "".join(released)


def test_text_that_only_looked_like_a_stop_prefix_is_released():
    detok = Detokenizer(("world",))
    assert detok.push(b"Hello wo") == "Hello "  # "wo" may start "world": held
    assert detok.push(b"ndrous") == "wondrous"  # it did not: released
    assert detok.finish() == ""
    assert not detok.stopped


def test_held_prefix_is_flushed_when_generation_ends_without_a_match():
    released, tail, stopped = run([b"the end is wor"], ("world",))
    assert "".join(released) == "the end is "
    assert tail == "wor"
    assert not stopped


def test_stop_string_split_inside_a_multibyte_character():
    data = "答案：完".encode()
    pieces = [data[i : i + 2] for i in range(0, len(data), 2)]
    released, tail, stopped = run(pieces, ("：",))
    assert stopped
    assert "".join(released) + tail == "答案"


def test_nothing_is_released_after_a_stop():
    detok = Detokenizer(("X",))
    assert detok.push(b"aXb") == "a"
    assert detok.push(b"more") == ""
    assert detok.finish() == ""
