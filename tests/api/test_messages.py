"""One message check: a request's messages and the runner's ``/completion`` messages are refused with
the same words (``api.types.message_fields``)."""

from __future__ import annotations

import pytest

from llmhost.api.types import ChatRequest, validate_messages
from llmhost.errors import BadRequest

BAD_MESSAGES = {
    "not an object": (["hi"], "invalid message at index 0: expected an object"),
    "no role": ([{"content": "no role"}], 'invalid message at index 0: "role" must be a non-empty string'),
    "empty role": ([{"role": "", "content": "x"}], 'invalid message at index 0: "role" must be a non-empty string'),
    "content not a string": ([{"role": "user", "content": "a"}, {"role": "user", "content": 3}],
                             'invalid message at index 1: "content" must be a string'),
    "thinking not a string": ([{"role": "assistant", "content": "", "thinking": ["x"]}],
                              'invalid message at index 0: "thinking" must be a string'),
}


@pytest.mark.parametrize("messages,error", BAD_MESSAGES.values(), ids=BAD_MESSAGES.keys())
def test_the_api_and_the_runner_refuse_a_message_alike(messages, error):
    with pytest.raises(BadRequest) as api:
        ChatRequest.from_json({"model": "m", "messages": messages})
    with pytest.raises(BadRequest) as runner:
        validate_messages(messages)
    assert str(api.value) == str(runner.value) == error


def test_messages_that_are_not_a_list_are_refused_alike():
    with pytest.raises(BadRequest) as api:
        ChatRequest.from_json({"model": "m", "messages": "hi"})
    with pytest.raises(BadRequest) as runner:
        validate_messages("hi")
    assert str(api.value) == str(runner.value) == 'invalid value for "messages": expected an array'


def test_the_runner_keeps_what_templates_read_and_empties_a_null_content():
    message = {"role": "assistant", "content": None, "reasoning_content": "hm", "tool_calls": [{"x": 1}]}
    assert validate_messages([message]) == [{**message, "content": ""}]
