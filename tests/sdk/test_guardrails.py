"""Guardrails through the official SDKs: values masked before the prompt leaves come back in the
answer (`maskAndRestore`), buffered and streamed with the placeholders split across events, for
every provider type and both SDKs, tool-call arguments and the Responses API included; rate limits as the SDKs see them
(OpenAI's x-ratelimit headers counting down, RateLimitError); and the audit line."""

from __future__ import annotations

import json
import time

import anthropic
import openai
import pytest

from conftest import ALL, route_params

PROMPT = "Please email bob@example.com and charge card 4111 1111 1111 1111."
VALUES = ["bob@example.com", "4111 1111 1111 1111"]
# The provider answers with the placeholders it was given, cut across events.
PIECES = ["Done: wrote to [EM", "AIL_1] and charged [CREDIT_", "CARD_1", "]."]
RESTORED = "Done: wrote to bob@example.com and charged 4111 1111 1111 1111."


@pytest.fixture
def oai(stack):
    return openai.OpenAI(base_url=stack.openai_base_url, api_key="unused", max_retries=0, timeout=30)


@pytest.fixture
def ant(stack):
    return anthropic.Anthropic(base_url=stack.base_url, api_key="unused", max_retries=0, timeout=30)


def upstream(provider) -> str:
    """What the provider received last, as text."""
    return provider.requests()[-1]["body_text"]


def assert_masked_upstream(provider):
    sent = upstream(provider)
    assert "[EMAIL_1]" in sent and "[CREDIT_CARD_1]" in sent, sent
    for value in VALUES:
        assert value not in sent, sent


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_sdk_sees_its_values_restored(oai, provider, stream):
    provider.push({"pieces": PIECES})
    messages = [{"role": "user", "content": PROMPT}]
    if stream:
        chunks = oai.chat.completions.create(
            model=f"guard-{provider.name}", messages=messages, stream=True
        )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    else:
        resp = oai.chat.completions.create(model=f"guard-{provider.name}", messages=messages)
        text = resp.choices[0].message.content
    assert text == RESTORED
    assert_masked_upstream(provider)


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_anthropic_sdk_sees_its_values_restored(ant, provider, stream):
    provider.push({"pieces": PIECES})
    messages = [{"role": "user", "content": PROMPT}]
    if stream:
        with ant.messages.stream(
            model=f"guard-{provider.name}", max_tokens=256, messages=messages
        ) as s:
            text = "".join(s.text_stream)
    else:
        msg = ant.messages.create(model=f"guard-{provider.name}", max_tokens=256, messages=messages)
        text = msg.content[0].text
    assert text == RESTORED
    assert_masked_upstream(provider)


@pytest.mark.parametrize("provider", route_params(["openai", "anthropic", "gemini", "bedrock"]))
def test_tool_call_arguments_get_their_values_back_in_a_stream(oai, provider):
    provider.push({"tool_call": {"name": "send_email", "arguments": {"to": "[EMAIL_1]"}}})
    tool = {"type": "function", "function": {"name": "send_email", "parameters": {
        "type": "object", "properties": {"to": {"type": "string"}}}}}
    chunks = oai.chat.completions.create(
        model=f"guard-{provider.name}", stream=True, tools=[tool],
        messages=[{"role": "user", "content": "Send it to bob@example.com"}],
    )
    arguments = ""
    for c in chunks:
        for call in (c.choices[0].delta.tool_calls or []) if c.choices else []:
            arguments += call.function.arguments or ""
    assert json.loads(arguments) == {"to": "bob@example.com"}
    assert "bob@example.com" not in upstream(provider)


