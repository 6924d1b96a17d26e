"""The daemon's aiohttp application: middlewares, routes, shutdown."""

from __future__ import annotations

from aiohttp import web

from llmhost.daemon import (
    routes_anthropic,
    routes_inference,
    routes_models,
    routes_openai,
    routes_operate,
    routes_registry,
    routes_rerank,
    routes_responses,
    routes_transfer,
)
from llmhost.daemon.dialects import errors_middleware
from llmhost.daemon.security import add_cors_headers, make_api_key_middleware, make_security_middleware
from llmhost.daemon.state import STATE_KEY, DaemonState


def create_app(state: DaemonState, check_host: bool = True) -> web.Application:
    # Outermost first: every answer is counted; the key check raises inside the error middleware,
    # so each protocol gets its own error shape.
    middlewares = [state.metrics.middleware(), make_security_middleware(check_host, state.settings.origins),
                   errors_middleware]
    if state.settings.api_keys:
        middlewares.append(make_api_key_middleware(state.settings.api_keys))
    app = web.Application(
        middlewares=middlewares,
        client_max_size=64 * 1024**2,  # JSON bodies; blob uploads stream, bounded by LLMHOST_MAX_UPLOAD
    )
    app.on_response_prepare.append(add_cors_headers)
    app[STATE_KEY] = state
    app.add_routes(routes_models.routes)
    app.add_routes(routes_inference.routes)
    app.add_routes(routes_openai.routes)
    app.add_routes(routes_anthropic.routes)
    app.add_routes(routes_rerank.routes)
    routes_responses.install(app, state)
    app.add_routes(routes_transfer.routes)
    app.add_routes(routes_operate.routes)
    if state.settings.serve_registry:
        app.add_routes(routes_registry.routes)

    async def on_shutdown(app: web.Application) -> None:
        state.shutting_down = True
        await state.residency.shutdown()

    async def on_cleanup(app: web.Application) -> None:  # after the last handler has finished
        state.close()

    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return app
