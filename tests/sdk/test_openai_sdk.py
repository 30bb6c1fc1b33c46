"""The official `openai` package against the sidecar, one parametrized run per provider type:
chat (JSON and stream), tool calls there and back, embeddings, and errors."""

from __future__ import annotations

import json

import openai
import pytest

from conftest import (
    ALL,
    BUDGET,
    BUDGETED_ROUTE,
    EXPECTED_RETRY_AFTER,
    RATE_LIMIT_SECS,
    WITH_EMBEDDINGS,
    cost,
    route_params,
)

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the gateway"},
]
PROMPT_WORDS = 8  # the mocks count whitespace-separated words of every text sent
WEATHER_TOOL = {
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


@pytest.fixture
def client(stack):
    return openai.OpenAI(base_url=stack.openai_base_url, api_key="unused", max_retries=0, timeout=30)


def expected_text(provider) -> str:
    return f"This is {provider.model} mock speaking."


@pytest.mark.parametrize("provider", route_params(ALL))
def test_chat(client, provider):
    raw = client.chat.completions.with_raw_response.create(
        model=f"via-{provider.name}", messages=MESSAGES
    )
    assert raw.headers["x-gatehouse-provider"] == provider.name
    assert raw.headers["x-gatehouse-route"] == f"via-{provider.name}"
    resp = raw.parse()
    assert isinstance(resp, openai.types.chat.ChatCompletion)
    assert resp.object == "chat.completion"
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == expected_text(provider)
    assert choice.finish_reason == "stop"
    assert resp.usage.prompt_tokens == PROMPT_WORDS
    assert resp.usage.completion_tokens == 5
    assert resp.usage.total_tokens == PROMPT_WORDS + 5


@pytest.mark.parametrize("provider", route_params(ALL))
def test_cached_tokens_reach_usage(client, provider):
    provider.push({"cached_tokens": 3})
    resp = client.chat.completions.create(model=f"via-{provider.name}", messages=MESSAGES)
    assert resp.usage.prompt_tokens == PROMPT_WORDS
    assert resp.usage.prompt_tokens_details.cached_tokens == 3


@pytest.mark.parametrize("provider", route_params(ALL))
def test_max_tokens_finishes_with_length(client, provider):
    resp = client.chat.completions.create(
        model=f"via-{provider.name}", messages=MESSAGES, max_tokens=2
    )
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].message.content == "This is"


