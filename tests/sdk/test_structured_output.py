"""Structured output through Chat Completions on every provider type: `response_format`
json_schema via the openai SDK's `.parse()` (JSON and stream), and json_object. Anthropic and
Bedrock have no `response_format`: the sidecar uses their own structured outputs where the model
has them (the Anthropic route's claude-sonnet-4-5) and a forced tool call elsewhere (the Bedrock
route's Claude 3 Haiku); either way the answer is the JSON text."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

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
