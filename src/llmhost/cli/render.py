"""Everything the CLI prints: tables, model info, progress bars, streamed tokens, timings.

Rich is imported inside the functions that draw with it, so ``llm --help`` stays light.
Tables are plain text padded like Ollama's, so ``llm ls | awk`` works.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from typing import Any, TextIO

from llmhost.units import format_size

FOREVER_YEARS = 20  # an expiry further out than this is a pinned model


def print_error(message: str) -> None:
    """The one line a failed command leaves on stderr."""
    sys.stderr.write(f"Error: {message}\n")
    sys.stderr.flush()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def print_models(data: dict, table: Callable[[list[dict]], str], as_json: bool) -> None:
    """``list``/``ps`` output: the daemon's JSON, or its ``models`` as a table."""
    if as_json:
        print_json(data)
    else:
        sys.stdout.write(table(data.get("models") or []))


def _console(stderr: bool = True):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False)


# -- tables ---------------------------------------------------------------------------------------


def columns(header: list[str], rows: list[list[str]], gap: int = 4) -> str:
    """Left-aligned text columns, the last one unpadded."""
    table = [header, *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = []
    for row in table:
        cells = [cell.ljust(widths[i] + gap) for i, cell in enumerate(row[:-1])]
        lines.append("".join(cells) + row[-1])
    return "\n".join(lines) + "\n"


def parse_time(text: str | None) -> datetime | None:
    """A Go RFC 3339 timestamp (nanoseconds, ``Z``) as an aware datetime; None when absent or zero."""
    if not text or text.startswith("0001-01-01"):
        return None
    match = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", text)
    if not match:
        return None
    base, fraction, zone = match.groups()
    fraction = (fraction or ".0")[:7]
    zone = "+00:00" if zone in (None, "Z") else zone
    return datetime.fromisoformat(base + fraction + zone)


def human_duration(seconds: float) -> str:
    """Ollama's format.HumanDuration."""
    if seconds < 1:
        return "Less than a second"
    if int(seconds) == 1:
        return "1 second"
    if seconds < 60:
        return f"{int(seconds)} seconds"
    minutes = int(seconds // 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds // (3600 * 24 * 365))} years"


def human_time(when: datetime | None, zero: str, now: datetime | None = None) -> str:
    """"3 hours ago", "4 minutes from now", "Forever" (Ollama's format.HumanTime)."""
    if when is None:
        return zero
    now = now or datetime.now(timezone.utc)
    delta = (now - when).total_seconds()
    if -delta > FOREVER_YEARS * 365 * 86400:
        return "Forever"
    if delta < 0:
        return human_duration(-delta) + " from now"
    return human_duration(delta) + " ago"


def list_table(models: list[dict], now: datetime | None = None) -> str:
    rows = [
        [
            m.get("name") or m.get("model", ""),
            (m.get("digest") or "").removeprefix("sha256:")[:12],
            format_size(m.get("size") or 0),
            human_time(parse_time(m.get("modified_at")), "Unknown", now),
        ]
        for m in models
    ]
    return columns(["NAME", "ID", "SIZE", "MODIFIED"], rows)


def processor(size: int, size_vram: int) -> str:
    """Where a loaded model lives: 100% CPU, 100% GPU or a CPU/GPU split."""
    if not size_vram:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or not size:
        return "Unknown"
    cpu = round((size - size_vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def ps_until(expires_at: str | None, now: datetime | None = None) -> str:
    when = parse_time(expires_at)
    now = now or datetime.now(timezone.utc)
    if when is not None and when <= now:
        return "Stopping..."
    return human_time(when, "Forever", now)


def ps_table(models: list[dict], now: datetime | None = None) -> str:
    rows = [
        [
            m.get("name") or m.get("model", ""),
            (m.get("digest") or "").removeprefix("sha256:")[:12],
            format_size(m.get("size") or 0),
            processor(m.get("size") or 0, m.get("size_vram") or 0),
            str(m.get("context_length") or ""),
            *ps_usage(m),
            ps_until(m.get("expires_at"), now),
        ]
        for m in models
    ]
    return columns(["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "SLOTS", "QUEUE", "CACHE HIT", "UNTIL"], rows)


def ps_usage(model: dict) -> list[str]:
    """Slots in use of the parallel ones, queue depth, cache-hit rate ("-" where the daemon gave none)."""
    parallel, rate = model.get("parallel"), model.get("cache_hit_rate")
    return [
        f"{model.get('slots_in_use', 0)}/{parallel}" if parallel else "-",
        str(model["queue_depth"]) if model.get("queue_depth") is not None else "-",
        f"{rate:.0%}" if isinstance(rate, (int, float)) else "-",
    ]


# -- show -----------------------------------------------------------------------------------------


def _section(title: str, rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    width = max(len(r[0]) for r in rows) if all(len(r) > 1 for r in rows) else 0
    lines = [f"  {title}"]
    for row in rows:
        if len(row) > 1:
            lines.append(f"    {row[0].ljust(width + 4)}{row[1]}".rstrip())
        else:
            lines.append(f"    {row[0]}".rstrip())
    return lines + [""]


def _head(text: str, n: int = 2) -> list[list[str]]:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    rows = [[line.strip()] for line in lines[:n]]
    return rows + [["..."]] if len(lines) > n else rows


def show_info(info: dict, verbose: bool = False) -> str:
    """``llm show MODEL``: the model's architecture, capabilities, parameters, system and license."""
    details = info.get("details") or {}
    model_info = info.get("model_info") or {}
    arch = model_info.get("general.architecture") or details.get("family") or ""
    model_rows = [
        ["architecture", arch],
        ["parameters", details.get("parameter_size") or ""],
        ["context length", str(model_info.get(f"{arch}.context_length", ""))],
        ["embedding length", str(model_info.get(f"{arch}.embedding_length", ""))],
        ["quantization", details.get("quantization_level") or ""],
    ]
    lines = [""]
    lines += _section("Model", [r for r in model_rows if r[1]])
    lines += _section("Capabilities", [[c] for c in info.get("capabilities") or []])
    params = [line.split(None, 1) for line in (info.get("parameters") or "").splitlines() if line.strip()]
    lines += _section("Parameters", [p if len(p) == 2 else [p[0], ""] for p in params])
    if info.get("system"):
        lines += _section("System", _head(info["system"]))
    if info.get("license"):
        lines += _section("License", _head(info["license"]))
    if verbose and model_info:
        lines += _section("Metadata", [[k, _short(v)] for k, v in sorted(model_info.items())])
    return "\n".join(lines) + "\n"


def _short(value: Any) -> str:
    if isinstance(value, list):
        return f"[{', '.join(map(str, value[:5]))}{', ...' if len(value) > 5 else ''}]"
    return str(value)


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# -- progress -------------------------------------------------------------------------------------


def _progress(console):
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskProgressColumn,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("{task.description}"), TaskProgressColumn(), BarColumn(), DownloadColumn(),
        TransferSpeedColumn(), TimeRemainingColumn(), console=console,
    )


def progress_events(events: Iterable[dict]) -> str:
    """Draw pull/create progress: one bar per layer, status lines in order. Returns the last status.

    Bars live only while layer events arrive, so a later status prints below them, as in Ollama.
    """
    console = _console()
    progress, last = None, ""
    bars: dict[str, Any] = {}
    try:
        for event in events:
            status = event.get("status", "")
            if event.get("total"):
                if progress is None:
                    progress, bars = _progress(console), {}
                    progress.start()
                key = event.get("digest") or status
                if key not in bars:
                    bars[key] = progress.add_task(status, total=event["total"])
                progress.update(bars[key], completed=event.get("completed") or 0, description=status)
            elif status and status != last:
                if progress is not None:
                    progress.stop()
                    progress = None
                console.print(status, markup=False, soft_wrap=True)
            last = status
    finally:
        if progress is not None:
            progress.stop()
    return last


@contextlib.contextmanager
def transfer(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """A single bar for a local job (hashing or uploading a file); yields ``advance(n_bytes)``."""
    with _progress(_console()) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


@contextlib.contextmanager
def spinner(message: str) -> Iterator[None]:
    """A spinner on stderr while waiting (only on a terminal)."""
    console = _console()
    if not console.is_terminal:
        yield
        return
    with console.status(message):
        yield


# -- generation -----------------------------------------------------------------------------------


class TokenWriter:
    """Writes streamed text as it arrives, flushed per chunk, wrapping words at ``width`` if set.

    A word that would cross the edge is erased and moved to the next line (what Ollama does).
    """

    def __init__(self, out: TextIO, width: int | None = None):
        self.out = out
        self.width = width if width and width > 10 else None
        self.column = 0
        self.word = ""
        self.last = "\n"

    def write(self, text: str, codes: tuple[str, str] = ("", "")) -> None:
        """Write ``text``, between the escape codes ``codes`` (opening, closing) when given."""
        if not text:
            return
        self.out.write(codes[0] + (self._wrap(text) if self.width else text) + codes[1])
        self.out.flush()
        self.last = text[-1]

    def _wrap(self, text: str) -> str:
        width = self.width
        assert width is not None  # called only when wrapping
        parts = []
        for ch in text:
            if ch == "\n":
                parts.append(ch)
                self.column, self.word = 0, ""
                continue
            if ch == " ":
                self.word = ""
                if self.column >= width:
                    parts.append("\n")
                    self.column = 0
                    continue
            elif self.column >= width:
                if 0 < len(self.word) < width:
                    n = len(self.word)
                    parts.append("\b" * n + " " * n + "\n" + self.word)
                    self.column = n
                else:
                    parts.append("\n")
                    self.column, self.word = 0, ""
            if ch != " ":
                self.word += ch
            parts.append(ch)
            self.column += 1
        return "".join(parts)

    def finish(self) -> None:
        """End the answer on a new line."""
        if self.last != "\n":
            self.out.write("\n")
            self.last = "\n"
        self.out.flush()


THINKING_STYLE = "color(245)"  # Ollama's grey
THINKING_HEADER_STYLE = "bold color(245)"
THINKING_OPENING = "Thinking...\n"
THINKING_CLOSING = "...done thinking.\n\n"


@functools.cache
def _codes(style: str) -> tuple[str, str]:
    """The escape codes that open and close a rich ``style``."""
    from rich.color import ColorSystem
    from rich.style import Style

    start, _, end = Style.parse(style).render("\0", color_system=ColorSystem.EIGHT_BIT).partition("\0")
    return start, end


def takes_colour(out: TextIO) -> bool:
    """Whether ``out`` is a terminal that wants colour (rich's view of NO_COLOR, TERM=dumb, FORCE_COLOR)."""
    from rich.console import Console

    console = Console(file=out)
    return console.is_terminal and not console.no_color and not console.is_dumb_terminal


class AnswerWriter:
    """Streams one answer: the model's thinking set apart, then its text, then any tool calls.

    As Ollama prints it: ``Thinking...``, the thinking in grey, ``...done thinking.`` and a blank line,
    then the answer. Off a terminal the same words come without colour; with ``show_thinking`` off the
    thinking is not shown at all. With ``spinner``, a spinner turns on stderr until something shows.
    """

    def __init__(self, out: TextIO, width: int | None = None, *, show_thinking: bool = True,
                 styled: bool | None = None, spinner: bool = False):
        self.out = out
        self.width = width
        self.text = TokenWriter(out, width)
        self.show_thinking = show_thinking
        self.styled = takes_colour(out) if styled is None else styled
        self.thinking_open = False
        self._status = _start_spinner() if spinner else None

    def thinking(self, text: str) -> None:
        if not text or not self.show_thinking:
            return
        self._shown()
        if not self.thinking_open:
            self.text.finish()
            self._write([(THINKING_OPENING, THINKING_HEADER_STYLE)])
            self.thinking_open = True
        self.text.write(text, self._style(THINKING_STYLE))

    def content(self, text: str) -> None:
        if not text:
            return
        self._shown()
        self._close_thinking()
        self.text.write(text)

    def tool_calls(self, calls: list[dict]) -> None:
        """Calls the model made: the CLI offers no tools, so each is reported as Ollama does."""
        if not calls:
            return
        self._shown()
        self._close_thinking()
        self.text.finish()
        for call in calls:
            function = call.get("function") or {}
            arguments = json.dumps(function.get("arguments") or {}, ensure_ascii=False, separators=(",", ":"))
            self._write([
                ("  Model called a non-existent function '", THINKING_HEADER_STYLE),
                (f"{function.get('name', '')}()", ""),
                ("' with arguments: ", THINKING_HEADER_STYLE),
                (arguments + "\n", ""),
            ])

    def finish(self) -> None:
        """End the answer on a new line (a thinking block cut short stays open, as in Ollama)."""
        self._shown()
        self.text.finish()

    def _close_thinking(self) -> None:
        if not self.thinking_open:
            return
        self.text.finish()
        self._write([(THINKING_CLOSING, THINKING_HEADER_STYLE)])
        self.thinking_open = False
        self.text = TokenWriter(self.out, self.width)

    def _style(self, style: str) -> tuple[str, str]:
        return _codes(style) if self.styled and style else ("", "")

    def _write(self, parts: list[tuple[str, str]]) -> None:
        for text, style in parts:
            start, end = self._style(style)
            self.out.write(start + text + end)
        self.out.flush()

    def _shown(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None


def _start_spinner():
    """A running spinner on stderr (None off a terminal); the caller stops it."""
    console = _console()
    if not console.is_terminal:
        return None
    status = console.status("")
    status.start()
    return status


def go_duration(ns: int) -> str:
    """Nanoseconds the way Go's time.Duration prints them: 850µs, 12.5ms, 1.234s, 2m3.5s."""
    if ns == 0:
        return "0s"
    sign, ns = ("-" if ns < 0 else ""), abs(int(ns))
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{_fraction(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{_fraction(ns, 1_000_000)}ms"
    hours, rest = divmod(ns, 3600 * 10**9)
    minutes, rest = divmod(rest, 60 * 10**9)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if hours or minutes else "")
    return f"{sign}{text}{_fraction(rest, 10**9)}s"


def _fraction(value: int, unit: int) -> str:
    whole, part = divmod(value, unit)
    digits = str(part).rjust(len(str(unit)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


def _rate(count: int, ns: int) -> str:
    return f"{count / (ns / 1e9):.2f} tokens/s" if ns else "n/a"


def stats(final: dict) -> str:
    """``--verbose`` timings of a finished generation (Ollama's Metrics.Summary)."""
    lines = []
    if "total_duration" in final:
        lines.append(f"total duration:       {go_duration(final['total_duration'])}")
    if "load_duration" in final:
        lines.append(f"load duration:        {go_duration(final['load_duration'])}")
    if "prompt_eval_count" in final:
        lines.append(f"prompt eval count:    {final['prompt_eval_count']} token(s)")
    if "prompt_eval_duration" in final:
        lines.append(f"prompt eval duration: {go_duration(final['prompt_eval_duration'])}")
        lines.append(f"prompt eval rate:     {_rate(final.get('prompt_eval_count', 0), final['prompt_eval_duration'])}")
    if "eval_count" in final:
        lines.append(f"eval count:           {final['eval_count']} token(s)")
    if "eval_duration" in final:
        lines.append(f"eval duration:        {go_duration(final['eval_duration'])}")
        lines.append(f"eval rate:            {_rate(final.get('eval_count', 0), final['eval_duration'])}")
    return "\n".join(lines) + "\n"


def print_stats(final: dict) -> None:
    sys.stderr.write(stats(final))
    sys.stderr.flush()