@pytest.mark.parametrize(
    "provider",
    route_params(ALL),
)
def test_chat_stream_with_usage(client, provider):
    chunks = list(
        client.chat.completions.create(
            model=f"via-{provider.name}",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    assert len({c.id for c in chunks}) == 1
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in with_choices)
    assert text == expected_text(provider)
    assert len([c for c in with_choices if c.choices[0].delta.content]) >= 2, "streamed in pieces"
    assert with_choices[-1].choices[0].finish_reason == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == []
    assert usage is not None
    assert usage.prompt_tokens == PROMPT_WORDS
    assert usage.completion_tokens == 5
    assert usage.total_tokens == PROMPT_WORDS + 5


@pytest.mark.parametrize("provider", route_params(ALL))
def test_chat_cost_header(client, provider):
    raw = client.chat.completions.with_raw_response.create(
        model=f"via-{provider.name}", messages=MESSAGES
    )
    # USD with 8 decimals.
    assert raw.headers["x-gatehouse-cost-usd"] == f"{cost(PROMPT_WORDS, 5):.8f}"


@pytest.mark.parametrize("provider", route_params(ALL))
def test_stream_cost_in_band(client, provider):
    chunks = list(
        client.chat.completions.create(
            model=f"via-{provider.name}",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    # The extension field is kept by the SDK's model, as an attribute and in model_extra.
    assert usage.gatehouse_cost_usd == pytest.approx(cost(PROMPT_WORDS, 5), abs=1e-12)
    assert usage.model_extra["gatehouse_cost_usd"] == usage.gatehouse_cost_usd
    assert usage.prompt_tokens == PROMPT_WORDS


@pytest.mark.parametrize("provider", route_params(ALL))
def test_stream_without_include_usage_sees_no_usage_and_is_metered(client, stack, provider):
    raw = client.chat.completions.with_raw_response.create(
        model=f"via-{provider.name}", messages=MESSAGES, stream=True
    )
    request_id = raw.headers["x-gatehouse-request-id"]
    chunks = list(raw.parse())
    # Exactly what the provider sends a client that does not ask: no usage-only chunk at the
    # end, no `usage` on any chunk (not even null).
    assert all(c.choices for c in chunks), [c.model_dump() for c in chunks]
    assert all(c.usage is None and "usage" not in c.model_fields_set for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == expected_text(provider)
    # OpenAI-wire providers were asked for the usage all the same.
    if provider.type in ("openai", "openaiCompatible", "azureOpenAI"):
        (sent,) = provider.requests()
        assert sent["body"]["stream_options"] == {"include_usage": True}
    # And the request is metered with the provider's usage.
    assert stack.logged_cost(request_id) == pytest.approx(cost(PROMPT_WORDS, 5), abs=1e-12)


@pytest.mark.parametrize("provider", route_params(["openai", "anthropic", "gemini", "bedrock"]))
def test_cancelled_stream_is_metered_as_estimated(client, stack, provider):
    provider.push({"chunk_delay_ms": 300, "chunks": 20})
    raw = client.chat.completions.with_raw_response.create(
        model=f"via-{provider.name}", messages=MESSAGES, stream=True
    )
    request_id = raw.headers["x-gatehouse-request-id"]
    stream = raw.parse()
    first = next(iter(stream))
    assert first.choices
    stream.close()
    line = stack.access_line(request_id)
    assert "client_gone" in line, line
    # Charged: at least the prompt, estimated from the request when the provider had not said.
    logged = stack.logged_cost(request_id)
    assert logged is not None and logged > 0, line


def weather_messages():
    return [{"role": "user", "content": "What's the weather in Paris?"}]


def follow_up(call_id: str, name: str, arguments: str):
    return weather_messages() + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "sunny, 21C"},
    ]


@pytest.mark.parametrize("provider", route_params(ALL))
def test_tool_call_round_trip(client, provider):
    model = f"via-{provider.name}"
    resp = client.chat.completions.create(model=model, messages=weather_messages(), tools=[WEATHER_TOOL])
    choice = resp.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls
    assert call.type == "function"
    assert call.id
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"location": "Paris"}

    resp = client.chat.completions.create(
        model=model,
        messages=follow_up(call.id, call.function.name, call.function.arguments),
        tools=[WEATHER_TOOL],
    )
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].message.content == expected_text(provider)
    assert not resp.choices[0].message.tool_calls
    # The tool result reached the provider, in its own format.
    sent = provider.requests()[-1]
    assert "sunny, 21C" in sent["body_text"]


@pytest.mark.parametrize("provider", route_params(ALL))
def test_tool_call_stream(client, provider):
    stream = client.chat.completions.create(
        model=f"via-{provider.name}",
        messages=weather_messages(),
        tools=[WEATHER_TOOL],
        stream=True,
        stream_options={"include_usage": True},
    )
    calls: dict[int, dict] = {}
    finish = None
    for chunk in stream:
        for choice in chunk.choices:
            for tc in choice.delta.tool_calls or []:
                entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
                entry["id"] = entry["id"] or tc.id
                if tc.function and tc.function.name:
                    entry["name"] += tc.function.name
                if tc.function and tc.function.arguments:
                    entry["arguments"] += tc.function.arguments
            finish = choice.finish_reason or finish
    assert finish == "tool_calls"
    assert list(calls) == [0]
    assert calls[0]["id"]
    assert calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"location": "Paris"}


@pytest.mark.parametrize("provider", route_params(WITH_EMBEDDINGS))
def test_embeddings(client, provider):
    resp = client.embeddings.create(model=f"embed-{provider.name}", input=["first text", "second one here"])
    assert isinstance(resp, openai.types.CreateEmbeddingResponse)
    assert [d.index for d in resp.data] == [0, 1]
    dims = {len(d.embedding) for d in resp.data}
    assert len(dims) == 1 and dims.pop() > 0
    assert resp.data[0].embedding != resp.data[1].embedding
    # Gemini's embedding API reports no token counts.
    assert resp.usage.prompt_tokens == (0 if provider.type == "gemini" else 5)


