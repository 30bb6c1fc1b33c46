"""Embedding inputs as token ids (what LangChain's `OpenAIEmbeddings` sends by default) and
base64 `encoding_format` (the openai SDKs' default) on every embeddings route."""

from __future__ import annotations

import base64
import struct

import openai
import pytest

from conftest import WITH_EMBEDDINGS, route_params

# "hello IoT" in cl100k_base, the tokenizer of OpenAI's embedding models.
HELLO_GATEWAY = [15339, 50180]


@pytest.fixture
def client(stack):
    return openai.OpenAI(base_url=stack.openai_base_url, api_key="unused", max_retries=0, timeout=30)


@pytest.mark.parametrize("provider", route_params(WITH_EMBEDDINGS))
def test_token_id_input(client, provider):
    resp = client.embeddings.create(model=f"embed-{provider.name}", input=[HELLO_GATEWAY, HELLO_GATEWAY])
    assert len(resp.data) == 2
    assert resp.data[0].embedding == resp.data[1].embedding
    assert len(resp.data[0].embedding) > 0
    sent = provider.requests()[-1]["body_text"]
    if provider.type in ("openai", "azureOpenAI"):
        assert "15339" in sent, "OpenAI takes token ids itself"
    else:
        assert "hello IoT" in sent, sent


@pytest.mark.parametrize("provider", route_params(WITH_EMBEDDINGS))
def test_base64_encoding(client, stack, provider):
    import urllib.request, json
    body = json.dumps({"model": f"embed-{provider.name}", "input": "hello", "encoding_format": "base64"}).encode()
    req = urllib.request.Request(f"{stack.openai_base_url}/embeddings", data=body,
                                 headers={"content-type": "application/json"})
    data = json.loads(urllib.request.urlopen(req).read())
    encoded = data["data"][0]["embedding"]
    assert isinstance(encoded, str)
    floats = struct.unpack(f"<{len(base64.b64decode(encoded)) // 4}f", base64.b64decode(encoded))
    plain = client.embeddings.create(model=f"embed-{provider.name}", input="hello", encoding_format="float")
    assert floats == pytest.approx(plain.data[0].embedding, rel=1e-6)
