"""Parallel tool calls end to end, in each client dialect (Chat Completions, Anthropic Messages,
Responses) against every provider type. The mocks answer a prompt that names two declared tools
with a call of each, in their provider's shape (several `tool_calls`, `tool_use` / `toolUse`
blocks, `functionCall` parts, `function_call` items); the SDKs must see both calls, buffered and
streamed, and the two results sent back must reach the provider as it wants them (the mocks
refuse results that do not answer the calls one for one, as the providers do)."""

from __future__ import annotations

import json

import anthropic
import openai
import pytest

from conftest import ALL, route_params

ASK = "Call get_weather and get_time for Paris"
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
NAMES = ["get_weather", "get_time"]
# What the mocks fill a call's arguments with: a sample of the tool's schema.
ARGS = {"city": "mock"}
ANSWERS = {"get_weather": "sunny, 21 C", "get_time": "14:05"}
CHAT_TOOLS = [
    {"type": "function", "function": {"name": n, "description": f"{n} for a city.", "parameters": SCHEMA}}
    for n in NAMES
]
MESSAGES_TOOLS = [{"name": n, "description": f"{n} for a city.", "input_schema": SCHEMA} for n in NAMES]
RESPONSES_TOOLS = [{"type": "function", "name": n, "parameters": SCHEMA, "strict": True} for n in NAMES]
# Providers whose API cannot be told "one call only": the sidecar says it dropped the flag.
NO_SINGLE_CALL_FLAG = {"gemini", "bedrock"}


@pytest.fixture
def oai(stack):
    return openai.OpenAI(base_url=stack.openai_base_url, api_key="unused", max_retries=0, timeout=30)


@pytest.fixture
def ant(stack):
    return anthropic.Anthropic(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=30)


def assert_results_reached(provider):
    """Both answers went upstream in the provider's last request."""
    sent = provider.requests()[-1]["body_text"]
    for answer in ANSWERS.values():
        assert answer in sent, sent


# ---- Chat Completions --------------------------------------------------------------------


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_chat_parallel_calls_round_trip(oai, provider, stream):
    model = f"via-{provider.name}"
    question = [{"role": "user", "content": ASK}]
    if stream:
        with oai.chat.completions.stream(model=model, messages=question, tools=CHAT_TOOLS) as s:
            completion = s.get_final_completion()
    else:
        completion = oai.chat.completions.create(model=model, messages=question, tools=CHAT_TOOLS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert [c.function.name for c in calls] == NAMES
    assert [json.loads(c.function.arguments) for c in calls] == [ARGS, ARGS]
    assert len({c.id for c in calls}) == 2 and all(calls[0].id for c in calls)

    follow = question + [
        {"role": "assistant", "content": None, "tool_calls": [c.model_dump(exclude_none=True) for c in calls]},
        *({"role": "tool", "tool_call_id": c.id, "content": ANSWERS[c.function.name]} for c in calls),
    ]
    final = oai.chat.completions.create(model=model, messages=follow, tools=CHAT_TOOLS)
    assert final.choices[0].finish_reason == "stop"
    assert final.choices[0].message.content == f"This is {provider.model} mock speaking."
    assert_results_reached(provider)


@pytest.mark.parametrize("provider", route_params(ALL))
def test_chat_parallel_tool_calls_false(oai, provider):
    raw = oai.chat.completions.with_raw_response.create(
        model=f"via-{provider.name}",
        messages=[{"role": "user", "content": ASK}],
        tools=CHAT_TOOLS,
        parallel_tool_calls=False,
    )
    calls = raw.parse().choices[0].message.tool_calls
    if provider.name in NO_SINGLE_CALL_FLAG:
        assert "parallel_tool_calls" in raw.headers["x-gatehouse-warning"]
        assert len(calls) == 2
    else:
        assert [c.function.name for c in calls] == NAMES[:1]


# ---- Anthropic Messages ------------------------------------------------------------------


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_messages_parallel_tool_use_round_trip(ant, provider, stream):
    model = f"via-{provider.name}"
    question = [{"role": "user", "content": ASK}]
    if stream:
        with ant.messages.stream(model=model, max_tokens=256, messages=question, tools=MESSAGES_TOOLS) as s:
            message = s.get_final_message()
    else:
        message = ant.messages.create(model=model, max_tokens=256, messages=question, tools=MESSAGES_TOOLS)
    assert message.stop_reason == "tool_use"
    uses = [b for b in message.content if b.type == "tool_use"]
    assert [u.name for u in uses] == NAMES
    assert [u.input for u in uses] == [ARGS, ARGS]
    assert len({u.id for u in uses}) == 2

    follow = question + [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": u.id, "content": ANSWERS[u.name]} for u in uses
        ]},
    ]
    final = ant.messages.create(model=model, max_tokens=256, messages=follow, tools=MESSAGES_TOOLS)
    assert final.stop_reason == "end_turn"
    assert final.content[0].text == f"This is {provider.model} mock speaking."
    assert_results_reached(provider)


@pytest.mark.parametrize("provider", route_params(ALL))
def test_messages_disable_parallel_tool_use(ant, provider):
    raw = ant.messages.with_raw_response.create(
        model=f"via-{provider.name}",
        max_tokens=256,
        messages=[{"role": "user", "content": ASK}],
        tools=MESSAGES_TOOLS,
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    uses = [b for b in raw.parse().content if b.type == "tool_use"]
    if provider.name in NO_SINGLE_CALL_FLAG:
        assert "parallel_tool_calls" in raw.headers["x-gatehouse-warning"]
        assert len(uses) == 2
    else:
        assert [u.name for u in uses] == NAMES[:1]


# ---- Responses ---------------------------------------------------------------------------


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_responses_parallel_function_calls_round_trip(oai, provider, stream):
    model = f"via-{provider.name}"
    question = [{"role": "user", "content": ASK}]
    if stream:
        with oai.responses.stream(model=model, input=question, tools=RESPONSES_TOOLS) as s:
            events = list(s)
            response = s.get_final_response()
        added = [e.output_index for e in events if e.type == "response.output_item.added"]
        assert added == [0, 1], "one output item per call"
    else:
        response = oai.responses.create(model=model, input=question, tools=RESPONSES_TOOLS)
    calls = [o for o in response.output if o.type == "function_call"]
    assert [c.name for c in calls] == NAMES
    assert [json.loads(c.arguments) for c in calls] == [ARGS, ARGS]
    assert len({c.call_id for c in calls}) == 2
    assert len({c.id for c in calls}) == 2

    follow = question + [
        *({"type": "function_call", "call_id": c.call_id, "name": c.name, "arguments": c.arguments} for c in calls),
        *({"type": "function_call_output", "call_id": c.call_id, "output": ANSWERS[c.name]} for c in calls),
    ]
    final = oai.responses.create(model=model, input=follow, tools=RESPONSES_TOOLS)
    assert final.output_text == f"This is {provider.model} mock speaking."
    assert_results_reached(provider)


@pytest.mark.parametrize("provider", route_params(ALL))
def test_responses_parallel_tool_calls_false(oai, provider):
    raw = oai.responses.with_raw_response.create(
        model=f"via-{provider.name}", input=ASK, tools=RESPONSES_TOOLS, parallel_tool_calls=False
    )
    calls = [o for o in raw.parse().output if o.type == "function_call"]
    if provider.name in NO_SINGLE_CALL_FLAG:
        assert "parallel_tool_calls" in raw.headers["x-gatehouse-warning"]
        assert len(calls) == 2
    else:
        assert [c.name for c in calls] == NAMES[:1]
