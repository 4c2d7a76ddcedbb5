// The official `openai` npm package against `hkv serve --http-port`: models, completions and
// chat, streamed and not, n samples and logprobs, errors as the SDK's typed exceptions, and a client that aborts a
// stream (its request must end and its KV blocks be freed), the API key (a wrong one is the
// SDK's AuthenticationError) and X-Request-Id echoed back. Usage: node openai_sdk_test.mjs
// BASE_URL MODEL API_KEY (the server runs with --api-key=API_KEY). Exits non-zero on the first
// failed check.
import assert from 'node:assert/strict';
import OpenAI from 'openai';

const [baseURL, model, apiKey] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60000 });
const root = baseURL.replace(/\/v1\/?$/, '');

async function metric(names) {
  const text = await (await fetch(`${root}/metrics`)).text();
  for (const name of names) {
    const line = text.split('\n').find((l) => l.startsWith(name + ' '));
    if (line) return Number(line.split(' ')[1]);
  }
  throw new Error(`none of ${names} in /metrics`);
}
const running = () => metric(['hkv_requests_running', 'vllm:num_requests_running']);
const blocksUsed = () => metric(['hkv_kv_blocks_used']);
const generated = () => metric(['hkv_generation_tokens_total', 'vllm:generation_tokens_total']);

async function checkModels() {
  const models = [];
  for await (const m of client.models.list()) models.push(m.id);
  assert.ok(models.includes(model), `models: ${models}`);
}

async function checkCompletions() {
  const params = { model, prompt: 'The key is', max_tokens: 12, temperature: 0, ignore_eos: true };
  const whole = await client.completions.create(params);
  assert.equal(whole.object, 'text_completion');
  assert.equal(whole.choices.length, 1);
  assert.equal(whole.choices[0].finish_reason, 'length');
  assert.equal(whole.usage.completion_tokens, 12);
  assert.equal(typeof whole.choices[0].text, 'string');

  const stream = await client.completions.create({
    ...params, stream: true, stream_options: { include_usage: true } });
  let text = '';
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      text += c.text;
      if (c.finish_reason) finish = c.finish_reason;
    }
  }
  assert.equal(text, whole.choices[0].text);
  assert.equal(finish, 'length');
  assert.equal(usage.completion_tokens, 12);
  assert.equal(usage.prompt_tokens, whole.usage.prompt_tokens);
}

async function checkChat() {
  const params = {
    model,
    messages: [
      { role: 'system', content: 'You answer briefly.' },
      { role: 'user', content: [{ type: 'text', text: 'What is the key?' }] },
    ],
    max_completion_tokens: 10,
    temperature: 0,
    ignore_eos: true,
  };
  const whole = await client.chat.completions.create(params);
  assert.equal(whole.object, 'chat.completion');
  assert.equal(whole.choices[0].message.role, 'assistant');
  assert.equal(whole.choices[0].finish_reason, 'length');
  assert.equal(whole.usage.completion_tokens, 10);

  const stream = await client.chat.completions.create({
    ...params, stream: true, stream_options: { include_usage: true } });
  let content = '';
  let role = null;
  let usage = null;
  for await (const chunk of stream) {
    assert.equal(chunk.object, 'chat.completion.chunk');
    if (chunk.usage) usage = chunk.usage;
    for (const c of chunk.choices) {
      if (c.delta.role) role = c.delta.role;
      content += c.delta.content ?? '';
    }
  }
  assert.equal(role, 'assistant');
  assert.equal(content, whole.choices[0].message.content);
  assert.equal(usage.total_tokens, whole.usage.total_tokens);

  // What the template made of the messages, as /tokenize shows it.
  const tok = await (await fetch(`${root}/tokenize`, {
    method: 'POST', headers: { Authorization: `Bearer ${apiKey}` },
    body: JSON.stringify({ model, messages: params.messages }) })).json();
  assert.equal(tok.count, whole.usage.prompt_tokens);
  assert.ok(tok.prompt.includes('What is the key?'));
}

async function checkErrors() {
  await assert.rejects(client.completions.create({ model: 'no-such-model', prompt: 'x' }),
    (e) => e instanceof OpenAI.NotFoundError && e.status === 404);
  await assert.rejects(client.completions.create({ model, prompt: 'x', echo: true }),
    (e) => e instanceof OpenAI.BadRequestError && /not supported/.test(e.message));
  await assert.rejects(client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'hi' }], logprobs: true, top_logprobs: 21 }),
  (e) => e instanceof OpenAI.BadRequestError && /top_logprobs/.test(e.message));
  await assert.rejects(client.chat.completions.create({ model, messages: 'hi' }),
    (e) => e instanceof OpenAI.BadRequestError && /messages/.test(e.message));
  await assert.rejects(client.completions.create({ model, prompt: 'x', temperature: 'hot' }),
    (e) => e instanceof OpenAI.BadRequestError && /temperature/.test(e.message));
}

