/**
 * generate()'s sampling options against hand-computed references: at every step the test
 * takes the model's own logits for the prompt + the tokens so far (model.logits, prefill, f32
 * cache and weights), applies the option's formula itself (OpenAI's presence / frequency
 * penalties, HF's repetition penalty, logit bias, min-p), and checks the generated token is the
 * argmax (greedy) or ops.sample's draw with the step's seed (sampled). Steps whose top two
 * transformed logits are closer than 1e-3 are not judged (prefill vs decode rounding, ~1e-5
 * here, could flip them); the tests count and require judged steps.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Model, Tensor, makeTiny, ops, type GenerateOptions } from '../../lib';
import { rmDir, tmpDir, randomPrompt } from './util';

const root = tmpDir('sampling');
const dir = path.join(root, 'tiny');
let model: Model;
const prompt = randomPrompt('sampling', 7);
const U64 = (1n << 64n) - 1n;
const seedOf = (seed: bigint, step: number) => (seed + BigInt(step) * 0x9e3779b97f4a7c15n) & U64; // model.ts's per-step seed

beforeAll(async () => {
  await makeTiny(dir, { kind: 'v2', seed: 5, dtype: 'f32' });
  model = await Model.load(dir, { device: 'cpu', kvCache: 'f32' });
});
afterAll(async () => {
  await model?.dispose();
  rmDir(root);
});

async function lastRow(tokens: number[]): Promise<Float64Array> {
  const l = (await model.logits(tokens)).data as Float32Array;
  const V = model.config.vocabSize;
  return Float64Array.from(l.subarray((tokens.length - 1) * V));
}

function argmaxGap(x: Float64Array): { best: number; gap: number } {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i] > x[best]) best = i;
  let second = -Infinity;
  for (let i = 0; i < x.length; i++) if (i !== best) second = Math.max(second, x[i]);
  return { best, gap: x[best] - second };
}

/** Replays a generation step by step with `transform` (by hand) and checks each token. */
async function checkGreedy(opts: Partial<GenerateOptions>, transform: (row: Float64Array, prefix: number[]) => Float64Array, n = 12): Promise<number[]> {
  const r = await model.generate({ tokens: prompt, maxNewTokens: n, ...opts }).result;
  let judged = 0;
  for (let t = 0; t < r.tokens.length; t++) {
    const prefix = r.tokens.slice(0, t);
    const { best, gap } = argmaxGap(transform(await lastRow([...prompt, ...prefix]), prefix));
    if (gap < 1e-3) continue;
    expect([t, r.tokens[t]]).toEqual([t, best]);
    judged++;
  }
  expect(judged).toBeGreaterThanOrEqual(r.tokens.length - 1);
  return r.tokens;
}

test('frequency and presence penalties (OpenAI): l − presence·[c > 0] − frequency·c over the output', async () => {
  const plain = (await model.generate({ tokens: prompt, maxNewTokens: 40 }).result).tokens;
  expect(new Set(plain).size).toBeLessThan(plain.length); // greedy repeats itself here…
  const got = await checkGreedy({ frequencyPenalty: 1.5, presencePenalty: 0.5 }, (row, prefix) => {
    const c = new Map<number, number>();
    for (const x of prefix) c.set(x, (c.get(x) ?? 0) + 1);
    for (const [id, k] of c) row[id] -= 0.5 + 1.5 * k;
    return row;
  }, 40);
  expect(got).not.toEqual(plain); // …so the penalty changes the output
});

test('repetition penalty (HF): over prompt + output, ÷ p when > 0, × p when < 0', async () => {
  await checkGreedy({ repetitionPenalty: 1.8 }, (row, prefix) => {
    for (const id of new Set([...prompt, ...prefix])) row[id] = row[id] > 0 ? row[id] / 1.8 : row[id] * 1.8;
    return row;
  });
});

test('logit bias: +100 forces a token, −100 removes the greedy one', async () => {
  const row = await lastRow(prompt);
  const { best } = argmaxGap(row);
  const forced = (best + 7) % row.length;
  const r = await model.generate({ tokens: prompt, maxNewTokens: 5, logitBias: { [forced]: 100 } }).result;
  expect(r.tokens).toEqual(Array(5).fill(forced));
  await checkGreedy({ logitBias: { [best]: -100 } }, (x) => {
    x[best] -= 100;
    return x;
  }, 6);
});

test('min-p at temperature 1: every draw is ops.sample of the logits with p < minP·p_max removed', async () => {
  const seed = 77n;
  const r = await model.generate({ tokens: prompt, maxNewTokens: 10, temperature: 1, minP: 0.3, seed }).result;
  for (let t = 0; t < r.tokens.length; t++) {
    const row = await lastRow([...prompt, ...r.tokens.slice(0, t)]);
    const max = Math.max(...row);
    const cut = max + Math.log(0.3);
    const f = Float32Array.from(row, (v) => (v < cut ? -Infinity : v));
    const near = row.some((v) => Math.abs(v - cut) < 1e-4);
    const draw = (await ops.sample(Tensor.from(f, [1, f.length]), { temperature: 1, seed: seedOf(seed, t) })).data[0];
    if (!near) expect([t, r.tokens[t]]).toEqual([t, draw]);
    expect(row[r.tokens[t]]).toBeGreaterThanOrEqual(cut - 1e-4); // never a removed token
  }
});

