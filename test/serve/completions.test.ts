/**
 * The OpenAI endpoints through the official openai client: greedy answers equal
 * Model.generate's (text and token counts), streamed and not; stop strings; max_tokens →
 * "length"; stream_options.include_usage; 32 concurrent clients each get their solo answer;
 * /v1/models, /health, /metrics.
 */
import * as fs from 'node:fs';
import type { ChatMessage, Model } from '../../lib';
import { http, pagesSettle, serve, sseEvents, tinyModel, type Served } from './util';

let model: Model;
let root: string;
let s: Served;

beforeAll(async () => {
  ({ model, root } = await tinyModel('serve-api'));
  s = await serve(model, { modelName: 'tiny' });
});
afterAll(async () => {
  await s?.server.close();
  await model?.dispose();
  fs.rmSync(root, { recursive: true, force: true });
});
afterEach(async () => {
  expect(await pagesSettle(model)).toBe(0);
});

const messages: ChatMessage[] = [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Say something.' }];

async function solo(opts: { messages?: typeof messages; prompt?: string; maxNewTokens: number; stop?: string[] }) {
  return model.generate({ ...opts, temperature: 0 }).result;
}

describe('chat completions', () => {
  test('non-streamed greedy answer equals Model.generate, with usage and the OpenAI shape', async () => {
    const want = await solo({ messages, maxNewTokens: 24 });
    const r = await s.client.chat.completions.create({ model: 'tiny', messages, max_tokens: 24, temperature: 0 });
    expect(r.object).toBe('chat.completion');
    expect(r.id).toMatch(/^chatcmpl-/);
    expect(r.model).toBe('tiny');
    expect(typeof r.created).toBe('number');
    expect(r.choices).toHaveLength(1);
    expect(r.choices[0].message.role).toBe('assistant');
    expect(r.choices[0].message.content).toBe(want.text);
    expect(r.choices[0].finish_reason).toBe(want.finishReason === 'length' ? 'length' : 'stop');
    expect(r.usage).toEqual({ prompt_tokens: want.promptTokens, completion_tokens: want.tokens.length, total_tokens: want.promptTokens + want.tokens.length });
  });

  test('content as an array of text parts is the joined text', async () => {
    const want = await solo({ messages: [{ role: 'user', content: 'Say something.' }], maxNewTokens: 8 });
    const r = await s.client.chat.completions.create({
      model: 'tiny', max_completion_tokens: 8, temperature: 0,
      messages: [{ role: 'user', content: [{ type: 'text', text: 'Say ' }, { type: 'text', text: 'something.' }] }],
    });
    expect(r.choices[0].message.content).toBe(want.text);
  });

  test('the "developer" role is a system message; assistant turns and null content are taken', async () => {
    const want = await solo({ messages: [{ role: 'system', content: 'S' }, { role: 'user', content: 'a' }, { role: 'assistant', content: '' }, { role: 'user', content: 'b' }], maxNewTokens: 6 });
    const r = await s.client.chat.completions.create({
      model: 'tiny', max_tokens: 6, temperature: 0,
      messages: [{ role: 'developer', content: 'S' }, { role: 'user', content: 'a' }, { role: 'assistant', content: null }, { role: 'user', content: 'b' }],
    });
    expect(r.choices[0].message.content).toBe(want.text);
    expect(r.usage!.prompt_tokens).toBe(want.promptTokens);
  });

  test('streamed: role first, deltas join to the text, finish_reason, usage chunk, [DONE]', async () => {
    const want = await solo({ messages, maxNewTokens: 24 });
    const stream = await s.client.chat.completions.create({
      model: 'tiny', messages, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true },
    });
    let text = '';
    let role: string | undefined;
    let finish: string | null = null;
    let usage: unknown = null;
    let n = 0;
    for await (const c of stream) {
      expect(c.object).toBe('chat.completion.chunk');
      expect(c.id).toMatch(/^chatcmpl-/);
      if (n++ === 0) role = c.choices[0].delta.role;
      if (c.choices.length) {
        text += c.choices[0].delta.content ?? '';
        if (c.choices[0].finish_reason) finish = c.choices[0].finish_reason;
      }
      if (c.usage) {
        expect(c.choices).toEqual([]);
        usage = c.usage;
      }
    }
    expect(role).toBe('assistant');
    expect(text).toBe(want.text);
    expect(finish).toBe(want.finishReason === 'length' ? 'length' : 'stop');
    expect(usage).toEqual({ prompt_tokens: want.promptTokens, completion_tokens: want.tokens.length, total_tokens: want.promptTokens + want.tokens.length });
  });

  test('the raw SSE bytes: data: lines, one JSON object each, [DONE] last', async () => {
    const r = await http(`${s.url}/v1/chat/completions`, { body: { messages, max_tokens: 5, temperature: 0, stream: true } });
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/event-stream/);
    expect(r.text.endsWith('data: [DONE]\n\n')).toBe(true);
    const ev = sseEvents(r.text);
    expect(ev[ev.length - 1]).toBe('[DONE]');
    const objs = ev.slice(0, -1).map((e) => JSON.parse(e));
    expect(objs[0].choices[0].delta).toEqual({ role: 'assistant', content: '' });
    expect(objs[objs.length - 1].choices[0].finish_reason).toBe('length');
    expect(objs.every((o) => !('usage' in o))).toBe(true); // no include_usage: no usage field
    expect(objs.slice(0, -1).every((o) => o.choices[0].finish_reason === null)).toBe(true);
  });

  test('max_tokens ends with finish_reason "length" after exactly that many tokens', async () => {
    const r = await s.client.chat.completions.create({ model: 'tiny', messages, max_tokens: 3, temperature: 0, ignore_eos: true } as any);
    expect(r.choices[0].finish_reason).toBe('length');
    expect(r.usage!.completion_tokens).toBe(3);
  });

  test('stop strings: the answer ends before the stop string, finish_reason "stop", as Model.generate', async () => {
    const full = await solo({ messages, maxNewTokens: 40 });
    // A stop string from the middle of the greedy answer (the text is noise, but deterministic).
    const chars = [...full.text];
    const at = Math.floor(chars.length / 2);
    const stop = chars.slice(at, at + 2).join('');
    const want = await solo({ messages, maxNewTokens: 40, stop: [stop] });
    expect(want.finishReason).toBe('stop');
    const r = await s.client.chat.completions.create({ model: 'tiny', messages, max_tokens: 40, temperature: 0, stop });
    expect(r.choices[0].message.content).toBe(want.text);
    expect(r.choices[0].finish_reason).toBe('stop');
    expect(r.usage!.completion_tokens).toBe(want.tokens.length);
    // streamed, and as an array of up to 4
    const st = await s.client.chat.completions.create({ model: 'tiny', messages, max_tokens: 40, temperature: 0, stop: ['\u0000never', stop], stream: true });
    let text = '';
    let finish = null;
    for await (const c of st) {
      text += c.choices[0]?.delta.content ?? '';
      finish = c.choices[0]?.finish_reason ?? finish;
    }
    expect(text).toBe(want.text);
    expect(finish).toBe('stop');
  });

  test('seeded sampling is reproducible', async () => {
    const a = await s.client.chat.completions.create({ model: 'tiny', messages, max_tokens: 12, temperature: 0.9, top_p: 0.95, seed: 42 });
    const b = await s.client.chat.completions.create({ model: 'tiny', messages, max_tokens: 12, temperature: 0.9, top_p: 0.95, seed: 42 });
    expect(a.choices[0].message.content).toBe(b.choices[0].message.content);
    const want = await model.generate({ messages, maxNewTokens: 12, temperature: 0.9, topP: 0.95, seed: 42 }).result;
    expect(a.choices[0].message.content).toBe(want.text);
  });
});

