"""Structured output through Chat Completions on every provider type: `response_format`
json_schema via the openai SDK's `.parse()` (JSON and stream), and json_object. Anthropic and
Bedrock have no `response_format`: the sidecar uses their own structured outputs where the model
has them (the Anthropic route's claude-sonnet-4-5) and a forced tool call elsewhere (the Bedrock
route's Claude 3 Haiku); either way the answer is the JSON text."""

from __future__ import annotations

import json
from typing import Optional

import openai
import pytest
from pydantic import BaseModel, Field

from conftest import ALL, route_params


class City(BaseModel):
    name: str
    population: int


@pytest.fixture
def client(stack):
    return openai.OpenAI(base_url=stack.openai_base_url, api_key="unused", max_retries=0, timeout=30)


@pytest.mark.parametrize("provider", route_params(ALL))
def test_parse(client, provider):
    raw = client.chat.completions.with_raw_response.parse(
        model=f"via-{provider.name}",
        messages=[{"role": "user", "content": "Biggest city?"}],
        response_format=City,
    )
    assert "x-gatehouse-warning" not in raw.headers, raw.headers.get("x-gatehouse-warning")
    completion = raw.parse()
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.tool_calls in (None, [])
    assert choice.message.parsed == City(name="mock", population=1)
    sent = provider.requests()[-1]["body"]
    if provider.name == "anthropic":
        assert sent["output_config"]["format"]["type"] == "json_schema"
    if provider.name == "bedrock":
        assert sent["toolConfig"]["toolChoice"] == {"tool": {"name": "gatehouse_json_response"}}


@pytest.mark.parametrize("provider", route_params(ALL))
def test_stream_parse(client, provider):
    with client.chat.completions.stream(
        model=f"via-{provider.name}",
        messages=[{"role": "user", "content": "Biggest city?"}],
        response_format=City,
    ) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.parsed == City(name="mock", population=1)
    assert final.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("provider", route_params(ALL))
def test_json_object(client, provider):
    resp = client.chat.completions.create(
        model=f"via-{provider.name}",
        messages=[{"role": "user", "content": "Answer in JSON"}],
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(resp.choices[0].message.content), dict)


@pytest.mark.parametrize("provider", route_params(["anthropic", "bedrock"]))
def test_app_tools_still_callable_with_a_response_format(client, provider):
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string"}}, "required": ["location"]}}}
    resp = client.chat.completions.create(
        model=f"via-{provider.name}",
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
        tools=[weather],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        response_format={"type": "json_object"},
    )
    calls = resp.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather"]
    assert resp.choices[0].finish_reason == "tool_calls"


# Claude's structured outputs refuse some JSON Schema (numeric and length constraints, open maps,
# recursion…); the mocks refuse them as Anthropic and Bedrock do. The sidecar moves value
# constraints into the description, and sends what cannot be reduced through the forced tool.
NATIVE_ROUTES = [("anthropic", "via-anthropic"), ("bedrock", "via-bedrock-sonnet")]


class Person(BaseModel):
    name: str = Field(min_length=1, max_length=40, description="Full name")
    age: int = Field(ge=0, le=150)
    tags: list[str] = Field(max_length=3)


class Inventory(BaseModel):
    counts: dict[str, int]  # an open map: additionalProperties is a schema


class Node(BaseModel):
    label: str
    next: Optional["Node"] = None  # recursive


def sent_schema(provider):
    """The native structured-output schema the provider received, or None."""
    body = provider.requests()[-1]["body"]
    if provider.name == "anthropic":
        return body.get("output_config", {}).get("format", {}).get("schema")
    text = body.get("outputConfig", {}).get("textFormat", {}).get("structure", {}).get("jsonSchema", {}).get("schema")
    return json.loads(text) if text else None


@pytest.mark.parametrize("name,route", NATIVE_ROUTES, ids=[n for n, _ in NATIVE_ROUTES])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_constraints_claude_refuses_move_into_descriptions(client, stack, name, route, stream):
    messages = [{"role": "user", "content": "Who is it?"}]
    if stream:
        with client.chat.completions.stream(model=route, messages=messages, response_format=Person) as s:
            completion = s.get_final_completion()
    else:
        completion = client.chat.completions.parse(model=route, messages=messages, response_format=Person)
    assert completion.choices[0].message.parsed == Person(name="mock", age=1, tags=["mock"])
    schema = sent_schema(stack.providers[name])
    assert schema is not None, "still the provider's own structured outputs"
    age = schema["properties"]["age"]
    assert "minimum" not in age and "maximum" not in age
    assert '"minimum":0' in age["description"] and '"maximum":150' in age["description"]
    assert schema["properties"]["name"]["description"].startswith("Full name")
    assert "maxItems" not in schema["properties"]["tags"]


@pytest.mark.parametrize("name,route", NATIVE_ROUTES, ids=[n for n, _ in NATIVE_ROUTES])
@pytest.mark.parametrize("model", [Inventory, Node], ids=["open-map", "recursive"])
def test_schemas_claude_cannot_take_go_through_the_forced_tool(client, stack, name, route, model):
    completion = client.chat.completions.parse(
        model=route, messages=[{"role": "user", "content": "Answer"}], response_format=model
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, model)
    assert completion.choices[0].finish_reason == "stop"
    provider = stack.providers[name]
    assert sent_schema(provider) is None
    body = provider.requests()[-1]["body"]
    if name == "anthropic":
        assert body["tool_choice"] == {"type": "tool", "name": "gatehouse_json_response"}
    else:
        assert body["toolConfig"]["toolChoice"] == {"tool": {"name": "gatehouse_json_response"}}
