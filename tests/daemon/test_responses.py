"""OpenAI's Responses API on the daemon, with fake runners behind the seam.

What reaches the runner (the native mapping of input items, tools, formats, reasoning), the response
object and its SSE events checked against the official client's own types, the stored conversation
that ``previous_response_id`` continues, the store's bounds, its survival across a restart, and ids
that must never become paths outside it.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pydantic
import pytest
from openai.types.responses import Response, ResponseStreamEvent

from llmhost.daemon.responses_store import ResponseStore, StoredResponse
from llmhost.errors import NotFound
from llmhost.registry.store import Store
from tests.daemon.conftest import add_model
from tests.daemon.fakes import FakeClock
from tests.daemon.test_agent_routes import CALL_LINE, THINK_TEMPLATE, TOOLS_TEMPLATE
from tests.support.daemon_app import start_app

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
LENGTH_LINE = {"done": True, "done_reason": "length", "prompt_eval_count": 5, "eval_count": 1}
EVENTS = pydantic.TypeAdapter(ResponseStreamEvent)


@pytest.fixture(scope="module")
def template_store(tmp_path_factory, tiny_gguf) -> Path:
    """A plain model, a tools model and a thinking model (overrides conftest's, once per module)."""
    root = tmp_path_factory.mktemp("responses") / "models"
    store = Store(root)
    add_model(store, "tiny", tiny_gguf)
    add_model(store, "tools", tiny_gguf, template=TOOLS_TEMPLATE)
    add_model(store, "thinker", tiny_gguf, template=THINK_TEMPLATE)
    return root


async def create(harness, **body) -> tuple[int, dict]:
    response = await harness.client.post("/v1/responses", json={"model": "tiny", **body})
    return response.status, await response.json()


async def created(harness, **body) -> dict:
    status, answer = await create(harness, **body)
    assert status == 200, answer
    Response.model_validate(answer)  # the official client's type, validated strictly
    return answer


async def events(harness, **body) -> list[dict]:
    response = await harness.client.post("/v1/responses", json={"model": "tiny", "stream": True, **body})
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    parsed = []
    for block in (await response.text()).strip().split("\n\n"):
        name, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert name == f"event: {event['type']}"
        EVENTS.validate_python(event)
        parsed.append(event)
    assert [e["sequence_number"] for e in parsed] == list(range(len(parsed)))
    return parsed


def sent(harness) -> dict:
    return harness.factory.started[-1].bodies[-1]


# --- request → native ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, messages",
    [
        pytest.param({"input": "hi", "instructions": "Be brief."},
                     [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                     id="string-input-and-instructions"),
        pytest.param({"input": [{"role": "developer", "content": "Rules."},
                                {"type": "message", "role": "user",
                                 "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
                                {"role": "assistant", "content": [{"type": "output_text", "text": "c"}]}]},
                     [{"role": "system", "content": "Rules."}, {"role": "user", "content": "ab"},
                      {"role": "assistant", "content": "c"}],
                     id="message-items-with-parts"),
        pytest.param({"input": [{"role": "user", "content": "Weather?"},
                                {"type": "reasoning", "summary": [{"type": "summary_text", "text": "Look it up."}]},
                                {"type": "function_call", "call_id": "call_1", "name": "get_weather",
                                 "arguments": '{"city": "Paris"}'},
                                {"type": "function_call_output", "call_id": "call_1", "output": "18C"}]},
                     [{"role": "user", "content": "Weather?"},
                      {"role": "assistant", "content": "", "thinking": "Look it up.",
                       "reasoning_content": "Look it up.",
                       "tool_calls": [{"type": "function", "id": "call_1",
                                       "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
                      {"role": "tool", "content": "18C", "tool_call_id": "call_1", "tool_name": "get_weather",
                       "name": "get_weather"}],
                     id="reasoning-call-and-output"),
    ],
)
async def test_input_items_become_native_messages(harness, body, messages):
    await created(harness, **body)
    assert sent(harness)["messages"] == messages


async def test_sampling_format_and_tools_reach_the_runner(harness):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    await created(harness, model="tools", input="hi", tools=[WEATHER], max_output_tokens=32, temperature=0.2,
                  top_p=0.5, tool_choice={"type": "function", "name": "get_weather"},
                  text={"format": {"type": "json_schema", "name": "city", "schema": schema}})
    body = sent(harness)
    assert body["tools"] == [{"type": "function", "function": {k: WEATHER[k] for k in
                                                               ("name", "description", "parameters")}}]
    assert body["tool_choice"] == {"name": "get_weather"} and body["format"] == schema
    assert {k: body["options"][k] for k in ("num_predict", "temperature", "top_p")} == \
        {"num_predict": 32, "temperature": 0.2, "top_p": 0.5}
    await created(harness, input="hi", text={"format": {"type": "json_object"}})
    assert sent(harness)["format"] == "json" and sent(harness)["options"]["temperature"] == 1.0


@pytest.mark.parametrize("effort, think", [("none", False), ("minimal", "low"), ("high", "high"), (None, True)])
async def test_reasoning_effort_maps_to_think(harness, effort, think):
    await created(harness, model="thinker", input="hi", **({"reasoning": {"effort": effort}} if effort else {}))
    assert sent(harness)["think"] == think


@pytest.mark.parametrize(
    "body, status, error",
    [
        pytest.param({}, 400, '"input" must be a string or a non-empty array', id="no-input"),
        pytest.param({"input": []}, 400, '"input" must be a string or a non-empty array', id="empty-input"),
        pytest.param({"input": [{"type": "web_search_call"}]}, 400, "unsupported input item type",
                     id="unknown-item"),
        pytest.param({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, 400,
                     "invalid image input", id="image-part-not-a-data-url"),
        pytest.param({"input": "hi", "tools": [{"type": "web_search"}]}, 400, 'only "function" tools',
                     id="built-in-tool"),
        pytest.param({"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "allowed_tools"}}, 400,
                     'unsupported "tool_choice" type', id="allowed-tools-choice"),
        pytest.param({"input": "hi", "text": {"format": {"type": "yaml"}}}, 400, 'invalid "text.format"',
                     id="unknown-format"),
        pytest.param({"input": "hi", "background": True}, 400, "background responses are not supported",
                     id="background"),
        pytest.param({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{oops"}]},
                     400, "arguments must be a JSON object", id="call-arguments-not-json"),
        pytest.param({"input": "hi", "previous_response_id": "resp_0123"}, 404,
                     "Previous response with id 'resp_0123' not found.", id="unknown-previous"),
        pytest.param({"input": "hi", "previous_response_id": "../models"}, 400, "invalid response id",
                     id="traversal-previous"),
    ],
)
async def test_bad_requests_fail_in_openai_shape_before_anything_starts(harness, body, status, error):
    code, answer = await create(harness, **body)
    assert code == status and error in answer["error"]["message"]
    assert answer["error"]["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    assert harness.factory.started == []


# --- response object and events -------------------------------------------------------------------


async def test_text_answer_with_usage_and_cached_tokens(harness):
    first = await created(harness, input="hi")
    assert first["object"] == "response" and first["id"].startswith("resp_") and first["status"] == "completed"
    (message,) = first["output"]
    assert message["type"] == "message" and message["content"][0]["text"] == "Hello, world"
    assert first["usage"]["input_tokens"] == 5 and first["usage"]["output_tokens"] == 3
    harness.factory.started[0].cached = 4  # the runner now reports 4 prompt tokens from its KV cache
    second = await created(harness, input="again", previous_response_id=first["id"])
    usage = second["usage"]
    assert usage["input_tokens"] == 9 and usage["input_tokens_details"]["cached_tokens"] == 4
    assert usage["total_tokens"] == 12 and second["previous_response_id"] == first["id"]


async def test_thinking_and_calls_become_reasoning_and_function_call_items(harness):
    harness.factory.words = [{"thinking": "Paris, "}, {"thinking": "so look it up."}, "Checking.", CALL_LINE]
    answer = await created(harness, model="tools", input="Weather?", tools=[WEATHER])
    reasoning, message, call = answer["output"]
    assert reasoning["type"] == "reasoning" and reasoning["content"] == [
        {"type": "reasoning_text", "text": "Paris, so look it up."}]
    assert reasoning["summary"][0]["text"] == "Paris, so look it up."
    assert message["content"][0]["text"] == "Checking."
    assert call["type"] == "function_call" and call["name"] == "get_weather" and call["status"] == "completed"
    assert call["call_id"].startswith("call_") and json.loads(call["arguments"]) == {"city": "Paris"}
    assert answer["tools"] == [{**WEATHER, "strict": None}]


async def test_max_output_tokens_makes_an_incomplete_response(harness):
    harness.factory.words = ["Hi", LENGTH_LINE]
    answer = await created(harness, input="hi", max_output_tokens=1)
    assert answer["status"] == "incomplete" and answer["incomplete_details"] == {"reason": "max_output_tokens"}
    assert answer["output"][0]["status"] == "incomplete" and answer["max_output_tokens"] == 1
    streamed = await events(harness, input="hi", max_output_tokens=1)
    assert streamed[-1]["type"] == "response.incomplete"


async def test_stream_events_come_in_the_order_the_client_builds_from(harness):
    harness.factory.words = [{"thinking": "Hmm."}, "Let me", " check.", CALL_LINE]
    streamed = await events(harness, model="tools", input="Weather?", tools=[WEATHER])
    assert [e["type"] for e in streamed] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    final = streamed[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message", "function_call"]
    assert [e["output_index"] for e in streamed if e["type"] == "response.output_item.added"] == [0, 1, 2]
    stored = await (await harness.client.get(f"/v1/responses/{final['id']}")).json()
    assert stored == final
    assert all(resident.idle for resident in harness.residency.residents())


async def test_a_runner_failure_mid_stream_is_a_failed_response_and_nothing_is_stored(harness):
    harness.factory.words = ["Hel", {"error": "model runner crashed (signal 9)"}]
    streamed = await events(harness, input="hi")
    assert streamed[-1]["type"] == "response.failed"
    failed = streamed[-1]["response"]
    assert failed["status"] == "failed" and "crashed" in failed["error"]["message"]
    assert (await harness.client.get(f"/v1/responses/{failed['id']}")).status == 404
    assert all(resident.idle for resident in harness.residency.residents()), "the runner is free again"


# --- state ------------------------------------------------------------------------------------------


async def test_previous_response_id_sends_the_whole_conversation_again(harness):
    first = await created(harness, input="hi", instructions="Be brief.")
    second = await created(harness, input="more", instructions="Be brief.", previous_response_id=first["id"])
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "Hello, world"}, {"role": "user", "content": "more"}]
    assert sent(harness)["messages"] == conversation
    # Instructions are the turn's own (OpenAI's rule); the model carries over when a turn names none.
    await created(harness, input="last", previous_response_id=second["id"], model=None)
    assert sent(harness)["messages"] == [*conversation[1:], {"role": "assistant", "content": "Hello, world"},
                                         {"role": "user", "content": "last"}]


async def test_tool_results_answer_the_stored_call(harness):
    harness.factory.words = [CALL_LINE]
    first = await created(harness, model="tools", input="Weather?", tools=[WEATHER])
    call_id = first["output"][0]["call_id"]
    harness.factory.started[0].words = ["18 degrees."]
    await created(harness, model="tools", tools=[WEATHER], previous_response_id=first["id"],
                  input=[{"type": "function_call_output", "call_id": call_id, "output": "18C"}])
    *_, assistant, tool = sent(harness)["messages"]
    assert assistant["tool_calls"][0]["id"] == call_id
    assert tool == {"role": "tool", "content": "18C", "tool_call_id": call_id, "tool_name": "get_weather",
                    "name": "get_weather"}


async def test_retrieve_delete_and_store_false(harness):
    answer = await created(harness, input="hi")
    path = f"/v1/responses/{answer['id']}"
    assert await (await harness.client.get(path)).json() == answer
    file = harness.store.root / "responses" / f"{answer['id']}.json"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600, "conversations are private"
    deleted = await harness.client.delete(path)
    assert await deleted.json() == {"id": answer["id"], "object": "response.deleted", "deleted": True}
    gone = await harness.client.get(path)
    assert gone.status == 404 and (await gone.json())["error"]["message"] == \
        f"Response with id '{answer['id']}' not found."
    assert (await harness.client.delete(path)).status == 404
    unstored = await created(harness, input="hi", store=False)
    assert unstored["store"] is False
    assert (await harness.client.get(f"/v1/responses/{unstored['id']}")).status == 404


async def test_a_response_that_cannot_be_stored_is_an_error_not_a_silent_loss(harness):
    (harness.store.root / "responses").write_text("in the way")  # the store directory cannot be made
    status, answer = await create(harness, input="hi")
    assert status == 500 and "could not store response" in answer["error"]["message"]
    streamed = await events(harness, input="hi")
    assert streamed[-1]["type"] == "response.failed"
    assert (await create(harness, input="hi", store=False))[0] == 200


@pytest.mark.parametrize("method", ["get", "delete"])
@pytest.mark.parametrize("path_id", ["..%2Fbait", "resp_x.json", "resp_..%2F..%2Fbait", "%2e%2e%2Fbait"])
async def test_ids_never_reach_outside_the_store(harness, method, path_id):
    bait = harness.store.root / "bait.json"
    bait.write_text("{}")
    response = await getattr(harness.client, method)(f"/v1/responses/{path_id}")
    assert response.status in (400, 404)
    assert bait.exists()


async def test_stored_responses_survive_a_restart(harness, tmp_path):
    first = await created(harness, input="hi")
    await harness.client.close()
    restarted = await start_app(harness.store, tmp_path / "t")
    try:
        client = restarted.client
        assert await (await client.get(f"/v1/responses/{first['id']}")).json() == first
        answer = await client.post("/v1/responses", json={"input": "more", "previous_response_id": first["id"]})
        assert answer.status == 200
        bodies = restarted.factory.started[0].bodies
        assert [m["content"] for m in bodies[0]["messages"]] == ["hi", "Hello, world", "more"]
    finally:
        await restarted.client.close()


async def test_the_store_is_bounded_by_count_and_age(tmp_path):
    clock = FakeClock()
    store = ResponseStore(tmp_path / "responses", max_count=3, max_age=3600, clock=clock)
    for n in range(5):
        await store.put(f"resp_{n}", StoredResponse({"id": f"resp_{n}", "model": "m"}, ()))
        clock.advance(1)
    for n in (0, 1):
        with pytest.raises(NotFound):
            await store.get(f"resp_{n}")
    assert (await store.get("resp_4")).model == "m"
    clock.advance(3600)
    with pytest.raises(NotFound):
        await store.get("resp_4")
    assert sorted(os.listdir(tmp_path / "responses")) == ["resp_2.json", "resp_3.json"]  # pruned at the next put


async def test_a_damaged_file_is_not_found_and_removed(tmp_path):
    store = ResponseStore(tmp_path)
    (tmp_path / "resp_1.json").write_text("{not json")
    with pytest.raises(NotFound, match="damaged"):
        await store.get("resp_1")
    assert not (tmp_path / "resp_1.json").exists()


# --- the official client --------------------------------------------------------------------------


async def test_official_client_create_stream_continue_retrieve_delete(harness, openai_client):
    import openai

    first = await openai_client.responses.create(model="tiny", input="hi", instructions="Be brief.")
    assert first.output_text == "Hello, world" and first.usage.input_tokens_details.cached_tokens == 0

    async with openai_client.responses.stream(model="tiny", input="more", previous_response_id=first.id) as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        second = await stream.get_final_response()
    assert "".join(deltas) == second.output_text == "Hello, world"
    assert second.previous_response_id == first.id
    assert [m["content"] for m in sent(harness)["messages"]] == ["hi", "Hello, world", "more"]

    raw = await openai_client.responses.create(model="tiny", input="again", previous_response_id=second.id, stream=True)
    kinds = [event.type async for event in raw]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert len(sent(harness)["messages"]) == 5

    assert (await openai_client.responses.retrieve(second.id)).output_text == "Hello, world"
    await openai_client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError, match="not found"):
        await openai_client.responses.retrieve(second.id)


async def test_official_client_function_call_round_trip(harness, openai_client):

    harness.factory.words = [CALL_LINE]
    first = await openai_client.responses.create(model="tools", input="Weather?", tools=[WEATHER])
    (call,) = [item for item in first.output if item.type == "function_call"]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    harness.factory.started[0].words = ["It is 18C."]  # the running model's next answer
    second = await openai_client.responses.create(model="tools", tools=[WEATHER], previous_response_id=first.id,
                                                  input=[{"type": "function_call_output", "call_id": call.call_id,
                                                          "output": "18C"}])
    assert second.output_text == "It is 18C."
