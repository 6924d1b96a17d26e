"""The ``llm`` command: a typer app whose commands live one per module in ``llmhost.cli.commands``.

Every failure ends as one line ``Error: <message>`` on stderr and exit status 1 (130 for Ctrl+C),
never a traceback. Nothing heavy is imported here: commands import what they need when they run.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from llmhost.cli.commands import cp, create, ls, ps, pull, push, rm, run, serve, show, stop, worker
from llmhost.cli.session import CliOptions
from llmhost.errors import LlmhostError


class _Group(TyperGroup):
    """Turns any exception escaping a command into ``Error: <message>``."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except KeyboardInterrupt:
            sys.stderr.write("\n")
            raise typer.Exit(130) from None
        except BrokenPipeError:
            raise typer.Exit(1) from None
        except Exception as e:
            from llmhost.cli.render import print_error

            expected = isinstance(e, (LlmhostError, OSError)) and str(e)
            print_error(str(e) if expected else f"{type(e).__name__}: {e}")
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Group,
    name="llm",
    help="Large language model runner: a local daemon speaking Ollama's API.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if not value:
        return
    from llmhost import __version__
    from llmhost.api.client import Client
    from llmhost.config import ClientSettings

    try:
        server = Client.from_settings(ClientSettings.from_env(), timeout=2.0).version().get("llmhost")
    except LlmhostError:
        server = None
    if server is None:
        typer.echo("Warning: could not connect to a running llmhost daemon")
        typer.echo(f"Warning: client version is {__version__}")
    else:
        typer.echo(f"llmhost version is {server}")
        if server != __version__:
            typer.echo(f"Warning: client version is {__version__}")
    raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", "-v", is_eager=True, callback=_print_version, help="Show version information."
    ),
    no_autostart: bool = typer.Option(
        False, "--no-autostart", hidden=True, help="Fail instead of starting the daemon when none answers."
    ),
) -> None:
    ctx.obj = CliOptions(autostart=not no_autostart)


app.command("serve", help=serve.HELP, epilog=serve.epilog())(serve.command)
app.command("start", hidden=True, help=serve.HELP)(serve.command)
app.command("create", help=create.HELP)(create.command)
app.command("show", help=show.HELP)(show.command)
app.command("run", help=run.HELP, cls=run.Command)(run.command)
app.command("stop", help=stop.HELP)(stop.command)
app.command("pull", help=pull.HELP)(pull.command)
app.command("push", help=push.HELP)(push.command)
app.command("list", help=ls.HELP)(ls.command)
app.command("ls", hidden=True, help=ls.HELP)(ls.command)
app.command("ps", help=ps.HELP)(ps.command)
app.command("cp", help=cp.HELP)(cp.command)
app.command("rm", help=rm.HELP)(rm.command)
app.command("worker", help=worker.HELP)(worker.command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point (``llm``)."""
    app(args=argv, prog_name="llm")


if __name__ == "__main__":
    main()