def test_bedrock_embeddings_titan_and_cohere(client, stack):
    """Titan takes one text per InvokeModel call, Cohere a list; both come back as one list."""
    bedrock = stack.providers["bedrock"]
    resp = client.embeddings.create(model="embed-bedrock", input=["first text", "second one here"],
                                    dimensions=256)
    assert [len(d.embedding) for d in resp.data] == [256, 256]
    sent = bedrock.requests()
    assert [r["path"] for r in sent] == ["/model/amazon.titan-embed-text-v2%3A0/invoke"] * 2
    assert sorted(r["body"]["inputText"] for r in sent) == ["first text", "second one here"]
    assert all(r["body"]["dimensions"] == 256 for r in sent)
    # Whatever order the calls finished in, data[i] is input i's vector.
    alone = client.embeddings.create(model="embed-bedrock", input="second one here", dimensions=256)
    assert alone.data[0].embedding == resp.data[1].embedding

    bedrock.reset()
    resp = client.embeddings.create(model="embed-bedrock-cohere", input=["first text", "second one here"])
    assert [d.index for d in resp.data] == [0, 1]
    assert {len(d.embedding) for d in resp.data} == {1024}
    assert resp.usage.prompt_tokens == 5  # from the x-amzn-bedrock-input-token-count header
    (sent,) = bedrock.requests()
    assert sent["path"] == "/model/cohere.embed-english-v3/invoke"
    assert sent["body"] == {"texts": ["first text", "second one here"], "input_type": "search_document"}
    client.embeddings.create(model="embed-bedrock-cohere", input="q", extra_body={"input_type": "search_query"})
    assert bedrock.requests()[-1]["body"]["input_type"] == "search_query"


def test_bedrock_embeddings_refuse_what_bedrock_cannot_do(client, stack):
    bedrock = stack.providers["bedrock"]
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="embed-bedrock", input="x", dimensions=300)
    assert "256, 512, 1024" in err.value.message
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="embed-bedrock", input=[[1, 2, 3]])
    assert "token arrays" in err.value.message
    assert bedrock.requests() == []
    bedrock.push({"fault": {"kind": "status", "status": 400, "message": "Malformed input request: bad"}})
    with pytest.raises(openai.BadRequestError) as err:
        client.embeddings.create(model="embed-bedrock", input="x")
    assert "Malformed input request: bad" in err.value.message


@pytest.mark.parametrize("provider", route_params(ALL))
def test_bad_request_is_bad_request_error(client, provider):
    provider.push({"fault": {"kind": "status", "status": 400, "message": "mock says no"}})
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=f"via-{provider.name}", messages=MESSAGES)
    assert err.value.status_code == 400
    assert len(provider.requests()) == 1, "a 400 is not retried"


@pytest.mark.parametrize("provider", route_params(ALL))
def test_rate_limit_exhausted_is_rate_limit_error(client, provider):
    limited = {"fault": {"kind": "status", "status": 429, "retry_after_secs": RATE_LIMIT_SECS}}
    provider.push(*[limited] * 4)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model=f"via-{provider.name}", messages=MESSAGES)
    assert err.value.status_code == 429
    assert err.value.response.headers.get("retry-after") == EXPECTED_RETRY_AFTER[provider.name]
    # A 429 that says nothing still tells the client to wait: the default second.
    provider.reset()
    provider.push(*[{"fault": {"kind": "status", "status": 429}}] * 4)
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model=f"via-{provider.name}", messages=MESSAGES)
    assert err.value.response.headers.get("retry-after") == "1"


@pytest.mark.parametrize("provider", route_params(ALL))
def test_cut_stream_raises(client, provider):
    provider.push(*[{"fault": {"kind": "cut_after", "chunks": 2}}] * 3)
    stream = client.chat.completions.create(
        model=f"via-{provider.name}", messages=MESSAGES, stream=True
    )
    with pytest.raises(openai.APIError):
        for _ in stream:
            pass


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_budget_exceeded_is_rate_limit_error(client, stack, stream):
    """A hard Budget without room: the SDK raises RateLimitError, code `budget_exceeded`, the
    Budget named, `Retry-After` until the period ends; nothing reaches the provider."""
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(model=BUDGETED_ROUTE, messages=MESSAGES, stream=stream)
    e = err.value
    assert e.status_code == 429
    assert e.code == "budget_exceeded"
    assert e.type == "insufficient_quota"
    assert f"budget '{BUDGET}'" in e.message
    assert 1 <= int(e.response.headers["retry-after"]) <= 86_400
    assert e.response.headers["x-gatehouse-budget"] == "exceeded"
    assert stack.providers["openai"].requests() == []
