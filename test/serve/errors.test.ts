/**
 * Bad requests are OpenAI-style errors ({"error": {message, type, param, code}}) with the
 * right status, never a crash: malformed JSON, wrong types, n = 2, negative max_tokens,
 * unknown roles, too long a prompt, too large a body (413). The API key (401). A full queue
 * (429). After all of them the server still answers.
 */
import * as fs from 'node:fs';
import OpenAI from 'openai';
import type { Model } from '../../lib';
import { http, pagesSettle, serve, sleep, slowModel, tinyModel, type Served } from './util';

let model: Model;
let root: string;
let s: Served;

beforeAll(async () => {
  ({ model, root } = await tinyModel('serve-err'));
  s = await serve(model, { modelName: 'tiny', bodyLimit: 64 * 1024 });
});
afterAll(async () => {
  await s?.server.close();
  await model?.dispose();
  fs.rmSync(root, { recursive: true, force: true });
});
afterEach(async () => {
  expect(await pagesSettle(model)).toBe(0);
});

const user = [{ role: 'user', content: 'hi' }];

function expectError(r: { status: number; json: any }, status: number, param?: string | null) {
  expect(r.status).toBe(status);
  expect(Object.keys(r.json)).toEqual(['error']);
  expect(Object.keys(r.json.error).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(typeof r.json.error.message).toBe('string');
  expect(typeof r.json.error.type).toBe('string');
  for (const k of ['param', 'code']) expect(r.json.error[k] === null || typeof r.json.error[k] === 'string').toBe(true);
  if (status === 400 || status === 413) expect(r.json.error.type).toBe('invalid_request_error');
  if (param !== undefined) expect(r.json.error.param).toBe(param);
}

describe('400 with the error shape', () => {
  const chat = `/v1/chat/completions`;
  test.each<[string, string, Record<string, unknown>, string | null]>([
    ['messages missing', chat, {}, 'messages'],
    ['messages not an array', chat, { messages: 'hi' }, 'messages'],
    ['messages empty', chat, { messages: [] }, 'messages'],
    ['unknown role', chat, { messages: [{ role: 'wizard', content: 'hi' }] }, 'messages[0].role'],
    ['a text part without text', chat, { messages: [{ role: 'user', content: [{ type: 'text' }] }] }, 'messages[0].content[0].text'],
    ['a message without a role', chat, { messages: [{ content: 'hi' }] }, 'messages[0].role'],
    ['seed a string', chat, { messages: user, seed: 'abc' }, 'seed'],
    ['stream_options not an object', chat, { messages: user, stream: true, stream_options: 5 }, 'stream_options'],
    ['response_format json_schema', chat, { messages: user, response_format: { type: 'json_schema' } }, 'response_format'],
    ['content a number', chat, { messages: [{ role: 'user', content: 5 }] }, 'messages[0].content'],
    ['an image part', chat, { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, 'messages[0].content[0].type'],
    ['max_tokens a string', chat, { messages: user, max_tokens: '5' }, 'max_tokens'],
    ['max_tokens negative', chat, { messages: user, max_tokens: -1 }, 'max_tokens'],
    ['max_tokens 1.5', chat, { messages: user, max_tokens: 1.5 }, 'max_tokens'],
    ['temperature 3', chat, { messages: user, temperature: 3 }, 'temperature'],
    ['temperature a string', chat, { messages: user, temperature: 'hot' }, 'temperature'],
    ['top_p 0', chat, { messages: user, top_p: 0 }, 'top_p'],
    ['n = 2', chat, { messages: user, n: 2 }, 'n'],
    ['stream not a boolean', chat, { messages: user, stream: 'yes' }, 'stream'],
    ['five stop strings', chat, { messages: user, stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop'],
    ['stop a number', chat, { messages: user, stop: 5 }, 'stop'],
    ['presence_penalty 3', chat, { messages: user, presence_penalty: 3 }, 'presence_penalty'],
    ['logit_bias with a bad key', chat, { messages: user, logit_bias: { abc: 1 } }, 'logit_bias'],
    ['logit_bias outside the vocabulary', chat, { messages: user, logit_bias: { 99999: 1 } }, 'logit_bias'],
    ['logit_bias value 200', chat, { messages: user, logit_bias: { 5: 200 } }, 'logit_bias[5]'],
    ['top_logprobs without logprobs', chat, { messages: user, top_logprobs: 2 }, 'top_logprobs'],
    ['top_logprobs 21', chat, { messages: user, logprobs: true, top_logprobs: 21 }, 'top_logprobs'],
    ['tools', chat, { messages: user, tools: [{ type: 'function', function: { name: 'f' } }] }, 'tools'],
    ['completions: prompt missing', '/v1/completions', {}, 'prompt'],
    ['completions: prompt a number', '/v1/completions', { prompt: 5 }, 'prompt'],
    ['completions: token id outside the vocabulary', '/v1/completions', { prompt: [1, 100000] }, 'prompt'],
    ['completions: stop_token_ids outside the vocabulary', '/v1/completions', { prompt: 'a', stop_token_ids: [100000] }, 'stop_token_ids'],
  ])('%s', async (_name, route, body, param) => {
    const r = await http(`${s.url}${route}`, { body });
    expectError(r, 400, param);
  });

  test('a body that is not an object', async () => {
    expectError(await http(`${s.url}/v1/chat/completions`, { raw: '[1, 2]' }), 400);
    expectError(await http(`${s.url}/v1/chat/completions`, { raw: '"hi"' }), 400);
  });

  test('malformed JSON', async () => {
    const r = await http(`${s.url}/v1/chat/completions`, { raw: '{"messages": [' });
    expectError(r, 400);
    expect(r.json.error.message).toMatch(/JSON/);
    expectError(await http(`${s.url}/v1/completions`, { raw: '' }), 400);
  });

  test('too long a prompt: 400 context_length_exceeded before anything streams', async () => {
    const long = 'x'.repeat(3000); // > 2048 tokens of the byte-level tokenizer
    const r = await http(`${s.url}/v1/completions`, { body: { prompt: long, stream: true } });
    expectError(r, 400, 'prompt');
    expect(r.json.error.code).toBe('context_length_exceeded');
    const c = await http(`${s.url}/v1/chat/completions`, { body: { messages: [{ role: 'user', content: long }] } });
    expectError(c, 400, 'messages');
    // Far past the context: refused after tokenizing a prefix only (tokenizing blocks the event loop).
    const huge = await http(`${s.url}/v1/completions`, { body: { prompt: 'y'.repeat(60_000) } });
    expectError(huge, 400, 'prompt');
    expect(huge.json.error.message).toMatch(/maximum context length is 2048 tokens, and the prompt has more than/);
  });

  test('through the openai client: BadRequestError', async () => {
    await expect(s.client.chat.completions.create({ model: 'tiny', messages: user as any, n: 2 })).rejects.toMatchObject({ status: 400, param: 'n' });
    await expect(s.client.chat.completions.create({ model: 'tiny', messages: user as any, max_tokens: -5 })).rejects.toBeInstanceOf(OpenAI.BadRequestError);
  });
});

test('a body past the limit: 413', async () => {
  const r = await http(`${s.url}/v1/completions`, { body: { prompt: 'x'.repeat(100 * 1024) } });
  expectError(r, 413);
});

test('an unknown route: 404 with the error shape', async () => {
  expectError(await http(`${s.url}/v1/nothing`), 404);
});

test('after all that, the server still answers', async () => {
  const r = await s.client.chat.completions.create({ model: 'tiny', messages: user as any, max_tokens: 4, temperature: 0 });
  expect(r.choices[0].message.content).toEqual(expect.any(String));
});

describe('--api-key', () => {
  let k: Served;
  beforeAll(async () => {
    k = await serve(model, { apiKey: 'sekrit' }, 'sekrit');
  });
  afterAll(async () => {
    await k?.server.close();
  });

  test('/v1 routes need the key: 401 without or with a wrong one, 200 with it', async () => {
    const none = await http(`${k.url}/v1/models`);
    expectError(none, 401);
    expect(none.json.error.code).toBe('invalid_api_key');
    expectError(await http(`${k.url}/v1/chat/completions`, { body: { messages: user }, headers: { authorization: 'Bearer wrong' } }), 401);
    const wrong = new OpenAI({ baseURL: `${k.url}/v1`, apiKey: 'wrong', maxRetries: 0 });
    await expect(wrong.models.list()).rejects.toBeInstanceOf(OpenAI.AuthenticationError);
    const ok = await k.client.chat.completions.create({ model: 'x', messages: user as any, max_tokens: 2 });
    expect(ok.choices).toHaveLength(1);
    expect((await http(`${k.url}/v1/models`, { headers: { authorization: 'Bearer sekrit' } })).status).toBe(200);
  });

  test('/health and /metrics stay open', async () => {
    expect((await http(`${k.url}/health`)).status).toBe(200);
    expect((await http(`${k.url}/metrics`)).status).toBe(200);
  });
});

test('a full queue: 429 overloaded, and requests are taken again once it drains', async () => {
  const q = await serve(slowModel(model, 20), { maxQueue: 1 });
  try {
    const long = q.client.completions.create({ model: 'x', prompt: 'slow', max_tokens: 30, temperature: 0, ignore_eos: true } as any);
    for (let i = 0; i < 500 && q.server.load().running === 0; i++) await sleep(10); // it is running
    const r = await http(`${q.url}/v1/completions`, { body: { prompt: 'b', max_tokens: 2 } });
    expectError(r, 429);
    expect(r.json.error.code).toBe('overloaded');
    expect(r.headers.get('retry-after')).toBe('1');
    await expect(q.client.completions.create({ model: 'x', prompt: 'c', max_tokens: 2 })).rejects.toBeInstanceOf(OpenAI.RateLimitError);
    const done = await long;
    expect(done.choices[0].finish_reason).toBe('length');
    const again = await q.client.completions.create({ model: 'x', prompt: 'd', max_tokens: 2 });
    expect(again.choices).toHaveLength(1);
    const m = (await http(`${q.url}/metrics`)).text;
    expect(m).toMatch(/^dsv2_requests_total\{endpoint="\/v1\/completions",status="429"\} 2$/m);
  } finally {
    await q.server.close();
  }
});
