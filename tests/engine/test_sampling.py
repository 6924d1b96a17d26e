"""JSON schemas are checked before they become grammars: a clear 400 instead of gigabytes or a crash."""

from __future__ import annotations

import time

import pytest

from llmhost.engine.parsing.tool_calls import ToolFormat
from llmhost.engine.parsing.tool_grammar import tool_call_grammar
from llmhost.engine.sampling import check_schema, grammar_for_format
from llmhost.errors import BadRequest


def nested(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    "schema, message",
    [
        pytest.param({"type": "string", "minLength": 1e9}, '"minLength" of 1000000000 ', id="min-length-1e9"),
        pytest.param({"type": "string", "minLength": 100_000}, '"minLength" of 100000', id="min-length"),
        # Nested optional groups: ~32000 of them crash llama.cpp's grammar parser.
        pytest.param({"type": "string", "maxLength": 40_000}, '"maxLength"', id="max-length"),
        pytest.param({"type": "array", "items": {"type": "integer"}, "minItems": 10**6}, '"minItems"', id="min-items"),
        pytest.param({"type": "array", "maxItems": 5000}, '"maxItems"', id="max-items"),
        pytest.param({"type": "string", "pattern": "^a{0,50000}$"}, '"pattern"', id="pattern-count"),
        pytest.param({"type": "object", "properties": {f"p{i}": {"type": "string", "maxLength": 1000}
                                                       for i in range(30)}, "required": [f"p{i}" for i in range(30)]},
                     "repeats 30000 times", id="repetitions-in-all"),
        pytest.param({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(900)}},
                     "900 optional properties", id="optional-properties"),
        pytest.param(nested(40), "nested more than 64 levels", id="depth"),
        pytest.param({"enum": ["x" * 1000] * 2000}, "larger than the limit", id="size"),
    ],
)
def test_schemas_beyond_the_limits_are_refused_at_once(schema, message):
    start = time.monotonic()
    with pytest.raises(BadRequest, match=message) as refused:
        grammar_for_format(schema)
    assert "limit" in str(refused.value) or "nested" in str(refused.value)
    assert time.monotonic() - start < 1


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param({"type": "string", "minLength": 1, "maxLength": 1000}, id="max-length-1000"),
        pytest.param({"type": "array", "items": {"type": "integer"}, "minItems": 1000}, id="min-items-1000"),
        pytest.param({"type": "object", "properties": {f"p{i}": {"type": "integer"} for i in range(64)}},
                     id="64-optional-properties"),
        pytest.param(nested(30), id="30-levels"),
        pytest.param({"type": "object", "properties": {"maxLength": {"type": "string"}}},
                     id="property-named-like-a-limit"),
    ],
)
def test_schemas_within_the_limits_still_compile(schema):
    assert "root ::=" in grammar_for_format(schema)


def test_forced_tool_call_schemas_are_checked_too():
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"xs": {"type": "array", "minItems": 100_000}}}}}]
    with pytest.raises(BadRequest, match='"minItems" of 100000 in the JSON schema in the tools'):
        tool_call_grammar(ToolFormat.HERMES, tools)


def test_check_schema_accepts_ordinary_tool_schemas():
    check_schema([{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 100}}, "required": ["city"]}}}],
        "the tools")
