"""Errors in each protocol's dialect: one status per error class, one name per status and dialect.

A table of every status the tree has × the four dialects (body shape, status, type name or code), the
way back from a status to its class (what the CLI's client and the runner client read), and the one
middleware that picks the dialect by path.
"""

from __future__ import annotations

import errno
import inspect
import json
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from llmhost import errors
from llmhost.daemon.dialects import Dialect, as_error, error_response, errors_middleware, in_band_error, render_error
from llmhost.errors import (
    AccessDenied,
    BadRequest,
    BodyTimeout,
    BodyTooLarge,
    ClientClosed,
    InvalidManifest,
    LlmhostError,
    MethodNotAllowed,
    ModelNotFound,
    NoSpace,
    NotFound,
    RunnerError,
    ServerBusy,
    Unauthorized,
    from_status,
)

# status, class, OpenAI type, OpenAI code, Anthropic type, Docker code
NAMES = [
    pytest.param(400, BadRequest, "invalid_request_error", None, "invalid_request_error", "UNSUPPORTED", id="400"),
    pytest.param(401, Unauthorized, "invalid_request_error", "invalid_api_key", "authentication_error",
                 "UNAUTHORIZED", id="401"),
    pytest.param(403, AccessDenied, "api_error", None, "permission_error", "DENIED", id="403"),
    pytest.param(404, NotFound, "not_found_error", None, "not_found_error", "NAME_UNKNOWN", id="404"),
    pytest.param(405, MethodNotAllowed, "api_error", None, "api_error", "UNSUPPORTED", id="405"),
    pytest.param(408, BodyTimeout, "api_error", None, "api_error", "UNKNOWN", id="408"),
    pytest.param(413, BodyTooLarge, "api_error", None, "request_too_large", "UNSUPPORTED", id="413"),
    pytest.param(499, ClientClosed, "api_error", None, "api_error", "UNKNOWN", id="499"),
    pytest.param(503, ServerBusy, "api_error", None, "overloaded_error", "UNAVAILABLE", id="503"),
    pytest.param(507, NoSpace, "api_error", None, "api_error", "UNKNOWN", id="507"),
    pytest.param(500, LlmhostError, "api_error", None, "api_error", "UNKNOWN", id="500"),
]
TREE = [cls for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, LlmhostError) and cls.__module__ == errors.__name__]


def _one(cls: type[LlmhostError]) -> LlmhostError:
    return ModelNotFound("m") if cls is ModelNotFound else cls("the message")


@pytest.mark.parametrize("status, cls, openai, code, anthropic, docker", NAMES)
@pytest.mark.parametrize("dialect", list(Dialect))
def test_each_status_in_each_dialect(dialect, status, cls, openai, code, anthropic, docker):
    error = cls("the message")
    expected = {
        Dialect.OLLAMA: {"error": "the message"},
        Dialect.OPENAI: {"error": {"message": "the message", "type": openai, "param": None, "code": code}},
        Dialect.ANTHROPIC: {"type": "error", "error": {"type": anthropic, "message": "the message"}},
        Dialect.DOCKER: {"errors": [{"code": docker, "message": "the message", "detail": {}}]},
    }[dialect]
    assert render_error(error, dialect) == (status, expected)


@pytest.mark.parametrize("cls", TREE, ids=lambda cls: cls.__name__)
def test_every_class_of_the_tree_has_a_status_in_the_table(cls):
    statuses = {case.values[0] for case in NAMES}
    assert cls.status in statuses, f"{cls.__name__}: add its status {cls.status} to NAMES"
    for dialect in Dialect:
        assert render_error(_one(cls), dialect)[0] == cls.status


@pytest.mark.parametrize("error, like", [
    pytest.param(InvalidManifest("bad"), BadRequest, id="a-bad-request-subclass"),
    pytest.param(ModelNotFound("ghost"), NotFound, id="a-not-found-subclass"),
    pytest.param(RunnerError("crashed"), LlmhostError, id="a-500-sibling"),
])
@pytest.mark.parametrize("dialect", list(Dialect))
def test_a_subclass_speaks_as_its_status(error, like, dialect):
    assert render_error(error, dialect) == render_error(like(error.message), dialect)


def test_openai_bodies_are_byte_for_byte_what_they_were():
    response = error_response(NotFound("model 'x' not found"), Dialect.OPENAI)
    assert response.text == json.dumps({"error": {"message": "model 'x' not found", "type": "not_found_error",
                                                  "param": None, "code": None}})


def test_a_route_gives_docker_its_precise_code_and_detail():
    response = error_response(NotFound("manifest unknown"), Dialect.DOCKER, code="MANIFEST_UNKNOWN",
                              detail={"Tag": "v1"})
    assert response.status == 404 and response.headers["Docker-Distribution-API-Version"] == "registry/2.0"
    assert json.loads(response.text) == {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown",
                                                     "detail": {"Tag": "v1"}}]}


