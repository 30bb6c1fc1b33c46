"""The official `anthropic` package against the sidecar's `POST /v1/messages`, routed to each
provider type (translated when the target is not Anthropic)."""

from __future__ import annotations

import anthropic
import pytest

from conftest import (
    ALL,
    BUDGET,
    BUDGETED_ROUTE,
    EXPECTED_RETRY_AFTER,
    LANDED,
    MESSAGES_LANDED,
    RATE_LIMIT_SECS,
    cost,
    route_params,
)

# Inbound Messages needs the endpoint itself and the target's adapter.
ROUTES = route_params(ALL, landed=LANDED if MESSAGES_LANDED else set())
WEATHER_TOOL = {
    "name": "get_weather",
    "description": "Current weather for a city.",
    "input_schema": {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
}


@pytest.fixture
def client(stack):
    return anthropic.Anthropic(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=30)


def expected_text(provider) -> str:
    return f"This is {provider.model} mock speaking."


@pytest.mark.parametrize("provider", ROUTES)
def test_message(client, provider):
    msg = client.messages.create(
        model=f"via-{provider.name}",
        max_tokens=256,
        system="You are terse.",
        messages=[{"role": "user", "content": "Say hello to the gateway"}],
    )
    assert isinstance(msg, anthropic.types.Message)
    assert msg.type == "message"
    assert msg.role == "assistant"
    assert msg.id
    (block,) = msg.content
    assert isinstance(block, anthropic.types.TextBlock)
    assert block.text == expected_text(provider)
    assert msg.stop_reason == "end_turn"
    assert msg.usage.input_tokens == 8
    assert msg.usage.output_tokens == 5


@pytest.mark.parametrize("provider", ROUTES)
def test_stream(client, provider):
    with client.messages.stream(
        model=f"via-{provider.name}",
        max_tokens=256,
        messages=[{"role": "user", "content": "Say hello to the gateway"}],
    ) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    assert len(pieces) >= 2, "streamed in pieces"
    assert "".join(pieces) == expected_text(provider)
    assert final.content[0].text == expected_text(provider)
    assert final.stop_reason == "end_turn"
    assert final.usage.input_tokens == 5
    assert final.usage.output_tokens == 5


@pytest.mark.parametrize("provider", ROUTES)
def test_stream_cost_on_message_delta(client, stack, provider):
    raw = client.messages.with_raw_response.create(
        model=f"via-{provider.name}",
        max_tokens=256,
        messages=[{"role": "user", "content": "Say hello to the gateway"}],
        stream=True,
    )
    request_id = raw.headers["x-gatehouse-request-id"]
    events = list(raw.parse())
    (delta,) = [e for e in events if e.type == "message_delta"]
    assert isinstance(delta, anthropic.types.RawMessageDeltaEvent)
    # The extension field is kept by the SDK's model.
    expected = cost(5, 5)
    assert delta.usage.gatehouse_cost_usd == pytest.approx(expected, abs=1e-12)
    assert stack.logged_cost(request_id) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("provider", ROUTES)
def test_message_cost_header(client, provider):
    raw = client.messages.with_raw_response.create(
        model=f"via-{provider.name}",
        max_tokens=256,
        messages=[{"role": "user", "content": "Say hello to the gateway"}],
    )
    assert raw.headers["x-gatehouse-cost-usd"] == f"{cost(5, 5):.8f}"
    assert raw.parse().usage.input_tokens == 5


@pytest.mark.parametrize("provider", ROUTES)
def test_tool_use_round_trip(client, provider):
    model = f"via-{provider.name}"
    question = {"role": "user", "content": "What's the weather in Paris?"}
    msg = client.messages.create(model=model, max_tokens=256, tools=[WEATHER_TOOL], messages=[question])
    assert msg.stop_reason == "tool_use"
    (use,) = [b for b in msg.content if b.type == "tool_use"]
    assert isinstance(use, anthropic.types.ToolUseBlock)
    assert use.id
    assert use.name == "get_weather"
    assert use.input == {"location": "Paris"}

    msg = client.messages.create(
        model=model,
        max_tokens=256,
        tools=[WEATHER_TOOL],
        messages=[
            question,
            {"role": "assistant", "content": [use.model_dump()]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "sunny, 21C"}
            ]},
        ],
    )
    assert msg.stop_reason == "end_turn"
    assert msg.content[0].text == expected_text(provider)
    assert "sunny, 21C" in provider.requests()[-1]["body_text"]


@pytest.mark.parametrize("provider", ROUTES)
def test_tool_use_stream(client, provider):
    with client.messages.stream(
        model=f"via-{provider.name}",
        max_tokens=256,
        tools=[WEATHER_TOOL],
        messages=[{"role": "user", "content": "What's the weather in Paris?"}],
    ) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    (use,) = [b for b in final.content if b.type == "tool_use"]
    assert use.name == "get_weather"
    assert use.input == {"location": "Paris"}


@pytest.mark.parametrize("provider", ROUTES)
def test_errors(client, provider):
    provider.push({"fault": {"kind": "status", "status": 400, "message": "mock says no"}})
    with pytest.raises(anthropic.BadRequestError):
        client.messages.create(
            model=f"via-{provider.name}", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    limited = {"fault": {"kind": "status", "status": 429, "retry_after_secs": RATE_LIMIT_SECS}}
    provider.push(*[limited] * 4)
    with pytest.raises(anthropic.RateLimitError) as err:
        client.messages.create(
            model=f"via-{provider.name}", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    assert err.value.response.headers.get("retry-after") == EXPECTED_RETRY_AFTER[provider.name]


@pytest.mark.parametrize("provider", ROUTES)
def test_beta_header(client, provider):
    """`client.beta.messages` sends `anthropic-beta`: forwarded to Anthropic, reported elsewhere."""
    raw = client.beta.messages.with_raw_response.create(
        model=f"via-{provider.name}",
        max_tokens=256,
        betas=["token-efficient-tools-2025-02-19"],
        messages=[{"role": "user", "content": "Say hello to the gateway"}],
    )
    msg = raw.parse()
    assert msg.content[0].text == expected_text(provider)
    sent = provider.requests()[-1]["headers"]
    warning = raw.headers.get("x-gatehouse-warning") or ""
    if provider.type == "anthropic":
        assert sent.get("anthropic-beta") == "token-efficient-tools-2025-02-19"
        assert "anthropic-beta" not in warning
    else:
        assert "anthropic-beta" not in sent
        assert "anthropic-beta not forwarded" in warning


def test_budget_exceeded_is_rate_limit_error(client, stack):
    """A hard Budget without room on `/v1/messages`: Anthropic's error shape, which the SDK raises
    as RateLimitError, the Budget named, `Retry-After` until the period ends."""
    with pytest.raises(anthropic.RateLimitError) as err:
        client.messages.create(
            model=BUDGETED_ROUTE, max_tokens=16, messages=[{"role": "user", "content": "hi"}]
        )
    e = err.value
    assert e.status_code == 429
    assert e.body["type"] == "error"
    assert e.body["error"]["type"] == "rate_limit_error"
    assert f"budget '{BUDGET}'" in e.body["error"]["message"]
    assert 1 <= int(e.response.headers["retry-after"]) <= 86_400
    assert e.response.headers["x-gatehouse-budget"] == "exceeded"
    assert stack.providers["openai"].requests() == []
