"""``llm run``: one-shot answers, piped stdin, pulling a missing model, and the REPL."""

from __future__ import annotations

import io

import pytest

from llmhost.api.client import Client
from llmhost.cli import render
from llmhost.cli.commands.run import RunOptions, stream_text
from llmhost.cli.repl import Repl
from tests.cli.conftest import closed_port
from tests.cli.fake_daemon import MODEL, show_answer


def test_one_shot_streams_the_answer_to_stdout(llm, daemon):
    result = llm("run", MODEL, "Say", "hello")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Hello, world!\n"
    body = daemon.bodies("/api/generate")[-1]
    assert body["prompt"] == "Say hello" and body["stream"] is True


def test_piped_stdin_is_the_prompt(llm, daemon):
    result = llm("run", MODEL, input="What is in this file?\n")
    assert result.stdout == "Hello, world!\n"
    assert daemon.bodies("/api/generate")[-1]["prompt"] == "What is in this file?\n"


def test_piped_stdin_comes_before_the_prompt_argument(llm, daemon):
    llm("run", MODEL, "Summarize", input="text")
    assert daemon.bodies("/api/generate")[-1]["prompt"] == "text Summarize"


def test_format_keepalive_are_sent(llm, daemon):
    assert llm("run", MODEL, "hi", "--format", "json", "--keepalive", "10m").exit_code == 0
    body = daemon.bodies("/api/generate")[-1]
    assert (body["format"], body["keep_alive"]) == ("json", "10m")


@pytest.mark.parametrize("args, message", [
    (["--format", "xml"], 'Error: invalid format "xml": only "json" is supported\n'),
    (["--keepalive", "soon"], "Error: invalid duration 'soon'"),
])
def test_bad_flags_fail_before_the_daemon_is_asked(llm, daemon, args, message):
    result = llm("run", MODEL, "hi", *args)
    assert result.exit_code == 1 and result.stderr.startswith(message)
    assert daemon.requests == []


def test_verbose_prints_timings_to_stderr(llm, daemon):
    result = llm("run", MODEL, "hi", "--verbose")
    assert result.stdout == "Hello, world!\n"
    assert "total duration:       1.5s" in result.stderr
    assert "eval rate:            50.00 tokens/s" in result.stderr
    assert "prompt eval rate:     100.00 tokens/s" in result.stderr


def test_missing_model_is_pulled_then_run(llm, daemon):
    result = llm("run", "fresh", "hi")
    assert result.exit_code == 0, result.output
    assert "success" in result.stderr and result.stdout == "Hello, world!\n"
    assert daemon.paths() [:4] == ["/", "/api/show", "/api/pull", "/api/show"]


def test_in_stream_error_exits_non_zero_after_the_partial_answer(llm, daemon):
    daemon.stream_error = "runner exited unexpectedly"
    result = llm("run", MODEL, "hi")
    assert result.exit_code == 1
    assert result.stdout == "Hello, world!\n"
    assert result.stderr == "Error: runner exited unexpectedly\n"


def test_embedding_model_prints_the_vector(llm, daemon):
    daemon.models["embed"] = {**show_answer("embed"), "capabilities": ["embedding"]}
    result = llm("run", "embed", "hello")
    assert result.stdout.split() == ["[", "0.6,", "0.8", "]"]


# -- REPL -----------------------------------------------------------------------------------------


def repl(daemon, lines: list, capsys) -> tuple[Repl, str]:
    """Run a REPL over scripted input lines (an exception in the list is raised, like Ctrl+C)."""
    script = iter(lines)

    def read_line(prompt: str) -> str:
        line = next(script, EOFError())
        if isinstance(line, BaseException):
            raise line
        return line

    client = Client(daemon.socket_path, f"127.0.0.1:{closed_port()}")
    session = Repl(client, RunOptions(MODEL, wordwrap=False), show_answer(), read_line=read_line)
    session.run()
    return session, capsys.readouterr().out


def test_repl_keeps_history_across_turns(daemon, capsys):
    session, out = repl(daemon, ["hi", "again", "/bye", "never read"], capsys)
    assert out.count("Hello, world!") == 2
    messages = daemon.bodies("/api/chat")[-1]["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[1]["content"] == "Hello, world!"


def test_repl_preloads_the_model(daemon, capsys):
    repl(daemon, [], capsys)
    assert daemon.bodies("/api/generate") == [{"model": MODEL, "prompt": "", "stream": False}]


def test_repl_multiline_message(daemon, capsys):
    repl(daemon, ['"""first line', "second line", 'end"""'], capsys)
    assert daemon.bodies("/api/chat")[-1]["messages"][-1]["content"] == "first line\nsecond line\nend"


def test_repl_set_system_parameter_and_clear(daemon, capsys):
    _, out = repl(daemon, ["hi", "/clear", "/set system Be terse.", "/set parameter temperature 0.1",
                           "/set parameter stop a b", "hello"], capsys)
    assert "Cleared session context" in out and "Set system message." in out
    assert "Set parameter 'temperature' to '0.1'" in out
    body = daemon.bodies("/api/chat")[-1]
    assert body["messages"] == [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hello"}]
    assert body["options"] == {"temperature": 0.1, "stop": ["a", "b"]}


def test_repl_bad_parameter_is_reported_and_the_session_goes_on(daemon, capsys):
    _, out = repl(daemon, ["/set parameter temperature hot", "hi"], capsys)
    assert "Hello, world!" in out


@pytest.mark.parametrize("line, expected", [
    ("/show template", "{{ .Prompt }}"),
    ("/show system", "You are tiny."),
    ("/show license", "MIT License"),
    ("/show parameters", "Model defined parameters:"),
    ("/show info", "architecture"),
    ("/?", "/bye            Exit"),
    ("/nope", "Unknown command '/nope'. Type /? for help"),
])
def test_repl_commands(daemon, capsys, line, expected):
    _, out = repl(daemon, [line], capsys)
    assert expected in out


def test_repl_error_during_chat_is_reported_and_the_turn_dropped(daemon, capsys):
    daemon.stream_error = "boom"
    session, out = repl(daemon, ["hi", "/show system"], capsys)
    assert session.messages == []
    assert "You are tiny." in out  # the session went on after the error


def test_repl_ctrl_c_at_the_prompt_does_not_exit(daemon, capsys):
    _, out = repl(daemon, [KeyboardInterrupt(), "hi"], capsys)
    assert "Use Ctrl + d or /bye to exit." in out and "Hello, world!" in out


def test_ctrl_c_during_an_answer_keeps_what_was_said():
    closed = []

    def chunks():
        try:
            yield {"response": "partial"}
            raise KeyboardInterrupt
        finally:
            closed.append(True)

    out = io.StringIO()
    final, text = stream_text(chunks(), render.TokenWriter(out), lambda c: c["response"], interruptible=True)
    assert (final, text, out.getvalue(), closed) == (None, "partial", "partial\n", [True])
