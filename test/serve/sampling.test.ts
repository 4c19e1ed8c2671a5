/**
 * The sampling parameters reach Model.generate: presence/frequency/repetition penalties,
 * logit_bias, top_k, min_p, ignore_eos, stop_token_ids give Model.generate's answer for the
 * same options; logprobs (chat: logprobs + top_logprobs; completions: logprobs k) carry
 * the chunks' log-probabilities in OpenAI's shapes, streamed and not.
 */
import * as fs from 'node:fs';
import type { GenerateOptions, Model } from '../../lib';
import { pagesSettle, serve, tinyModel, type Served } from './util';

let model: Model;
let root: string;
let s: Served;

beforeAll(async () => {
  ({ model, root } = await tinyModel('serve-sampling'));
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

const prompt = 'The quick brown fox';

async function viaServer(extra: Record<string, unknown>) {
  const r = await s.client.completions.create({ model: 'tiny', prompt, max_tokens: 64, temperature: 0, ...extra } as any);
  return { text: r.choices[0].text, finish: r.choices[0].finish_reason, n: r.usage!.completion_tokens };
}

async function direct(o: Partial<GenerateOptions>) {
  const r = await model.generate({ prompt, maxNewTokens: 64, temperature: 0, ...o }).result;
  return { text: r.text, finish: r.finishReason === 'length' ? 'length' : 'stop', n: r.tokens.length };
}

test.each<[string, Record<string, unknown>, Partial<GenerateOptions>]>([
  ['presence_penalty', { presence_penalty: 1.5 }, { presencePenalty: 1.5 }],
  ['frequency_penalty', { frequency_penalty: 1.2 }, { frequencyPenalty: 1.2 }],
  ['repetition_penalty', { repetition_penalty: 1.3 }, { repetitionPenalty: 1.3 }],
  ['logit_bias', { logit_bias: { 65: 100, 66: -100 } }, { logitBias: { 65: 100, 66: -100 } }],
  ['top_k with a seed', { top_k: 5, temperature: 1, seed: 7 }, { topK: 5, temperature: 1, seed: 7 }],
  ['min_p with a seed', { min_p: 0.2, temperature: 1, seed: 9 }, { minP: 0.2, temperature: 1, seed: 9 }],
  ['top_k -1 (off)', { top_k: -1, temperature: 0.8, seed: 3 }, { topK: 0, temperature: 0.8, seed: 3 }],
  ['ignore_eos', { ignore_eos: true, max_tokens: 100 }, { ignoreEos: true, maxNewTokens: 100 }],
])('%s: as Model.generate', async (_n, extra, opts) => {
  const want = await direct(opts);
  expect(await viaServer(extra)).toEqual(want);
  // and the option matters (else the test would pass with the option dropped)
  expect(want).not.toEqual(await direct({}));
});

test('logit_bias +100 on one token: greedy picks it every time', async () => {
  const r = await s.client.completions.create({ model: 'tiny', prompt, max_tokens: 5, temperature: 0, logit_bias: { 65: 100 }, logprobs: 0 } as any);
  expect(r.choices[0].text).toBe('AAAAA'); // id 65 is the byte "A" in the tiny byte-level vocabulary
});

test('stop_token_ids: ends before the token with finish_reason "stop"', async () => {
  const full = await model.generate({ prompt, maxNewTokens: 64, temperature: 0 }).result;
  const stopId = full.tokens[5];
  const first = full.tokens.indexOf(stopId);
  const r = await viaServer({ stop_token_ids: [stopId] });
  expect(r.finish).toBe('stop');
  expect(r).toEqual(await direct({ stopTokenIds: [stopId] }));
  expect(r.n).toBe(first);
});

describe('logprobs', () => {
  const messages = [{ role: 'user' as const, content: 'logprobs please' }];

  test('chat, not streamed: one entry per token, top_logprobs best first, as Model.generate chunks', async () => {
    const chunks = [];
    for await (const c of model.generate({ messages, maxNewTokens: 10, temperature: 0, logprobs: 3 })) chunks.push(c);
    const want = chunks.filter((c) => c.token !== null);
    const r = await s.client.chat.completions.create({ model: 'tiny', messages, max_tokens: 10, temperature: 0, logprobs: true, top_logprobs: 3 });
    const content = r.choices[0].logprobs!.content!;
    expect(content).toHaveLength(r.usage!.completion_tokens);
    expect(content.map((e) => e.logprob)).toEqual(want.map((c) => c.logprob));
    for (const [i, e] of content.entries()) {
      expect(e.token).toEqual(expect.any(String));
      expect(e.bytes).toEqual([...Buffer.from(e.token, 'utf8')]);
      expect(e.top_logprobs).toHaveLength(3);
      expect(e.top_logprobs.map((t) => t.logprob)).toEqual(want[i].topLogprobs!.map((t) => t.logprob));
      expect(e.logprob).toBeLessThanOrEqual(0);
    }
    // greedy: the chosen token is the most likely one
    expect(content.every((e) => e.logprob === e.top_logprobs[0].logprob)).toBe(true);
  });

  test('chat, logprobs without top_logprobs: entries with empty top_logprobs; none asked: null', async () => {
    const r = await s.client.chat.completions.create({ model: 'tiny', messages, max_tokens: 4, temperature: 0, logprobs: true });
    expect(r.choices[0].logprobs!.content!.every((e) => e.top_logprobs.length === 0 && typeof e.logprob === 'number')).toBe(true);
    const none = await s.client.chat.completions.create({ model: 'tiny', messages, max_tokens: 4, temperature: 0 });
    expect(none.choices[0].logprobs).toBeNull();
  });

  test('chat, streamed: each content chunk carries its token\'s entry', async () => {
    const st = await s.client.chat.completions.create({ model: 'tiny', messages, max_tokens: 8, temperature: 0, logprobs: true, top_logprobs: 2, stream: true, stream_options: { include_usage: true } });
    const entries: { logprob: number; top_logprobs: unknown[] }[] = [];
    let n = 0;
    for await (const c of st) {
      if (c.usage) n = c.usage.completion_tokens;
      for (const e of c.choices[0]?.logprobs?.content ?? []) entries.push(e);
    }
    expect(entries).toHaveLength(n);
    expect(entries.every((e) => e.top_logprobs.length === 2)).toBe(true);
  });

  test('completions: tokens, token_logprobs, top_logprobs, text_offset', async () => {
    const r = await s.client.completions.create({ model: 'tiny', prompt, max_tokens: 8, temperature: 0, logprobs: 2 });
    const lp = r.choices[0].logprobs!;
    const n = r.usage!.completion_tokens;
    expect(lp.tokens).toHaveLength(n);
    expect(lp.token_logprobs).toHaveLength(n);
    expect(lp.top_logprobs).toHaveLength(n);
    expect(lp.top_logprobs!.every((t) => Object.keys(t).length <= 2)).toBe(true);
    expect(lp.text_offset![0]).toBe(0);
    expect([...lp.text_offset!].sort((a, b) => a - b)).toEqual(lp.text_offset);
  });
});