@pytest.mark.parametrize("provider", route_params(ALL))
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_openai_responses_sees_its_values_restored(oai, provider, stream):
    provider.push({"pieces": PIECES})
    if not stream:
        resp = oai.responses.create(model=f"guard-{provider.name}", input=PROMPT)
        assert resp.output_text == RESTORED
        assert_masked_upstream(provider)
        return
    events = list(oai.responses.create(model=f"guard-{provider.name}", input=PROMPT, stream=True))
    # Numbered 0, 1, 2, … though the held-back tail went out in an event of its own.
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == RESTORED
    done = [e.text for e in events if e.type == "response.output_text.done"]
    assert done == [RESTORED]
    completed = [e.response for e in events if e.type == "response.completed"]
    assert len(completed) == 1 and completed[0].output_text == RESTORED
    assert_masked_upstream(provider)
    # The SDK's own accumulation of the stream agrees.
    provider.push({"pieces": PIECES})
    with oai.responses.stream(model=f"guard-{provider.name}", input=PROMPT) as s:
        deltas = "".join(e.delta for e in s if e.type == "response.output_text.delta")
        final = s.get_final_response()
    assert deltas == RESTORED and final.output_text == RESTORED


@pytest.mark.parametrize("provider", route_params(["openai", "anthropic", "gemini", "bedrock"]))
def test_responses_function_call_arguments_get_their_values_back_in_a_stream(oai, provider):
    provider.push({"tool_call": {"name": "send_email", "arguments": {"to": "[EMAIL_1]"}}})
    tool = {"type": "function", "name": "send_email", "parameters": {
        "type": "object", "properties": {"to": {"type": "string"}}}}
    events = list(oai.responses.create(
        model=f"guard-{provider.name}", stream=True, tools=[tool],
        input="Send it to bob@example.com",
    ))
    arguments = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(arguments) == {"to": "bob@example.com"}
    done = [e.arguments for e in events if e.type == "response.function_call_arguments.done"]
    assert [json.loads(d) for d in done] == [{"to": "bob@example.com"}]
    assert "bob@example.com" not in upstream(provider)


def test_openai_rate_limit_headers_count_down_then_rate_limit_error(oai):
    messages = [{"role": "user", "content": "hi"}]
    remaining = []
    for _ in range(2):
        raw = oai.chat.completions.with_raw_response.create(model="limited-openai", messages=messages)
        assert raw.headers["x-ratelimit-limit-requests"] == "2"
        remaining.append(int(raw.headers["x-ratelimit-remaining-requests"]))
        assert raw.headers["x-ratelimit-reset-requests"].endswith("s")
    assert remaining == [1, 0]
    with pytest.raises(openai.RateLimitError) as e:
        oai.chat.completions.create(model="limited-openai", messages=messages)
    assert e.value.code == "rate_limit_exceeded"
    assert int(e.value.response.headers["retry-after"]) >= 1
    assert e.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_anthropic_sdk_gets_rate_limit_error(ant):
    messages = [{"role": "user", "content": "hi"}]
    for _ in range(2):
        ant.messages.create(model="limited-anthropic", max_tokens=16, messages=messages)
    with pytest.raises(anthropic.RateLimitError) as e:
        ant.messages.create(model="limited-anthropic", max_tokens=16, messages=messages)
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_audit_line_says_who_called_what_after_redaction(oai, stack):
    provider = stack.providers["openai"]
    provider.push({"pieces": PIECES})
    raw = oai.chat.completions.with_raw_response.create(
        model="guard-openai", messages=[{"role": "user", "content": PROMPT}],
        extra_headers={"x-gatehouse-tag": "sdk-audit"},
    )
    request_id = raw.headers["x-gatehouse-request-id"]
    deadline = time.monotonic() + 5
    line = None
    while line is None and time.monotonic() < deadline:
        for text in stack.audit.read_text().splitlines():
            entry = json.loads(text)
            if entry["request_id"] == request_id:
                line = entry
        time.sleep(0.02)
    assert line is not None, "no audit line"
    assert line["namespace"] == "default"
    assert line["tag"] == "sdk-audit"
    assert (line["route"], line["provider"], line["status"]) == ("guard-openai", "openai", 200)
    assert line["redaction"]["request"] == {"creditCard": 1, "email": 1}
    assert line["redaction"]["restored"] == 2
    assert "[EMAIL_1]" in line["prompt"]["messages"][0]["content"]
    audit = stack.audit.read_text()
    for value in VALUES:
        assert value not in audit
