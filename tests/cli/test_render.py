"""Formatting helpers: durations, times, processor split, word wrap."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

import pytest

from llmhost.cli import render


@pytest.mark.parametrize("ns, text", [
    (0, "0s"), (850, "850ns"), (1_500, "1.5µs"), (12_500_000, "12.5ms"), (1_234_000_000, "1.234s"),
    (123_500_000_000, "2m3.5s"), (3_600_000_000_000, "1h0m0s"),
], ids=lambda v: str(v))
def test_go_duration(ns, text):
    assert render.go_duration(ns) == text


NOW = datetime(2026, 6, 1, tzinfo=timezone.utc)


@pytest.mark.parametrize("delta, text", [
    (timedelta(seconds=-0.5), "Less than a second ago"),
    (timedelta(seconds=-30), "30 seconds ago"),
    (timedelta(minutes=-1, seconds=-10), "About a minute ago"),
    (timedelta(hours=-5), "5 hours ago"),
    (timedelta(days=-3), "3 days ago"),
    (timedelta(days=-20), "2 weeks ago"),
    (timedelta(minutes=4, seconds=30), "4 minutes from now"),
    (timedelta(days=365 * 300), "Forever"),
], ids=lambda v: str(v))
def test_human_time(delta, text):
    assert render.human_time(NOW + delta, "Never", NOW) == text


def test_parse_time_reads_go_nanoseconds():
    assert render.parse_time("2026-01-02T03:04:05.123456789Z") == datetime(2026, 1, 2, 3, 4, 5, 123456, timezone.utc)
    assert render.parse_time("0001-01-01T00:00:00Z") is None


@pytest.mark.parametrize("size, vram, text", [
    (100, 0, "100% CPU"), (100, 100, "100% GPU"), (100, 25, "75%/25% CPU/GPU"),
])
def test_processor(size, vram, text):
    assert render.processor(size, vram) == text


def test_ps_until_past_expiry_is_stopping():
    assert render.ps_until("2020-01-01T00:00:00Z") == "Stopping..."


def test_token_writer_moves_a_word_that_crosses_the_edge():
    out = io.StringIO()
    writer = render.TokenWriter(out, width=14)
    for piece in ["hello th", "ere wonder", "ful"]:
        writer.write(piece)
    writer.finish()
    shown = out.getvalue()
    assert "\b" in shown  # the partial word was erased ...
    assert shown.endswith("\nwonderful\n")  # ... and written again on the next line


def test_token_writer_without_width_writes_text_unchanged():
    out = io.StringIO()
    writer = render.TokenWriter(out)
    writer.write("a long line " * 20)
    writer.finish()
    assert out.getvalue() == "a long line " * 20 + "\n"


GREY, BOLD_GREY, RESET = "\x1b[38;5;245m", "\x1b[1;38;5;245m", "\x1b[0m"  # Ollama's readline colours


def answer(pieces: list[tuple[str, str]], **options) -> str:
    """What an AnswerWriter prints for (kind, text) pieces, kind being "thinking" or "content"."""
    out = io.StringIO()
    writer = render.AnswerWriter(out, **options)
    for kind, text in pieces:
        getattr(writer, kind)(text)
    writer.finish()
    return out.getvalue()


STREAM = [("thinking", "Let me "), ("thinking", "think."), ("content", "Hi"), ("content", " there")]


@pytest.mark.parametrize("options, shown", [
    ({"styled": False}, "Thinking...\nLet me think.\n...done thinking.\n\nHi there\n"),
    ({"styled": True}, f"{BOLD_GREY}Thinking...\n{RESET}{GREY}Let me {RESET}{GREY}think.{RESET}\n"
                       f"{BOLD_GREY}...done thinking.\n\n{RESET}Hi there\n"),
    ({"styled": True, "show_thinking": False}, "Hi there\n"),
], ids=["plain", "terminal", "hidden"])
def test_thinking_is_set_apart_from_the_answer(options, shown):
    assert answer(STREAM, **options) == shown


def test_thinking_ending_in_a_newline_gets_no_extra_line():
    shown = answer([("thinking", "Done.\n"), ("content", "Hi")], styled=False)
    assert shown == "Thinking...\nDone.\n...done thinking.\n\nHi\n"


def test_thinking_cut_short_ends_its_line_and_leaves_no_colour_on():
    shown = answer([("thinking", "Hmm")], styled=True)
    assert shown.endswith(f"Hmm{RESET}\n") and "done thinking" not in shown


def test_answer_without_thinking_is_unchanged():
    assert answer([("content", "Hi")], styled=True) == "Hi\n"


def test_tool_calls_are_one_readable_line_each():
    out = io.StringIO()
    writer = render.AnswerWriter(out, styled=False)
    writer.thinking("I should call it.")
    writer.tool_calls([
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"function": {"name": "now", "arguments": {}}},
    ])
    writer.finish()
    assert out.getvalue() == (
        "Thinking...\nI should call it.\n...done thinking.\n\n"
        "  Model called a non-existent function 'get_weather()' with arguments: {\"city\":\"Paris\"}\n"
        "  Model called a non-existent function 'now()' with arguments: {}\n"
    )


def test_thinking_wraps_words_at_the_width():
    shown = answer([("thinking", "alpha beta gamma delta epsilon")], width=12, styled=False)
    assert shown.startswith("Thinking...\nalpha beta ") and "\n" in shown[len("Thinking...\n"):-1]
