"""LiteLLM as a client of the sidecar, one run per provider type, pointed at it with only the
base URL (and a placeholder key) changed: `litellm.completion` (buffered, streamed, tools,
parallel tool calls, structured output), `litellm.responses()` and `litellm.embedding`. LiteLLM
speaks to the sidecar through its `openai/` provider (Chat Completions, Responses, embeddings),
and through its `anthropic/` provider (Messages) as a second dialect."""

from __future__ import annotations

import json

import litellm
import pytest
from pydantic import BaseModel

from conftest import ALL, WITH_EMBEDDINGS, route_params

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Local time in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
# LiteLLM's provider prefixes, each pointed at the sidecar: (prefix, base URL attribute).
DIALECTS = {"openai": "openai_base_url", "anthropic": "base_url"}
DIALECT_PARAMS = [pytest.param(d, id=d) for d in DIALECTS]


class City(BaseModel):
    name: str
    population: int


def expected_text(provider) -> str:
    return f"This is {provider.model} mock speaking."


def call(stack, dialect: str, provider) -> dict:
    """The arguments that point a LiteLLM call at the sidecar's route for `provider`."""
    return {
        "model": f"{dialect}/via-{provider.name}",
        "api_base": getattr(stack, DIALECTS[dialect]),
        "api_key": "unused",
        "num_retries": 0,
        "timeout": 30,
    }


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("dialect", DIALECT_PARAMS)
def test_completion(stack, dialect, provider):
    resp = litellm.completion(
        messages=[{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": "Say hello to the gateway"}],
        max_tokens=256,
        **call(stack, dialect, provider),
    )
    assert resp.choices[0].message.content == expected_text(provider)
    assert resp.choices[0].finish_reason == "stop"
    # "You are terse." + "Say hello to the gateway": 8 words, the mocks' token count.
    assert resp.usage.prompt_tokens == 8
    assert resp.usage.completion_tokens == 5


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("dialect", DIALECT_PARAMS)
def test_completion_stream(stack, dialect, provider):
    chunks = list(
        litellm.completion(
            messages=[{"role": "user", "content": "Say hello to the gateway"}],
            max_tokens=256,
            stream=True,
            stream_options={"include_usage": True},
            **call(stack, dialect, provider),
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected_text(provider)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) >= 2, "streamed"
    whole = litellm.stream_chunk_builder(chunks)
    assert whole.choices[0].message.content == expected_text(provider)
    assert whole.usage.prompt_tokens == 5
    assert whole.usage.completion_tokens == 5


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("dialect", DIALECT_PARAMS)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_tools_round_trip(stack, dialect, provider, stream):
    question = [{"role": "user", "content": "What's the weather in Paris?"}]
    args = call(stack, dialect, provider)
    if stream:
        first = litellm.stream_chunk_builder(
            list(litellm.completion(messages=question, tools=[WEATHER], max_tokens=256, stream=True, **args))
        )
    else:
        first = litellm.completion(messages=question, tools=[WEATHER], max_tokens=256, **args)
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert [c.function.name for c in message.tool_calls] == ["get_weather"]
    assert json.loads(message.tool_calls[0].function.arguments) == {"location": "Paris"}
    follow = question + [
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "sunny, 21 C"},
    ]
    final = litellm.completion(messages=follow, tools=[WEATHER], max_tokens=256, **args)
    assert final.choices[0].message.content == expected_text(provider)
    assert "sunny, 21 C" in provider.requests()[-1]["body_text"]


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("dialect", DIALECT_PARAMS)
def test_parallel_tool_calls(stack, dialect, provider):
    args = call(stack, dialect, provider)
    question = [{"role": "user", "content": "Call get_weather and get_time for Paris"}]
    first = litellm.completion(messages=question, tools=[WEATHER, TIME], max_tokens=256, **args)
    calls = first.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    answers = {"get_weather": "sunny, 21 C", "get_time": "14:05"}
    follow = question + [first.choices[0].message.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id, "content": answers[c.function.name]} for c in calls
    ]
    final = litellm.completion(messages=follow, tools=[WEATHER, TIME], max_tokens=256, **args)
    assert final.choices[0].message.content == expected_text(provider)
    sent = provider.requests()[-1]["body_text"]
    assert "sunny, 21 C" in sent and "14:05" in sent


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("dialect", DIALECT_PARAMS)
def test_structured_output(stack, dialect, provider):
    resp = litellm.completion(
        messages=[{"role": "user", "content": "Biggest city?"}],
        response_format=City,
        max_tokens=256,
        **call(stack, dialect, provider),
    )
    assert City.model_validate_json(resp.choices[0].message.content) == City(name="mock", population=1)


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_responses(stack, provider, stream):
    args = call(stack, "openai", provider)
    if stream:
        events = list(litellm.responses(input="Say hello to the gateway", stream=True, **args))
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert text == expected_text(provider)
        done = [e for e in events if e.type == "response.completed"][-1].response
    else:
        done = litellm.responses(input="Say hello to the gateway", instructions="You are terse.", **args)
    texts = [c.text for o in done.output if o.type == "message" for c in o.content]
    assert "".join(texts) == expected_text(provider)
    assert done.usage.output_tokens == 5
    if provider.name in ("openai", "azure"):
        assert provider.requests()[-1]["path"].endswith("/responses")


@pytest.mark.parametrize("provider", route_params(ALL))
def test_responses_function_call_round_trip(stack, provider):
    args = call(stack, "openai", provider)
    tool = {"type": "function", **WEATHER["function"]}
    question = [{"role": "user", "content": "What's the weather in Paris?"}]
    first = litellm.responses(input=question, tools=[tool], **args)
    calls = [o for o in first.output if o.type == "function_call"]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"location": "Paris"})]
    follow = question + [
        {"type": "function_call", "call_id": calls[0].call_id, "name": calls[0].name, "arguments": calls[0].arguments},
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"},
    ]
    final = litellm.responses(input=follow, tools=[tool], **args)
    texts = [c.text for o in final.output if o.type == "message" for c in o.content]
    assert "".join(texts) == expected_text(provider)
    assert "sunny, 21 C" in provider.requests()[-1]["body_text"]


@pytest.mark.parametrize("provider", route_params(WITH_EMBEDDINGS))
def test_embedding(stack, provider):
    resp = litellm.embedding(
        model=f"openai/embed-{provider.name}",
        input=["hello IoT", "a second text"],
        api_base=stack.openai_base_url,
        api_key="unused",
        timeout=30,
    )
    vectors = [d["embedding"] for d in resp.data]
    assert len(vectors) == 2 and vectors[0] != vectors[1]
    assert all(len(v) > 0 for v in vectors)
    assert resp.usage.prompt_tokens > 0
