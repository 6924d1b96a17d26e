"""The interactive chat of ``llm run MODEL``: streaming ``/api/chat`` with the history kept here.

Commands follow Ollama's REPL: /set, /show, /clear, /bye (/exit), /? ; ``\"\"\"`` starts a multi-line
message; Ctrl+C stops an answer (or clears the line), Ctrl+D exits. With a vision model, image paths in a
message (``./cat.png``, ``/tmp/a.jpg``) are attached to it, as in ``llm run MODEL "describe ./cat.png"``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from llmhost.api.client import Client
from llmhost.cli import render
from llmhost.cli.answer import RunOptions, chat_parts, parse_think, stream_answer, writer
from llmhost.cli.images import extract_images, image_paths, sees_images
from llmhost.errors import LlmhostError

QUOTES = '"""'

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command

Use \"\"\" to begin a multi-line message.
"""
IMAGES_HELP = "Use /path/to/file to include .jpg, .png, .webp images.\n"  # for a model with vision

SET_HELP = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set think             Enable thinking
  /set think <level>     Think at a level: low, medium, high
  /set nothink           Disable thinking
"""

SHOW_HELP = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""

PARAMETER_HELP = """Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter num_gpu <int>          The number of layers to send to the GPU
  /set parameter stop <string> ...      Set the stop parameters
"""

_MODES = {
    "verbose": ("verbose", True), "quiet": ("verbose", False),
    "wordwrap": ("wordwrap", True), "nowordwrap": ("wordwrap", False),
}


