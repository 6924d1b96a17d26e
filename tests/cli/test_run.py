"""``llm run``: one-shot answers, piped stdin, pulling a missing model, and the REPL."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pytest

from llmhost.api.client import Client
from llmhost.cli import render
from llmhost.cli.answer import RunOptions, generate_parts, stream_answer
from llmhost.cli.repl import Repl
from llmhost.errors import BadRequest
from tests.support.fake_daemon import MODEL, show_answer
from tests.support.processes import free_port


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
    assert daemon.paths() [:4] == ["/api/version", "/api/show", "/api/pull", "/api/show"]


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


@dataclass
class Session:
    repl: Repl
    out: str
    err: str


def run_repl(daemon, lines: list, capsys, model: str = MODEL, **options) -> Session:
    """Run a REPL over scripted input lines (an exception in the list is raised, like Ctrl+C)."""
    script = iter(lines)

    def read_line(prompt: str) -> str:
        line = next(script, EOFError())
        if isinstance(line, BaseException):
            raise line
        return line

    client = Client(daemon.socket_path, f"127.0.0.1:{free_port()}")
    info = daemon.models[model]
    session = Repl(client, RunOptions(model, wordwrap=False, **options), info, read_line=read_line)
    session.run()
    captured = capsys.readouterr()
    return Session(session, captured.out, captured.err)


def repl(daemon, lines: list, capsys, model: str = MODEL, **options) -> tuple[Repl, str]:
    run = run_repl(daemon, lines, capsys, model, **options)
    return run.repl, run.out


def test_repl_keeps_history_across_turns(daemon, capsys):
    _session, out = repl(daemon, ["hi", "again", "/bye", "never read"], capsys)
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
    answer = stream_answer(chunks(), render.AnswerWriter(out), generate_parts, interruptible=True)
    assert (answer.final, answer.content, out.getvalue(), closed) == (None, "partial", "partial\n", [True])


# -- thinking -------------------------------------------------------------------------------------

THINKER = "thinker:latest"
SHOWN_THINKING = "Thinking...\nLet me think.\n...done thinking.\n\n"


@pytest.fixture
def thinker(daemon):
    """A model with the "thinking" capability: the fake daemon streams its thoughts before the answer."""
    daemon.models[THINKER] = {**show_answer(THINKER), "capabilities": ["completion", "thinking"]}
    return THINKER


@pytest.mark.parametrize("args, sent", [
    ([], None),
    (["--think"], True),
    (["--think="], True),
    (["--think=true"], True),
    (["--think=false"], False),
    (["--think=low"], "low"),
    (["--think=medium"], "medium"),
    (["--think=HIGH"], "high"),
], ids=["absent", "bare", "empty", "true", "false", "low", "medium", "high"])
def test_think_flag_is_sent_only_when_given(llm, daemon, thinker, args, sent):
    result = llm("run", thinker, "hi", *args)
    assert result.exit_code == 0, result.output
    body = daemon.bodies("/api/generate")[-1]
    assert body.get("think", "not sent") == ("not sent" if sent is None else sent)


def test_bare_think_does_not_swallow_the_prompt(llm, daemon, thinker):
    """As with Ollama's flag: only ``--think=VALUE`` carries a value."""
    assert llm("run", thinker, "--think", "Say", "hi").exit_code == 0
    body = daemon.bodies("/api/generate")[-1]
    assert (body["think"], body["prompt"]) == (True, "Say hi")


def test_think_after_a_double_dash_is_prompt_text(llm, daemon, thinker):
    assert llm("run", thinker, "--", "--think").exit_code == 0
    body = daemon.bodies("/api/generate")[-1]
    assert body["prompt"] == "--think" and "think" not in body


@pytest.mark.parametrize("value", ["maybe", "yes", "1"])
def test_bad_think_value_fails_before_the_daemon_is_asked(llm, daemon, value):
    result = llm("run", MODEL, "hi", f"--think={value}")
    assert result.exit_code == 1
    assert result.stderr.startswith(f'Error: invalid value for --think: "{value}" (must be one of true, false, low')
    assert daemon.requests == []


def test_thinking_is_printed_apart_before_the_answer(llm, daemon, thinker):
    result = llm("run", thinker, "hi")
    assert result.exit_code == 0, result.output
    assert result.stdout == SHOWN_THINKING + "Hello, world!\n"  # off a terminal: no colour codes


def test_hidethinking_asks_a_thinking_model_to_think_but_prints_only_the_answer(llm, daemon, thinker):
    result = llm("run", thinker, "hi", "--hidethinking")
    assert result.stdout == "Hello, world!\n"
    assert daemon.bodies("/api/generate")[-1]["think"] is True


