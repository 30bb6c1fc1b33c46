// Node clients against the sidecar, one run per provider type (the routes `via-<name>` that
// tests/sdk/conftest.py sets up; it runs this suite with GATEHOUSE_BASE_URL and
// GATEHOUSE_PROVIDERS set): the `openai` package (chat and Responses), `@anthropic-ai/sdk`
// (messages, countTokens, models), and the Vercel AI SDK (`@ai-sdk/openai`'s default Responses
// provider and its `.chat` provider, `@ai-sdk/anthropic`): generateText, streamText, tools,
// generateObject.
import { test } from 'node:test';
import assert from 'node:assert/strict';

import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { generateText, streamText, generateObject, tool, stepCountIs } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';
import { createAnthropic } from '@ai-sdk/anthropic';
import { z } from 'zod';

const base = process.env.GATEHOUSE_BASE_URL;
const providers = JSON.parse(process.env.GATEHOUSE_PROVIDERS ?? '[]');
if (!base || providers.length === 0) throw new Error('run through tests/sdk (test_node_clients.py)');

const openai = new OpenAI({ baseURL: `${base}/v1`, apiKey: 'unused', maxRetries: 0 });
const anthropic = new Anthropic({ baseURL: base, apiKey: 'unused', maxRetries: 0 });
const aiOpenAI = createOpenAI({ baseURL: `${base}/v1`, apiKey: 'unused' });
const aiAnthropic = createAnthropic({ baseURL: `${base}/v1`, apiKey: 'unused' });
const City = z.object({ name: z.string(), population: z.number() });
const weather = tool({
  description: 'Current weather for a city.',
  inputSchema: z.object({ location: z.string() }),
  execute: async ({ location }) => `sunny in ${location}`,
});

for (const { name, model } of providers) {
  const route = `via-${name}`;
  const text = `This is ${model} mock speaking.`;

  test(`${name}: openai chat and stream`, async () => {
    const chat = await openai.chat.completions.create({ model: route, messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(chat.choices[0].message.content, text);
    let streamed = '';
    for await (const chunk of await openai.chat.completions.create({ model: route, stream: true, messages: [{ role: 'user', content: 'hi' }] })) {
      streamed += chunk.choices[0]?.delta?.content ?? '';
    }
    assert.equal(streamed, text);
  });

  test(`${name}: openai responses, stream and parse`, async () => {
    const r = await openai.responses.create({ model: route, input: 'hi' });
    assert.equal(r.output_text, text);
    const stream = openai.responses.stream({ model: route, input: 'hi' });
    const final = await stream.finalResponse();
    // The stream helper's final Response has no `output_text` convenience: read the items.
    const finalText = final.output.flatMap((o) => o.content ?? []).map((c) => c.text).join('');
    assert.equal(finalText, text);
    assert.equal(final.status, 'completed');
    const parsed = await openai.responses.parse({
      model: route, input: 'Biggest city?',
      text: { format: { type: 'json_schema', name: 'city', strict: true, schema: {
        type: 'object', properties: { name: { type: 'string' }, population: { type: 'integer' } },
        required: ['name', 'population'], additionalProperties: false } } },
    });
    assert.deepEqual(parsed.output_parsed, { name: 'mock', population: 1 });
  });

  test(`${name}: anthropic messages, stream, countTokens, models`, async () => {
    const m = await anthropic.messages.create({ model: route, max_tokens: 64, messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(m.content[0].text, text);
    const stream = anthropic.messages.stream({ model: route, max_tokens: 64, messages: [{ role: 'user', content: 'hi' }] });
    assert.equal(await stream.finalText(), text);
    const counted = await anthropic.messages.countTokens({ model: route, messages: [{ role: 'user', content: 'count these words' }] });
    assert.ok(counted.input_tokens > 0);
    const info = await anthropic.models.retrieve(route);
    assert.equal(info.id, route);
  });

  for (const [label, languageModel] of [
    ['ai-sdk openai (responses)', () => aiOpenAI(route)],
    ['ai-sdk openai.chat', () => aiOpenAI.chat(route)],
    ['ai-sdk anthropic', () => aiAnthropic(route)],
  ]) {
    test(`${name}: ${label} generateText, streamText, tools, generateObject`, async () => {
      const g = await generateText({ model: languageModel(), prompt: 'hi' });
      assert.equal(g.text, text);
      const s = streamText({ model: languageModel(), prompt: 'hi' });
      let streamed = '';
      for await (const part of s.textStream) streamed += part;
      assert.equal(streamed, text);
      const t = await generateText({
        model: languageModel(), prompt: "What's the weather in Paris?", tools: { get_weather: weather },
        stopWhen: stepCountIs(2),
      });
      assert.equal(t.steps[0].toolCalls[0].toolName, 'get_weather');
      assert.deepEqual(t.steps[0].toolCalls[0].input, { location: 'Paris' });
      assert.equal(t.text, text);
      const o = await generateObject({ model: languageModel(), schema: City, prompt: 'Biggest city?' });
      assert.deepEqual(o.object, { name: 'mock', population: 1 });
    });
  }
}