class Repl:
    """One chat session; ``read_line`` (default ``input``) is replaceable for tests."""

    def __init__(self, client: Client, opts: RunOptions, info: dict, read_line: Callable[[str], str] | None = None):
        self.client = client
        self.opts = opts
        self.info = info
        self.messages: list[dict[str, Any]] = []
        self.read_line = read_line or _terminal_input()

    def run(self) -> None:
        with render.spinner("loading model"):
            # think goes along so a model that cannot think fails here, before the first prompt (Ollama)
            self.client.generate(
                self.opts.model, "", stream=False, keep_alive=self.opts.keep_alive, think=self.opts.think
            )
        while True:
            try:
                text = self.read_message()
            except EOFError:
                _say("")
                return
            except KeyboardInterrupt:
                _say("\nUse Ctrl + d or /bye to exit.")
                continue
            if text.lstrip().startswith("/") and not self.names_image(text):
                if not self.command(text.strip()):
                    return
            elif text.strip():
                self.chat(text)

    def read_message(self) -> str:
        """One message; a line with a lone \"\"\" opens a block that a later \"\"\" closes."""
        line = self.read_line(">>> ")
        if line.count(QUOTES) != 1:
            return line.replace(QUOTES, "")
        lines = [line]
        while QUOTES not in (more := self.read_line("... ")):
            lines.append(more)
        lines.append(more)
        return "\n".join(lines).replace(QUOTES, "").strip("\n")

    def names_image(self, line: str) -> bool:
        """A line that opens with an image's path is a message (Ollama's REPL), not a /command."""
        first = line.split()[0]
        return sees_images(self.info) and any(path.startswith(first) for path in image_paths(line))

    # -- chat ------------------------------------------------------------------------------------

    def chat(self, text: str) -> None:
        try:
            self.messages.append(self.user_message(text))
        except LlmhostError as e:  # an image that cannot be read: the turn is not sent
            render.print_error(str(e))
            return
        system = [{"role": "system", "content": self.opts.system}] if self.opts.system else []
        try:
            chunks = self.client.chat(
                self.opts.model, system + self.messages, format=self.opts.format, options=self.opts.options,
                keep_alive=self.opts.keep_alive, think=self.opts.think,
            )
            answer = stream_answer(chunks, writer(self.opts), chat_parts, interruptible=True)
        except LlmhostError as e:
            self.messages.pop()
            render.print_error(str(e))
            return
        self.messages.append(_assistant(answer.content, answer.thinking))
        _say("")
        if self.opts.verbose and answer.final:
            render.print_stats(answer.final)

    def user_message(self, text: str) -> dict[str, Any]:
        """The history entry of what was typed; with vision, the images it names are attached (and
        stay in the history, sent again with every later turn, as Ollama's REPL does)."""
        if not sees_images(self.info):
            return {"role": "user", "content": text}
        content, images = extract_images(text)
        return {"role": "user", "content": content, **({"images": images} if images else {})}

    # -- commands --------------------------------------------------------------------------------

    def command(self, line: str) -> bool:
        """Run a /command; False means leave the REPL."""
        words = line.split()
        name, args = words[0], words[1:]
        if name in ("/bye", "/exit"):
            return False
        if name == "/clear":
            self.messages.clear()
            _say("Cleared session context")
        elif name == "/set":
            self.set(args, line)
        elif name == "/show":
            self.show(args)
        elif name in ("/?", "/help"):
            images = IMAGES_HELP if sees_images(self.info) else ""
            _say({"set": SET_HELP, "show": SHOW_HELP}.get(args[0] if args else "", HELP + images))
        else:
            _say(f"Unknown command '{name}'. Type /? for help")
        return True

    def set(self, args: list[str], line: str) -> None:
        what = args[0] if args else ""
        if what == "parameter":
            self.set_parameter(args[1:])
        elif what == "system":
            self.opts.system = line.split("system", 1)[1].strip().strip('"') or None
            _say("Set system message.")
        elif what in _MODES:
            attr, value = _MODES[what]
            setattr(self.opts, attr, value)
            _say(f"Set '{what}' mode.")
        elif what == "format" and args[1:] == ["json"]:
            self.opts.format = "json"
            _say("Set format to 'json' mode.")
        elif what == "noformat":
            self.opts.format = None
            _say("Disabled format.")
        elif what in ("think", "nothink"):
            self.set_think(what, args[1:])
        else:
            _say(SET_HELP)

    def set_think(self, what: str, args: list[str]) -> None:
        """``/set think [level]`` or ``/set nothink``: sent with every later message."""
        try:
            think = parse_think(args[0]) if what == "think" and args else what == "think"
        except LlmhostError as e:
            render.print_error(str(e).replace("--think", "/set think"))
            return
        self.opts.think = think
        if "thinking" not in (self.info.get("capabilities") or []):
            sys.stderr.write(f'warning: model "{self.opts.model}" does not support thinking output\n')
        if isinstance(think, str):
            _say(f"Set 'think' mode to '{think}'.")
        else:
            _say(f"Set '{'think' if think else 'nothink'}' mode.")

    def set_parameter(self, args: list[str]) -> None:
        from llmhost.api.options import merge_parameters, parse_parameter

        if len(args) < 2:
            _say(PARAMETER_HELP)
            return
        name, values = args[0], args[1:]
        try:
            if name == "stop":
                parsed = {"stop": [v for text in values for v in parse_parameter("stop", text)]}
            else:
                parsed = {name: parse_parameter(name, " ".join(values))}
        except LlmhostError as e:
            render.print_error(str(e))
            return
        self.opts.options = merge_parameters(self.opts.options or {}, parsed)
        _say(f"Set parameter '{name}' to '{', '.join(values)}'")

    def show(self, args: list[str]) -> None:
        what = args[0] if args else ""
        info = self.info
        if what == "info":
            _say(render.show_info(info))
        elif what == "license":
            _say(info.get("license") or "No license was specified for this model.")
        elif what == "modelfile":
            _say(info.get("modelfile") or "")
        elif what == "parameters":
            _say(self.parameters_text())
        elif what == "system":
            _say(self.opts.system or info.get("system") or "No system message was specified for this model.")
        elif what == "template":
            _say(info.get("template") or "No prompt template was specified for this model.")
        else:
            _say(SHOW_HELP)

    def parameters_text(self) -> str:
        model = (self.info.get("parameters") or "").strip()
        text = "Model defined parameters:\n" + model if model else "No parameters were specified for this model."
        if self.opts.options:
            rows = "\n".join(f"  {k:<15} {_value(v)}" for k, v in self.opts.options.items())
            text += "\n\nUser defined parameters:\n" + rows
        return text


def _assistant(content: str, thinking: str) -> dict[str, Any]:
    """The history entry of an answer; its thinking kept apart, as Ollama's client keeps it."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    return message


def _value(value: Any) -> str:
    return " ".join(f'"{v}"' for v in value) if isinstance(value, list) else str(value)


def _say(text: str) -> None:
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    sys.stdout.flush()


def _terminal_input() -> Callable[[str], str]:
    """``input`` with line editing when a terminal is attached."""
    try:
        import readline  # noqa: F401 - importing it gives input() editing and history
    except ImportError:
        pass
    return input