def test_hidethinking_leaves_a_model_without_thinking_alone(llm, daemon):
    result = llm("run", MODEL, "hi", "--hidethinking")
    assert result.exit_code == 0 and result.stdout == "Hello, world!\n"
    assert "think" not in daemon.bodies("/api/generate")[-1]


def test_think_false_hides_nothing_and_the_model_answers_plainly(llm, daemon, thinker):
    assert llm("run", thinker, "hi", "--think=false").stdout == "Hello, world!\n"


def test_think_on_a_model_without_thinking_is_a_clear_error(llm, daemon):
    result = llm("run", MODEL, "hi", "--think")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f'Error: "{MODEL}" does not support thinking\n'


def test_repl_think_flag_goes_with_the_preload_so_a_model_without_thinking_fails_at_once(daemon, capsys):
    client = Client(daemon.socket_path, f"127.0.0.1:{free_port()}")
    session = Repl(client, RunOptions(MODEL, think=True), show_answer(), read_line=lambda _: "never read")
    with pytest.raises(BadRequest, match="does not support thinking"):
        session.run()


@pytest.mark.parametrize("lines, sent, said", [
    ([], None, None),
    (["/set think"], True, "Set 'think' mode."),
    (["/set think high"], "high", "Set 'think' mode to 'high'."),
    (["/set nothink"], False, "Set 'nothink' mode."),
    (["/set think low", "/set nothink"], False, "Set 'nothink' mode."),
    (["/set think false"], False, "Set 'nothink' mode."),
], ids=["default", "think", "level", "nothink", "last-wins", "think-false"])
def test_repl_set_think_changes_the_next_request(daemon, thinker, capsys, lines, sent, said):
    _, out = repl(daemon, [*lines, "hi"], capsys, model=thinker)
    body = daemon.bodies("/api/chat")[-1]
    assert body.get("think", "not sent") == ("not sent" if sent is None else sent)
    assert said is None or said in out
    assert ("Thinking..." in out) is (sent is not False)


def test_repl_bad_think_level_is_reported_and_nothing_changes(daemon, thinker, capsys):
    run = run_repl(daemon, ["/set think hard", "hi"], capsys, model=thinker)
    assert 'Error: invalid value for /set think: "hard"' in run.err
    assert "think" not in daemon.bodies("/api/chat")[-1]


def test_repl_shows_thinking_apart_and_keeps_it_in_history(daemon, thinker, capsys):
    _session, out = repl(daemon, ["hi", "again"], capsys, model=thinker)
    assert out.count(SHOWN_THINKING + "Hello, world!\n") == 2
    assert daemon.bodies("/api/chat")[-1]["messages"][1] == {
        "role": "assistant", "content": "Hello, world!", "thinking": "Let me think.",
    }


def test_repl_history_of_a_model_without_thinking_has_no_thinking_field(daemon, capsys):
    session, _ = repl(daemon, ["hi"], capsys)
    assert session.messages[-1] == {"role": "assistant", "content": "Hello, world!"}


def test_repl_hidethinking_prints_only_the_answer(daemon, thinker, capsys):
    session, out = repl(daemon, ["hi"], capsys, model=thinker, hide_thinking=True)
    assert out.startswith("Hello, world!\n") and "think" not in out.lower()
    assert session.messages[-1]["thinking"] == "Let me think."


def test_repl_set_think_on_a_model_without_thinking_warns_then_the_error_is_shown(daemon, capsys):
    run = run_repl(daemon, ["/set think", "hi", "/set nothink", "hi"], capsys)
    assert f'warning: model "{MODEL}" does not support thinking output' in run.err
    assert f'Error: "{MODEL}" does not support thinking' in run.err
    assert run.out.count("Hello, world!") == 1  # after /set nothink the chat went on
    assert run.repl.messages == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello, world!"}]


def test_repl_set_help_lists_think(daemon, capsys):
    _, out = repl(daemon, ["/? set"], capsys)
    assert "/set think             Enable thinking" in out
    assert "/set nothink           Disable thinking" in out


def test_repl_tool_calls_are_printed_readably(daemon, capsys):
    daemon.tool_calls = [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    _, out = repl(daemon, ["weather?"], capsys)
    assert "Hello, world!\n  Model called a non-existent function 'get_weather()' with arguments: " \
           '{"city":"Paris"}\n' in out


@pytest.mark.parametrize("args, expected", [
    (["m", "--think"], ["m", "--think=true"]),
    (["m", "--think=low", "q"], ["m", "--think=low", "q"]),
    (["m", "--", "--think"], ["m", "--", "--think"]),
    (["m", "--think", "--", "--think"], ["m", "--think=true", "--", "--think"]),
], ids=["bare", "valued", "after-dashes", "both"])
def test_bare_think_spelling(args, expected):
    from llmhost.cli.commands.run import bare_think

    assert bare_think(args) == expected