# --- back from a status -------------------------------------------------------------------------------


@pytest.mark.parametrize("status, cls, openai, code, anthropic, docker", NAMES)
def test_a_status_comes_back_as_its_class(status, cls, openai, code, anthropic, docker):
    error = from_status(status, "the daemon's words")
    assert type(error) is cls and error.status == status and error.message == "the daemon's words"
    for dialect in Dialect:  # and renders as it came
        assert render_error(error, dialect) == render_error(cls("the daemon's words"), dialect)


@pytest.mark.parametrize("status, fallback, cls, kept", [
    pytest.param(502, LlmhostError, LlmhostError, 502, id="unknown-status-kept"),
    pytest.param(200, LlmhostError, LlmhostError, 500, id="error-line-in-a-200-stream"),
    pytest.param(500, RunnerError, RunnerError, 500, id="runner-500"),
    pytest.param(400, RunnerError, BadRequest, 400, id="runner-400"),
    pytest.param(503, RunnerError, ServerBusy, 503, id="runner-busy"),
])
def test_statuses_without_a_class_take_the_fallback(status, fallback, cls, kept):
    error = from_status(status, "m", fallback=fallback)
    assert type(error) is cls and error.status == kept


def test_each_status_has_one_class():
    children = [cls for cls in TREE if LlmhostError in cls.__bases__ and cls.status != 500]
    assert len({cls.status for cls in children}) == len(children)


# --- which dialect, and the middleware that uses it ----------------------------------------------------


@pytest.mark.parametrize("path, dialect", [
    ("/api/chat", Dialect.OLLAMA), ("/", Dialect.OLLAMA), ("/v1", Dialect.OLLAMA),
    ("/v1/chat/completions", Dialect.OPENAI), ("/v1/responses/resp_1", Dialect.OPENAI),
    ("/v1/rerank", Dialect.OPENAI), ("/v1/messages", Dialect.ANTHROPIC),
    ("/v1/messages/count_tokens", Dialect.ANTHROPIC), ("/v1/messagesx", Dialect.OPENAI),
    ("/v2", Dialect.DOCKER), ("/v2/library/tiny/manifests/latest", Dialect.DOCKER),
])
def test_the_path_picks_the_dialect(path, dialect):
    assert Dialect.of(path) is dialect


@pytest.fixture
async def failing_app():
    """Every path raises what its query says: an LlmhostError of that status, or a bug."""

    async def fail(request: web.Request) -> web.Response:
        status = int(request.query["status"])
        if status == 0:
            raise OSError(errno.ENOSPC, "No space left on device", "/secret/path")
        raise from_status(status, "refused")

    app = web.Application(middlewares=[errors_middleware])
    app.router.add_route("*", "/{tail:.*}", fail)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


@pytest.mark.parametrize("path, status, body", [
    pytest.param("/api/generate", 404, {"error": "refused"}, id="ollama"),
    pytest.param("/v1/chat/completions", 401, {"error": {"message": "refused", "type": "invalid_request_error",
                                                         "param": None, "code": "invalid_api_key"}}, id="openai-401"),
    pytest.param("/v1/messages", 401, {"type": "error", "error": {"type": "authentication_error",
                                                                  "message": "refused"}}, id="anthropic-401"),
    pytest.param("/v2/library/x/blobs/y", 401, {"errors": [{"code": "UNAUTHORIZED", "message": "refused",
                                                            "detail": {}}]}, id="docker-401"),
    pytest.param("/v1/embeddings", 0, {"error": {"message": "internal error: no space left on device",
                                                 "type": "api_error", "param": None, "code": None}}, id="openai-bug"),
    pytest.param("/api/tags", 0, {"error": "internal error: no space left on device"}, id="ollama-bug"),
])
async def test_the_middleware_answers_in_the_routes_dialect(failing_app, path, status, body):
    r = await failing_app.get(path, params={"status": str(status)})
    assert r.status == (status or 500) and await r.json() == body
    assert ("Docker-Distribution-API-Version" in r.headers) == path.startswith("/v2")


def test_a_bug_in_band_is_logged_and_told_without_its_path(caplog):
    caplog.set_level(logging.ERROR)
    body = in_band_error(FileNotFoundError(2, "No such file or directory", "/home/me/models/x"), Dialect.OLLAMA)
    assert body == {"error": "internal error: no such file or directory"} and "stream failed" in caplog.text
    assert "/home/me" not in json.dumps(body)


def test_an_llmhost_error_stays_itself():
    busy = ServerBusy()
    assert as_error(busy) is busy
