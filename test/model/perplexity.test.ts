/**
 * perplexity(): the mean −log p over non-overlapping windows, checked against the float64
 * reference forward (test/reference/forward.ts) computing the same windows itself; prefill =
 * cached decode; the CLI prints what the API returns.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Model, makeTiny, perplexity } from '../../lib';
import { loadReference, type RefModel } from '../reference/forward';
import { run } from '../cli/run';
import { BOS, rmDir, routingSafePrompt, tmpDir } from './util';

const root = tmpDir('ppl');
const dir = path.join(root, 'tiny');
let ref: RefModel;
let model: Model;
const W = 16;
let windows: number[][] = [];
let refNll = 0;
let allowance = 0;

beforeAll(async () => {
  await makeTiny(dir, { kind: 'v2', seed: 21, dtype: 'f32' });
  ref = loadReference(dir);
  model = await Model.load(dir, { device: 'cpu', kvCache: 'f32' });
  // Three windows, each a prompt with no routing near-tie: the reference's tolerances hold.
  let sum = 0;
  let tol = 0;
  let n = 0;
  for (const tag of ['a', 'b', 'c']) {
    const { tokens, r } = routingSafePrompt(ref, `ppl-${tag}`, W);
    windows.push(tokens);
    for (let t = 0; t + 1 < W; t++) {
      const row = r.logits.subarray(t * r.V, (t + 1) * r.V);
      let m = -Infinity;
      for (const v of row) m = Math.max(m, v);
      let s = 0;
      for (const v of row) s += Math.exp(v - m);
      sum += Math.log(s) + m - row[tokens[t + 1]];
      // |Δ log-softmax| ≤ |Δ lse| + |Δ target| ≤ 2 · max |Δ logit| ≤ 2 · the row's allowance.
      let rowTol = 0;
      for (const x of r.tol.subarray(t * r.V, (t + 1) * r.V)) rowTol = Math.max(rowTol, x);
      tol += 2 * rowTol;
      n++;
    }
  }
  refNll = sum / n;
  allowance = tol / n;
});
afterAll(async () => {
  await model?.dispose();
  rmDir(root);
});

test('= the float64 reference over the same windows (native engine, prefill and decode)', async () => {
  const ids = windows.flat();
  for (const mode of ['prefill', 'decode'] as const) {
    const r = await perplexity(model, ids, { context: W, mode });
    expect(r).toMatchObject({ tokens: 3 * (W - 1), windows: 3, context: W, bos: false, mode, vocabSize: 320, kvCache: 'f32' });
    expect(Math.abs(r.nll - refNll)).toBeLessThanOrEqual(allowance);
    expect(r.perplexity).toBeCloseTo(Math.exp(r.nll), 10);
  }
});

test('bos: every window starts with BOS and scores all its text tokens; a short last window counts', async () => {
  const text = windows.flat().filter((t) => t !== BOS); // 45 text tokens
  const r = await perplexity(model, text, { context: 11, bos: true });
  expect(r).toMatchObject({ windows: 5, tokens: 45, bos: true }); // 10 + 10 + 10 + 10 + 5
  const plain = await perplexity(model, text, { context: 11 });
  expect(plain).toMatchObject({ windows: 4, tokens: 40 }); // 11·4 + 1: the last one-token window scores nothing and is dropped
});

test('fp8 and bf16 KV caches: perplexity within a few percent of f32, fewer bytes per token', async () => {
  const f32 = await perplexity(model, windows.flat(), { context: W });
  for (const kv of ['bf16', 'fp8'] as const) {
    const m = await Model.load(dir, { device: 'cpu', kvCache: kv });
    try {
      const r = await perplexity(m, windows.flat(), { context: W });
      expect(r.kvCache).toBe(kv);
      expect(r.kvBytesPerToken).toBeLessThan(f32.kvBytesPerToken);
      // Random weights: cache rounding moves a logit by ~1e-2 at most here; the bound is loose
      // on purpose (the trained model's table in bench/results measures the real effect).
      expect(Math.abs(r.perplexity / f32.perplexity - 1)).toBeLessThan(0.05);
    } finally {
      await m.dispose();
    }
  }
});

test('dsv2 perplexity --json = the API on the file\'s text; errors are coded', async () => {
  const file = path.join(root, 'text.txt');
  fs.writeFileSync(file, 'hello there, the weather is fine. '.repeat(20));
  const r = await run(['perplexity', '--model', dir, '--file', file, '--context', '32', '--kv-cache', 'f32', '--json']);
  expect(r.code).toBe(0);
  const api = await perplexity(model, fs.readFileSync(file, 'utf8'), { context: 32 });
  expect(JSON.parse(r.out)).toEqual(api);
  const missing = await run(['perplexity', '--model', dir, '--file', path.join(root, 'nope.txt'), '--json']);
  expect([missing.code, missing.out]).toEqual([1, '']);
  expect(missing.err).toMatch(/^dsv2: E_IO: cannot read --file/m);
  const bad = await run(['perplexity', '--model', dir, '--file', file, '--context', '1']);
  expect(bad.code).toBe(2);
  await expect(perplexity(model, [1], { context: 8 })).rejects.toMatchObject({ code: 'E_RANGE' });
  await expect(perplexity(model, [1, 2, 3], { context: 100000 })).rejects.toMatchObject({ code: 'E_RANGE' });
});
