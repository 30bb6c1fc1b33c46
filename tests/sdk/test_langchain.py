"""LangChain's `langchain-openai` and `langchain-anthropic` against the sidecar, one run per
provider type, each client with its defaults and only the base URL (and a placeholder key)
changed: `ChatOpenAI` (Chat Completions), `ChatOpenAI(use_responses_api=True)` (Responses),
`ChatAnthropic` (Messages) — invoke, stream, bind_tools (one call, parallel calls, the round trip
with the results), with_structured_output with each class's default method (and Anthropic's
`json_schema`), token counting; and `OpenAIEmbeddings`, whose default sends token-id arrays."""

from __future__ import annotations

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.messages import AIMessageChunk, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from pydantic import BaseModel, Field

from conftest import ALL, WITH_EMBEDDINGS, route_params


@tool
def get_weather(location: str) -> str:
    """Current weather for a city."""
    return "sunny, 21 C"


@tool
def get_time(city: str) -> str:
    """Local time in a city."""
    return "14:05"


class City(BaseModel):
    """A city and how many people live there."""

    name: str = Field(description="The city's name")
    population: int = Field(ge=0)


# The three chat clients, each with its defaults.
CLIENTS = ["chat-completions", "responses", "anthropic"]


def chat_model(stack, client: str, provider):
    common = dict(model=f"via-{provider.name}", api_key="unused", max_retries=0, timeout=30)
    if client == "anthropic":
        return ChatAnthropic(base_url=stack.base_url, **common)
    return ChatOpenAI(base_url=stack.openai_base_url, use_responses_api=client == "responses", **common)


def expected_text(provider) -> str:
    return f"This is {provider.model} mock speaking."


def text_of(message) -> str:
    """The text of a message whatever its content's shape (a string, or content blocks)."""
    if isinstance(message.content, str):
        return message.content
    return "".join(b.get("text", "") for b in message.content if isinstance(b, dict))


PARAMS = [pytest.param(c, id=c) for c in CLIENTS]


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("client", PARAMS)
def test_invoke(stack, client, provider):
    model = chat_model(stack, client, provider)
    reply = model.invoke([SystemMessage("You are terse."), HumanMessage("Say hello to the gateway")])
    assert text_of(reply) == expected_text(provider)
    # "You are terse." + "Say hello to the gateway": 8 words, the mocks' token count.
    assert reply.usage_metadata["input_tokens"] == 8
    assert reply.usage_metadata["output_tokens"] == 5
    sent = provider.requests()[-1]
    if client == "responses" and provider.name in ("openai", "azure"):
        assert sent["path"].endswith("/responses")


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("client", PARAMS)
def test_stream(stack, client, provider):
    model = chat_model(stack, client, provider)
    chunks = list(model.stream("Say hello to the gateway"))
    assert len(chunks) >= 2, "streamed in pieces"
    whole = chunks[0]
    for c in chunks[1:]:
        whole = whole + c
    assert isinstance(whole, AIMessageChunk)
    assert text_of(whole) == expected_text(provider)
    if client != "chat-completions":
        # ChatOpenAI asks for stream usage only from OpenAI's own URL; the others always get it.
        assert whole.usage_metadata["input_tokens"] == 5
        assert whole.usage_metadata["output_tokens"] == 5


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("client", PARAMS)
@pytest.mark.parametrize("stream", [False, True], ids=["invoke", "stream"])
def test_bind_tools_round_trip(stack, client, provider, stream):
    model = chat_model(stack, client, provider).bind_tools([get_weather])
    history = [HumanMessage("What's the weather in Paris?")]
    if stream:
        first = None
        for chunk in model.stream(history):
            first = chunk if first is None else first + chunk
    else:
        first = model.invoke(history)
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [("get_weather", {"location": "Paris"})]
    call = first.tool_calls[0]
    assert call["id"]
    history += [first, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    final = model.invoke(history)
    assert final.tool_calls == []
    assert text_of(final) == expected_text(provider)
    assert "sunny, 21 C" in provider.requests()[-1]["body_text"]


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("client", PARAMS)
def test_bind_tools_parallel_calls(stack, client, provider):
    model = chat_model(stack, client, provider).bind_tools([get_weather, get_time])
    history = [HumanMessage("Call get_weather and get_time for Paris")]
    first = model.invoke(history)
    assert [c["name"] for c in first.tool_calls] == ["get_weather", "get_time"]
    assert len({c["id"] for c in first.tool_calls}) == 2
    tools = {"get_weather": get_weather, "get_time": get_time}
    history += [first] + [
        ToolMessage(tools[c["name"]].invoke(c["args"]), tool_call_id=c["id"]) for c in first.tool_calls
    ]
    final = model.invoke(history)
    assert text_of(final) == expected_text(provider)
    sent = provider.requests()[-1]["body_text"]
    assert "sunny, 21 C" in sent and "14:05" in sent


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("client", PARAMS)
def test_with_structured_output_default(stack, client, provider):
    structured = chat_model(stack, client, provider).with_structured_output(City)
    assert structured.invoke("Biggest city?") == City(name="mock", population=1)


@pytest.mark.parametrize("provider", route_params(ALL))
def test_with_structured_output_anthropic_json_schema(stack, provider):
    """Claude's own structured outputs (`output_config.format`), translated for the others."""
    model = chat_model(stack, "anthropic", provider)
    structured = model.with_structured_output(City, method="json_schema")
    assert structured.invoke("Biggest city?") == City(name="mock", population=1)
    body = provider.requests()[-1]["body"]
    if provider.name == "anthropic":
        schema = body["output_config"]["format"]["schema"]
        assert "minimum" not in schema["properties"]["population"], "reduced to what Claude takes"


@pytest.mark.parametrize("provider", route_params(ALL))
def test_anthropic_token_counting(stack, provider):
    model = chat_model(stack, "anthropic", provider)
    # "You are terse." + "Say hello to the gateway": 8 words, what the mocks count.
    n = model.get_num_tokens_from_messages([SystemMessage("You are terse."), HumanMessage("Say hello to the gateway")])
    if provider.name in ("anthropic", "gemini", "bedrock"):
        assert n == 8, "the provider's own count"
    else:
        assert n > 0, "estimated"


@pytest.mark.parametrize("provider", route_params(WITH_EMBEDDINGS))
def test_openai_embeddings_default_sends_token_ids(stack, provider):
    embeddings = OpenAIEmbeddings(
        model=f"embed-{provider.name}", base_url=stack.openai_base_url, api_key="unused", max_retries=0
    )
    vectors = embeddings.embed_documents(["hello IoT", "a second text", "hello IoT"])
    assert len(vectors) == 3
    assert vectors[0] == vectors[2] != vectors[1]
    assert len(vectors[0]) > 0
    query = embeddings.embed_query("hello IoT")
    assert query == pytest.approx(vectors[0])
    # A provider that takes one text per call (Bedrock's Titan) gets several concurrent calls, in
    # no set order: look at all of them.
    sent = "\n".join(r["body_text"] for r in provider.requests())
    if provider.type in ("openai", "azureOpenAI"):
        assert "15339" in sent, "token ids pass through"
    else:
        assert "hello IoT" in sent, "decoded for a provider that takes text"
