"""Model lookup (`GET /v1/models/{id}`, OpenAI- and Anthropic-shaped lists) and Anthropic's
`/v1/messages/count_tokens` on every provider type, through the official SDKs; errors on every
`/v1/messages*` path in Anthropic's shape."""

from __future__ import annotations

import anthropic
import openai
import pytest

from conftest import ALL, route_params

MESSAGES = [{"role": "user", "content": "Count these five words"}]


@pytest.fixture
def oai(stack):
    return openai.OpenAI(base_url=stack.openai_base_url, api_key="unused", max_retries=0, timeout=30)


@pytest.fixture
def claude(stack):
    return anthropic.Anthropic(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=30)


def test_models_retrieve(oai, claude):
    assert oai.models.retrieve("via-openai").id == "via-openai"
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-route")
    info = claude.models.retrieve("via-anthropic")
    assert info.type == "model" and info.id == "via-anthropic" and info.display_name
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.models.retrieve("no-such-route")
    assert e.value.body["error"]["type"] == "not_found_error"
    ids = [m.id for m in claude.models.list()]
    assert "via-bedrock" in ids and "embed-gemini" in ids


@pytest.mark.parametrize("provider", route_params(ALL))
def test_count_tokens(claude, provider):
    raw = claude.messages.with_raw_response.count_tokens(
        model=f"via-{provider.name}", system="Be brief.", messages=MESSAGES
    )
    counted = raw.parse()
    if provider.type in ("openai", "openaiCompatible", "azureOpenAI"):
        # No counting API: o200k estimate, marked.
        assert counted.model_extra["gatehouse_estimated"] is True
        assert "estimated" in raw.headers["x-gatehouse-warning"]
        assert 7 <= counted.input_tokens <= 20
        assert provider.requests() == [], "estimated locally"
    else:
        # The mocks count words: "Be brief." + the five words.
        assert counted.input_tokens == 6
        sent = provider.requests()[-1]
        expected = {"anthropic": "/v1/messages/count_tokens", "gemini": ":countTokens",
                    "bedrock": "/count-tokens"}[provider.name]
        assert expected in sent["path"]


def test_messages_paths_answer_in_anthropic_shape(claude, stack):
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.count_tokens(model="no-such-route", messages=MESSAGES)
    assert e.value.body["type"] == "error"
    with pytest.raises(anthropic.BadRequestError) as e:
        claude.messages.count_tokens(model="via-anthropic", messages=[])
    assert e.value.body["error"]["type"] == "invalid_request_error"
    import urllib.error
    import urllib.request
    req = urllib.request.Request(f"{stack.base_url}/v1/messages/batches", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 404
    import json
    assert json.loads(e.value.read())["type"] == "error"