test('stopTokenIds: ends with finishReason stop, the token not returned', async () => {
  const free = (await model.generate({ tokens: prompt, maxNewTokens: 12 }).result).tokens;
  const k = free.findIndex((x, i) => i >= 2 && free.indexOf(x) === i);
  const r = await model.generate({ tokens: prompt, maxNewTokens: 12, stopTokenIds: [free[k]] }).result;
  expect(r).toMatchObject({ tokens: free.slice(0, k), finishReason: 'stop' });
});

test('ignoreEos: EOS becomes an ordinary token and generation runs to maxNewTokens', async () => {
  const first = (await model.generate({ tokens: prompt, maxNewTokens: 1 }).result).tokens[0];
  const d = path.join(root, 'eos-first');
  fs.cpSync(dir, d, { recursive: true });
  const cfg = JSON.parse(fs.readFileSync(path.join(d, 'config.json'), 'utf8'));
  fs.writeFileSync(path.join(d, 'config.json'), JSON.stringify({ ...cfg, eos_token_id: first }));
  const m = await Model.load(d, { device: 'cpu', kvCache: 'f32' });
  try {
    expect(await m.generate({ tokens: prompt, maxNewTokens: 6 }).result).toMatchObject({ tokens: [], finishReason: 'eos' });
    const r = await m.generate({ tokens: prompt, maxNewTokens: 6, ignoreEos: true }).result;
    expect(r.tokens).toHaveLength(6);
    expect(r.tokens[0]).toBe(first);
    expect(r.finishReason).toBe('length');
  } finally {
    await m.dispose();
  }
});

test('logprobs: the chosen token\'s log-softmax and the k best, from the raw logits', async () => {
  const chunks = [];
  for await (const c of model.generate({ tokens: prompt, maxNewTokens: 6, logprobs: 3, presencePenalty: 1 })) chunks.push(c);
  const toks = chunks.map((c) => c.token!);
  for (let t = 0; t < chunks.length; t++) {
    const row = await lastRow([...prompt, ...toks.slice(0, t)]);
    const max = Math.max(...row);
    const lse = max + Math.log(row.reduce((a, v) => a + Math.exp(v - max), 0));
    // f32 logits of prefill (here) vs cached decode (the generation): ~1e-5 apart.
    expect(Math.abs(chunks[t].logprob! - (row[toks[t]] - lse))).toBeLessThan(1e-4);
    const want = [...row.keys()].sort((a, b) => row[b] - row[a]).slice(0, 3);
    expect(chunks[t].topLogprobs!.map((x) => x.token)).toEqual(want);
    chunks[t].topLogprobs!.forEach((x) => expect(Math.abs(x.logprob - (row[x.token] - lse))).toBeLessThan(1e-4));
  }
  const zero = await model.generate({ tokens: prompt, maxNewTokens: 2, logprobs: 0 });
  for await (const c of zero) {
    expect(c.logprob).toBeLessThanOrEqual(0);
    expect(c.topLogprobs).toBeUndefined();
  }
  // Without the option the chunks carry none, and tokens match the batched engine path.
  const a = await model.generate({ tokens: prompt, maxNewTokens: 6 }).result;
  const b = await model.generate({ tokens: prompt, maxNewTokens: 6, logprobs: 0 }).result;
  expect(b.tokens).toEqual(a.tokens);
});

test.each<[string, Partial<GenerateOptions>, string, RegExp]>([
  ['repetitionPenalty 0', { repetitionPenalty: 0 }, 'E_RANGE', /repetitionPenalty = 0/],
  ['presencePenalty 3', { presencePenalty: 3 }, 'E_RANGE', /presencePenalty = 3 must be in \[-2, 2\]/],
  ['frequencyPenalty NaN', { frequencyPenalty: NaN }, 'E_RANGE', /frequencyPenalty = NaN/],
  ['minP 1.5', { minP: 1.5 }, 'E_RANGE', /minP = 1.5/],
  ['logitBias key out of the vocabulary', { logitBias: { 99999: 1 } }, 'E_RANGE', /logitBias key "99999"/],
  ['logitBias value 101', { logitBias: { 3: 101 } }, 'E_RANGE', /logitBias\[3\] = 101/],
  ['logitBias an array', { logitBias: [1] as unknown as Record<number, number> }, 'E_ARG', /logitBias must be an object/],
  ['stopTokenIds with -1', { stopTokenIds: [-1] }, 'E_ARG', /stopTokenIds must be an array of token ids/],
  ['ignoreEos "yes"', { ignoreEos: 'yes' as unknown as boolean }, 'E_ARG', /ignoreEos must be true or false/],
  ['logprobs 21', { logprobs: 21 }, 'E_RANGE', /logprobs = 21 must be at most 20/],
])('bad option %s: a coded error', async (_n, o, code, msg) => {
  await expect(model.generate({ tokens: prompt, ...o }).result).rejects.toMatchObject({ code, message: expect.stringMatching(msg) });
});