describe('completions', () => {
  test('non-streamed greedy answer equals Model.generate', async () => {
    const want = await solo({ prompt: 'Once upon a time', maxNewTokens: 20 });
    const r = await s.client.completions.create({ model: 'tiny', prompt: 'Once upon a time', max_tokens: 20, temperature: 0 });
    expect(r.object).toBe('text_completion');
    expect(r.id).toMatch(/^cmpl-/);
    expect(r.choices[0].text).toBe(want.text);
    expect(r.choices[0].finish_reason).toBe(want.finishReason === 'length' ? 'length' : 'stop');
    expect(r.usage).toEqual({ prompt_tokens: want.promptTokens, completion_tokens: want.tokens.length, total_tokens: want.promptTokens + want.tokens.length });
  });

  test('streamed, with usage', async () => {
    const want = await solo({ prompt: 'Once upon a time', maxNewTokens: 20 });
    const st = await s.client.completions.create({ model: 'tiny', prompt: 'Once upon a time', max_tokens: 20, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = '';
    let finish = null;
    let usage = null;
    for await (const c of st) {
      expect(c.object).toBe('text_completion');
      if (c.choices.length) {
        text += c.choices[0].text;
        finish = c.choices[0].finish_reason ?? finish;
      }
      if (c.usage) usage = c.usage;
    }
    expect(text).toBe(want.text);
    expect(finish).toBe(want.finishReason === 'length' ? 'length' : 'stop');
    expect(usage).toEqual({ prompt_tokens: want.promptTokens, completion_tokens: want.tokens.length, total_tokens: want.promptTokens + want.tokens.length });
  });

  test('a prompt of token ids, and echo', async () => {
    const ids = model.tokenizer!.encode('abc');
    const want = await model.generate({ tokens: ids, maxNewTokens: 6, temperature: 0 }).result;
    const r = await s.client.completions.create({ model: 'tiny', prompt: ids, max_tokens: 6, temperature: 0 });
    expect(r.choices[0].text).toBe(want.text);
    const e = await s.client.completions.create({ model: 'tiny', prompt: 'abc', max_tokens: 6, temperature: 0, echo: true });
    expect(e.choices[0].text).toBe(`abc${want.text}`);
  });
});

test('32 concurrent streamed and non-streamed clients all complete, each with its solo answer', async () => {
  const prompts = Array.from({ length: 32 }, (_, i) => `prompt number ${i}:`);
  const solos = [];
  for (const p of prompts) solos.push(await solo({ prompt: p, maxNewTokens: 16 }));
  const got = await Promise.all(prompts.map(async (p, i) => {
    if (i % 2 === 0) {
      const r = await s.client.completions.create({ model: 'tiny', prompt: p, max_tokens: 16, temperature: 0 });
      return r.choices[0].text;
    }
    const st = await s.client.completions.create({ model: 'tiny', prompt: p, max_tokens: 16, temperature: 0, stream: true });
    let t = '';
    for await (const c of st) t += c.choices[0]?.text ?? '';
    return t;
  }));
  expect(got).toEqual(solos.map((r) => r.text));
});

test('a long prompt twice (the prefix cache may keep its pages): the same answer, no pages held after', async () => {
  const long = `${'a long shared system prompt, '.repeat(12)}then the question`; // > 2 pages of 64 tokens
  const want = await solo({ prompt: long, maxNewTokens: 12 });
  for (let i = 0; i < 2; i++) {
    const r = await s.client.completions.create({ model: 'tiny', prompt: long, max_tokens: 12, temperature: 0 });
    expect(r.choices[0].text).toBe(want.text);
    expect(r.usage!.prompt_tokens).toBeGreaterThan(128);
  }
  const m = (await http(`${s.url}/metrics`)).text;
  expect(m).toMatch(/^dsv2_prefix_cache_pages \d+$/m);
  expect(m).toMatch(/^dsv2_prefix_cache_hit_rate [\d.e-]+$/m);
});

describe('other routes', () => {
  test('/v1/models lists the model', async () => {
    const list = await s.client.models.list();
    expect(list.data.map((m) => m.id)).toEqual(['tiny']);
    expect(list.data[0].object).toBe('model');
    const one = await s.client.models.retrieve('tiny');
    expect(one.id).toBe('tiny');
    const r = await http(`${s.url}/v1/models/nope`);
    expect(r.status).toBe(404);
    expect(r.json.error.code).toBe('model_not_found');
  });

  test('/health', async () => {
    const r = await http(`${s.url}/health`);
    expect(r.status).toBe(200);
    expect(r.json).toEqual({ status: 'ok' });
  });

  test('/metrics: the metric names, and requests counted by endpoint and status', async () => {
    const count = (text: string) => {
      const m = /^dsv2_requests_total\{endpoint="\/v1\/completions",status="200"\} (\d+)/m.exec(text);
      return m ? Number(m[1]) : 0;
    };
    const before = count((await http(`${s.url}/metrics`)).text);
    await s.client.completions.create({ model: 'tiny', prompt: 'x', max_tokens: 2, temperature: 0 });
    await s.client.completions.create({ model: 'tiny', prompt: 'y', max_tokens: 2, temperature: 0 });
    const r = await http(`${s.url}/metrics`);
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/plain/);
    for (const name of ['dsv2_requests_total', 'dsv2_prompt_tokens_total', 'dsv2_generated_tokens_total', 'dsv2_queue_length',
      'dsv2_running_sequences', 'dsv2_kv_pages_used', 'dsv2_kv_pages_free', 'dsv2_time_to_first_token_seconds_bucket',
      'dsv2_inter_token_latency_seconds_bucket', 'dsv2_request_duration_seconds_bucket']) {
      expect(r.text).toContain(name);
    }
    expect(count(r.text)).toBe(before + 2);
    expect(r.text).toMatch(new RegExp(`^dsv2_kv_pages_free ${model.cache.pagesFree}$`, 'm'));
    expect(r.text).toMatch(/^dsv2_running_sequences 0$/m);
  });
});