// n samples and logprobs as the SDK's types read them.
async function checkSampling() {
  const greedy = await client.completions.create({
    model, prompt: 'The key is', max_tokens: 6, temperature: 0, ignore_eos: true, n: 3,
    logprobs: 2 });
  assert.deepEqual(greedy.choices.map((c) => c.index), [0, 1, 2]);
  for (const c of greedy.choices) {
    assert.equal(c.text, greedy.choices[0].text);
    assert.equal(c.logprobs.tokens.length, 6);
    assert.equal(c.logprobs.tokens.join(''), c.text);
    assert.equal(c.logprobs.top_logprobs[0][c.logprobs.tokens[0]], c.logprobs.token_logprobs[0]);
  }
  assert.equal(greedy.usage.completion_tokens, 18);

  const params = {
    model, messages: [{ role: 'user', content: 'What is the key?' }], max_tokens: 5,
    temperature: 1, seed: 11, ignore_eos: true, n: 2, logprobs: true, top_logprobs: 3,
    presence_penalty: 0.5, min_p: 0.05 };
  const whole = await client.chat.completions.create(params);
  assert.equal(whole.choices.length, 2);
  for (const c of whole.choices) {
    const content = c.logprobs.content;
    assert.equal(content.length, 5);
    assert.equal(content.map((t) => t.token).join(''), c.message.content);
    for (const t of content) {
      assert.ok(t.logprob <= 0);
      assert.ok(t.top_logprobs.length <= 3 && t.top_logprobs.length >= 1);
      assert.ok(Array.isArray(t.bytes));
      for (let k = 1; k < t.top_logprobs.length; k++) {
        assert.ok(t.top_logprobs[k - 1].logprob >= t.top_logprobs[k].logprob);
      }
    }
  }
  const stream = await client.chat.completions.create({ ...params, stream: true });
  const content = ['', ''];
  const tokens = [0, 0];
  for await (const chunk of stream) {
    for (const c of chunk.choices) {
      content[c.index] += c.delta.content ?? '';
      tokens[c.index] += c.logprobs?.content?.length ?? 0;
    }
  }
  assert.deepEqual(content, whole.choices.map((c) => c.message.content));  // Seeded.
  assert.deepEqual(tokens, [5, 5]);
}

async function checkApiKey() {
  const stranger = new OpenAI({ baseURL, apiKey: 'wrong-key-0123456789', maxRetries: 0 });
  await assert.rejects(stranger.completions.create({ model, prompt: 'x', max_tokens: 1 }),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401 &&
      e.code === 'invalid_api_key');
  await assert.rejects(stranger.models.list(), (e) => e instanceof OpenAI.AuthenticationError);
  // Probes and scrapers need no key.
  assert.equal((await fetch(`${root}/health`)).status, 200);
  assert.equal((await fetch(`${root}/metrics`)).status, 200);
}

async function checkRequestId() {
  const { data, response } = await client.completions
    .create({ model, prompt: 'The key is', max_tokens: 2 }, { headers: { 'X-Request-Id': 'sdk-7' } })
    .withResponse();
  assert.equal(response.headers.get('x-request-id'), 'sdk-7');
  assert.equal(data.id, 'cmpl-sdk-7');
  const chat = await client.chat.completions
    .create({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 })
    .withResponse();
  const id = chat.response.headers.get('x-request-id');
  assert.ok(id?.startsWith('hkv-'), `generated id: ${id}`);
  assert.equal(chat.data.id, `chatcmpl-${id}`);
}

async function checkAbortMidStream() {
  const before = await generated();
  const stream = await client.chat.completions.create({
    model, messages: [{ role: 'user', content: 'Tell me everything.' }],
    max_tokens: 3000, ignore_eos: true, stream: true });
  let chunks = 0;
  for await (const chunk of stream) {
    if (chunk.choices[0]?.delta?.content) chunks++;
    if (chunks >= 2) break;  // Leaving the loop aborts the HTTP request.
  }
  for (let i = 0; i < 200 && ((await running()) !== 0 || (await blocksUsed()) !== 0); i++) {
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(await running(), 0);
  assert.equal(await blocksUsed(), 0);
  assert.ok((await generated()) - before < 3000, 'the aborted request ran to its end');
}

for (const check of [checkModels, checkCompletions, checkChat, checkSampling, checkErrors,
  checkApiKey, checkRequestId, checkAbortMidStream]) {
  await check();
  console.log(`ok ${check.name}`);
}
console.log('openai sdk OK');
