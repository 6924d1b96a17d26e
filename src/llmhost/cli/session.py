"""What every command needs before it talks to the daemon: settings, a client, a running daemon."""

from __future__ import annotations

from dataclasses import dataclass

import typer

from llmhost.api.client import Client
from llmhost.config import ClientSettings
from llmhost.errors import NotFound


@dataclass(frozen=True)
class CliOptions:
    """Options of the ``llm`` group itself, kept in the root context's ``obj``."""

    autostart: bool = True


def connect(ctx: typer.Context) -> Client:
    """A client of a running daemon, started in the background if none answers."""
    from llmhost.cli.daemon_process import ensure_daemon

    options = ctx.find_root().obj or CliOptions()
    client = Client.from_settings(ClientSettings.from_env())
    ensure_daemon(client, autostart=options.autostart)
    return client


def require_model(client: Client, model: str, insecure: bool = False) -> dict:
    """``/api/show`` of ``model``, pulling it first (with progress) when it is not local."""
    try:
        return client.show(model)
    except NotFound:
        pass
    from llmhost.cli.render import progress_events

    progress_events(client.pull(model, insecure=insecure))
    return client.show(model)


def unload(client: Client, model: str) -> None:
    """Ask the daemon to unload ``model`` now (an empty generate with keep_alive 0)."""
    client.generate(model, "", stream=False, keep_alive=0)

