"""The official `openai` package's Responses API (`client.responses`) against the sidecar, one
parametrized run per provider type: buffered and streamed answers, function tools there and
back, structured output through `.parse()`, usage and cost, and what needs a stored response."""

from __future__ import annotations

import json

import openai
import pytest
from pydantic import BaseModel

from conftest import ALL, cost, route_params

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
        "additionalProperties": False,
    },
    "strict": True,
}
NATIVE = {"openai", "azure"}


class City(BaseModel):
    name: str
    population: int


@pytest.fixture
def client(stack):
    return openai.OpenAI(base_url=stack.openai_base_url, api_key="unused", max_retries=0, timeout=30)


def expected_text(provider) -> str:
    return f"This is {provider.model} mock speaking."


@pytest.mark.parametrize("provider", route_params(ALL))
def test_response(client, stack, provider):
    raw = client.responses.with_raw_response.create(
        model=f"via-{provider.name}", instructions="You are terse.", input="Say hello to the gateway"
    )
    assert raw.headers["x-gatehouse-provider"] == provider.name
    resp = raw.parse()
    assert resp.object == "response"
    assert resp.status == "completed"
    assert resp.output_text == expected_text(provider)
    # "You are terse." + "Say hello to the gateway": 8 words, the mocks' token count.
    assert resp.usage.input_tokens == 8
    assert resp.usage.output_tokens == 5
    assert float(raw.headers["x-gatehouse-cost-usd"]) == pytest.approx(cost(8, 5))
    sent = provider.requests()[-1]
    if provider.name in NATIVE:
        assert sent["path"].endswith("/responses"), sent["path"]
    else:
        assert not sent["path"].endswith("/responses"), sent["path"]


@pytest.mark.parametrize("provider", route_params(ALL))
def test_stream(client, stack, provider):
    events = list(
        client.responses.create(model=f"via-{provider.name}", input="Say hello to the gateway", stream=True)
    )
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == expected_text(provider)
    done = events[-1].response
    assert done.output_text == expected_text(provider)
    assert done.usage.input_tokens == 5 and done.usage.output_tokens == 5
    # The gateway writes the cost into the final usage, like the chat streams' usage chunk.
    assert done.usage.model_extra["gatehouse_cost_usd"] == pytest.approx(cost(5, 5))


@pytest.mark.parametrize("provider", route_params(ALL))
def test_stream_helper_and_final_response(client, provider):
    with client.responses.stream(model=f"via-{provider.name}", input="Say hello") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == expected_text(provider)


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_function_tool_round_trip(client, provider, stream):
    model = f"via-{provider.name}"
    question = [{"role": "user", "content": "What's the weather in Paris?"}]
    if stream:
        with client.responses.stream(model=model, input=question, tools=[WEATHER_TOOL]) as s:
            first = s.get_final_response()
    else:
        first = client.responses.create(model=model, input=question, tools=[WEATHER_TOOL])
    calls = [o for o in first.output if o.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"location": "Paris"}
    assert call.call_id
    second = client.responses.create(
        model=model,
        tools=[WEATHER_TOOL],
        input=question
        + [
            {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
        ],
    )
    assert second.output_text == f"This is {provider.model} mock speaking."
    sent = provider.requests()[-1]
    assert "sunny, 21 C" in sent["body_text"]


@pytest.mark.parametrize("provider", route_params(ALL))
def test_forced_tool_choice(client, provider):
    resp = client.responses.create(
        model=f"via-{provider.name}",
        input="Say hello",
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
    )
    calls = [o for o in resp.output if o.type == "function_call"]
    assert [c.name for c in calls] == ["get_weather"]


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_parse_structured_output(client, provider, stream):
    model = f"via-{provider.name}"
    if stream:
        with client.responses.stream(model=model, input="Biggest city?", text_format=City) as s:
            resp = s.get_final_response()
    else:
        resp = client.responses.parse(model=model, input="Biggest city?", text_format=City)
    assert resp.output_parsed == City(name="mock", population=1)


@pytest.mark.parametrize("provider", route_params(ALL))
def test_previous_response_id_needs_a_storing_target(client, provider):
    call = lambda: client.responses.create(  # noqa: E731
        model=f"via-{provider.name}", input="and then?", previous_response_id="resp_123"
    )
    if provider.name in NATIVE:
        assert call().status == "completed"
        assert provider.requests()[-1]["body"]["previous_response_id"] == "resp_123"
        return
    with pytest.raises(openai.BadRequestError) as e:
        call()
    assert "previous_response_id" in e.value.message
    assert provider.requests() == [], "refused before anything went upstream"


@pytest.mark.parametrize("provider", route_params(ALL))
def test_cut_stream_raises(client, provider):
    provider.push({"fault": {"kind": "cut_after", "chunks": 2}})
    with pytest.raises(openai.APIError):
        for _ in client.responses.create(model=f"via-{provider.name}", input="Say hello", stream=True):
            pass
