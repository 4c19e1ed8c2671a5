/**
 * The native model engine on the CPU backend: the C++ orchestration that the CUDA runtime
 * runs, checked here on every machine.
 * - Against the float64 reference (test/reference/forward.ts, with the allowances of
 *   forward.test.ts): prefill and decode logits for every tiny kind and cache dtype.
 * - Sampling on the engine's backend draws what ops.sample draws from the same logits row.
 * - Batching: several sequences in one step (varlen prefill, batched decode) equal to running
 *   them one at a time; chunked prefill equal to a single step within the reference allowance.
 * - Bad step input is a coded error naming the value.
 */
import * as path from 'node:path';
import { Dsv2Error, KvCache, Model, NativeEngine, Tensor, makeTiny, ops } from '../../lib';
import type { TinyKind } from '../../lib/model/tiny';
import { loadReference, referenceLogits, type CacheKind, type RefModel } from '../reference/forward';
import { expectLogitsMatch, randomPrompt, rmDir, routingSafePrompt, tmpDir } from './util';

const KINDS: readonly TinyKind[] = ['v2', 'v2-lite', 'v3'];
const CACHES: readonly CacheKind[] = ['f32', 'bf16', 'fp8'];
const SEED: Record<TinyKind, number> = { v2: 201, 'v2-lite': 202, v3: 203 };
const T = 12;

const root = tmpDir('engine');
afterAll(() => rmDir(root));

const f32 = (t: Tensor): Float32Array => t.data as Float32Array;

/** Index and values of the first element where a and b differ (bitwise; NaN equal to NaN), or null. */
function firstDiff(a: Float32Array, b: Float32Array): string | null {
  if (a.length !== b.length) return `lengths ${a.length} vs ${b.length}`;
  const ua = new Uint32Array(a.buffer, a.byteOffset, a.length);
  const ub = new Uint32Array(b.buffer, b.byteOffset, b.length);
  for (let i = 0; i < a.length; i++) if (ua[i] !== ub[i]) return `element ${i}: ${a[i]} vs ${b[i]}`;
  return null;
}

describe.each(KINDS)('%s (bf16 weights)', (kind) => {
  const dir = path.join(root, kind);
  let ref: RefModel;
  let prompt: number[];
  const nat = {} as Record<CacheKind, Model>;

  beforeAll(async () => {
    await makeTiny(dir, { kind, seed: SEED[kind], dtype: 'bf16' });
    ref = loadReference(dir);
    prompt = routingSafePrompt(ref, `engine-${kind}`, T, 'f32').tokens;
    for (const kv of CACHES) {
      nat[kv] = await Model.load(dir, { kvCache: kv, device: 'cpu' });
    }
  });
  afterAll(async () => {
    for (const m of Object.values(nat)) await m.dispose();
  });

  test.each(CACHES)('%s cache: prefill and decode logits match the float64 reference', async (kv) => {
    const r = referenceLogits(ref, prompt, { cache: kv });
    expectLogitsMatch(await nat[kv].logits(prompt, { mode: 'prefill' }), r, { kind, kv, mode: 'prefill' }, `engine ${kind} ${kv} prefill`);
    expectLogitsMatch(await nat[kv].logits(prompt, { mode: 'decode' }), r, { kind, kv, mode: 'decode' }, `engine ${kind} ${kv} decode`);
  });

  test('the engine\'s sampler draws what ops.sample draws from the same logits (greedy and seeded)', async () => {
    // logprobs forces the host path (the last row's logits come back and ops.sample draws);
    // without it the engine samples on its backend: the same seed must give the same tokens.
    for (const o of [{ temperature: 0 }, { temperature: 0.8, topK: 20, topP: 0.9, seed: 7 }, { temperature: 1.3, seed: 99 }]) {
      const host = await nat.bf16.generate({ tokens: prompt, maxNewTokens: 10, logprobs: 1, ...o }).result;
      const dev = await nat.bf16.generate({ tokens: prompt, maxNewTokens: 10, ...o }).result;
      expect(dev.tokens).toEqual(host.tokens);
      expect(dev.finishReason).toEqual(host.finishReason);
    }
  });
});

describe('batched and chunked steps (v2, bf16 cache)', () => {
  const dir = path.join(root, 'batch');
  let model: Model;
  let engine: NativeEngine;
  let cache: KvCache;
  const c = () => model.config;

  beforeAll(async () => {
    await makeTiny(dir, { kind: 'v2', seed: 204, dtype: 'bf16' });
    model = await Model.load(dir, { device: 'cpu' });
    // A second engine over its own cache, for up to 3 sequences per step.
    const cfg = model.config;
    cache = await KvCache.create({ layers: cfg.numLayers, pages: 16, dC: cfg.kvLoraRank, dR: cfg.qkRopeHeadDim, dtype: 'bf16', pageSize: 64 });
    const { loadWeights } = await import('../../lib/model/weights');
    const { Checkpoint } = await import('../../lib/model/checkpoint');
    const ck = await Checkpoint.open(dir);
    const weights = await loadWeights(ck, {});
    await ck.close();
    const rope = await ops.ropeTable({ dim: cfg.rope.dim, maxPositions: 256, theta: cfg.rope.theta, yarn: cfg.rope.yarn });
    engine = await NativeEngine.create(cfg, weights, cache, rope, 'cpu', { maxTokens: 64, maxSeqs: 3, maxSeqlen: 256 });
  });
  afterAll(async () => {
    engine?.dispose();
    cache?.dispose();
    await model?.dispose();
  });

  test('three sequences in one prefill step (varlen) and then batched decode = each alone', async () => {
    const prompts = [randomPrompt('b0', 5), randomPrompt('b1', 1), randomPrompt('b2', 9)];
    // Pages deliberately out of order and interleaved between sequences.
    const pages = [[7, 2], [0], [5, 11]];
    const seqs = prompts.map((p, i) => ({ tokens: p, pos0: 0, pages: pages[i] }));
    const batched = await engine.step(seqs, 'prefill', 'all');
    const V = c().vocabSize;
    // Each alone (same pages, so the cache state ends the same).
    let row = 0;
    for (let i = 0; i < 3; i++) {
      const alone = await engine.step([seqs[i]], 'prefill', 'all');
      expect([i, firstDiff(alone.logits!, batched.logits!.subarray(row * V, (row + prompts[i].length) * V))]).toEqual([i, null]);
      row += prompts[i].length;
    }
    // One decode token per sequence, batched, with 'last' logits and sampling.
    const next = [3, 4, 5];
    const dseqs = next.map((t, i) => ({ tokens: [t], pos0: prompts[i].length, pages: pages[i] }));
    const both = await engine.step(dseqs, 'decode', 'last', { temperature: 0, topK: 0, topP: 1, seeds: [0n, 0n, 0n] });
    for (let i = 0; i < 3; i++) {
      const alone = await engine.step([dseqs[i]], 'decode', 'last');
      expect([i, firstDiff(alone.logits!, both.logits!.subarray(i * V, (i + 1) * V))]).toEqual([i, null]);
      // the greedy token is the argmax of the same row (lowest id on ties)
      const l = alone.logits!;
      let best = 0;
      for (let v = 1; v < V; v++) if (l[v] > l[best]) best = v;
      expect(both.tokens![i]).toBe(best);
    }
  });

  test('multi-token decode steps (2 sequences × 3 tokens, causal among them) match the float64 reference', async () => {
    const ref = loadReference(dir);
    const V = c().vocabSize;
    const cases = [routingSafePrompt(ref, 'mtd-a', 11, 'bf16'), routingSafePrompt(ref, 'mtd-b', 8, 'bf16')];
    const pages = [[4], [12]];
    // prefill all but the last 3 tokens, then one decode step carrying 3 tokens per sequence
    const pre = await Promise.all(cases.map((x, i) => engine.step([{ tokens: x.tokens.slice(0, -3), pos0: 0, pages: pages[i] }], 'prefill', 'all')));
    const dec = await engine.step(cases.map((x, i) => ({ tokens: x.tokens.slice(-3), pos0: x.tokens.length - 3, pages: pages[i] })), 'decode', 'all');
    cases.forEach((x, i) => {
      const T = x.tokens.length;
      const all = new Float32Array(T * V);
      all.set(pre[i].logits!, 0);
      all.set(dec.logits!.subarray(i * 3 * V, (i + 1) * 3 * V), (T - 3) * V);
      expectLogitsMatch(Tensor.from(all, [T, V]), x.r, { seq: i }, `multi-token decode, sequence ${i}`);
    });
  });

  test('a prompt prefilled in chunks (maxStepTokens 5) matches one step within the reference allowance', async () => {
    const ref = loadReference(dir);
    const { tokens, r } = routingSafePrompt(ref, 'chunked', 13, 'bf16');
    const chunked = await Model.load(dir, { device: 'cpu', maxStepTokens: 5, kvCache: 'bf16' });
    try {
      expectLogitsMatch(await chunked.logits(tokens), r, { chunked: 5 }, 'chunked prefill');
    } finally {
      await chunked.dispose();
    }
  });

  test('bad steps are coded errors naming the value', async () => {
    const s = { tokens: [1, 2], pos0: 0, pages: [3] };
    const code = async (p: Promise<unknown>) => {
      try {
        await p;
        return 'resolved';
      } catch (e) {
        return e instanceof Dsv2Error ? `${e.code}: ${e.message}` : String(e);
      }
    };
    expect(await code(engine.step([{ ...s, tokens: [1, c().vocabSize] }], 'prefill', 'all'))).toMatch(/^E_RANGE: .*token 1 = \d+ is outside the vocabulary/);
    expect(await code(engine.step([{ ...s, pages: [99] }], 'prefill', 'all'))).toMatch(/^E_RANGE: blockTable\[0, 0\] = 99/);
    expect(await code(engine.step([{ ...s, tokens: [1, 2, 3, 4, 5] }], 'decode', 'all'))).toMatch(/^E_RANGE: a decode step of 5 tokens/);
    expect(await code(engine.step([s, s, s, s], 'prefill', 'all'))).toMatch(/^E_RANGE: a step of 4 sequences/);
    expect(await code(engine.step([{ ...s, tokens: Array(65).fill(1), pages: [1, 2] }], 'prefill', 'all'))).toMatch(/^E_RANGE: a step of 65 tokens/);
    expect(await code(engine.step([{ ...s, pos0: 300, pages: [1, 2, 3, 4, 5] }], 'prefill', 'all'))).toMatch(/^E_RANGE: block table width 5|^E_RANGE: seqlens/);
    expect(await code(engine.step([s], 'prefill', 'none', { temperature: -1, topK: 0, topP: 1, seeds: [0n] }))).toMatch(/^E_RANGE: temperature = -1/);
    expect(await code(engine.step([], 'prefill', 'all'))).toMatch(/^E_RANGE/);
  });

  test('memory(): weights as stored, the whole cache, and a workspace', () => {
    const m = engine.memory();
    expect(m.device).toBe('cpu');
    expect(m.cache).toBe(cache.bytes);
    expect(m.weights).toBeGreaterThan(0);
    expect(m.workspace).toBeGreaterThan(0);
  });

  test('random weights: the same seed gives the same model, another seed another', async () => {
    const cfg = model.config;
    const rope = await ops.ropeTable({ dim: cfg.rope.dim, maxPositions: 64, theta: cfg.rope.theta, yarn: cfg.rope.yarn });
    const logits = async (seed: number) => {
      const e = await NativeEngine.create(cfg, { random: seed }, cache, rope, 'cpu', { maxTokens: 8, maxSeqs: 1, maxSeqlen: 64 });
      try {
        const r = await e.step([{ tokens: [1, 2, 3], pos0: 0, pages: [9] }], 'prefill', 'all');
        const m = e.memory();
        // every weight bf16 except the rope tables (f32): the weight bytes are the parameters · 2
        return { l: r.logits!, weights: m.weights };
      } finally {
        e.dispose();
      }
    };
    const a = await logits(1);
    const b = await logits(1);
    const c2 = await logits(2);
    expect(firstDiff(a.l, b.l)).toBeNull();
    expect(firstDiff(a.l, c2.l)).not.toBeNull();
    expect(a.l.every((x) => Number.isFinite(x))).toBe(true);
    expect(a.weights).toBe(b.weights);
  });

  test('loading into the engine streams layer by layer, and an abort while loading is E_ABORTED', async () => {
    const ac = new AbortController();
    let calls = 0;
    const p = Model.load(dir, { device: 'cpu', signal: ac.signal, onProgress: () => { if (++calls === 5) ac.abort(); } });
    await expect(p).rejects.toMatchObject({ code: 'E_ABORTED' });
    const m = await Model.load(dir, { device: 'cpu' });
    try {
      expect(m.memory()!.weights).toBeGreaterThan(0);
      expect((await m.generate({ tokens: [256, 5, 6], maxNewTokens: 3 }).result).tokens.length).toBeGreaterThan(0);
    } finally {
      await m.dispose();
    }
  });

  test('a disposed engine is E_DISPOSED', async () => {
    const e2 = await NativeEngine.create(model.config, (await (async () => {
      const { loadWeights } = await import('../../lib/model/weights');
      const { Checkpoint } = await import('../../lib/model/checkpoint');
      const ck = await Checkpoint.open(dir);
      try {
        return await loadWeights(ck, {});
      } finally {
        await ck.close();
      }
    })()), cache, await ops.ropeTable({ dim: model.config.rope.dim, maxPositions: 64, theta: model.config.rope.theta, yarn: model.config.rope.yarn }), 'cpu', { maxTokens: 8, maxSeqs: 1, maxSeqlen: 64 });
    e2.dispose();
    await expect(e2.step([{ tokens: [1], pos0: 0, pages: [0] }], 'prefill', 'all')).rejects.toMatchObject({ code: 'E_DISPOSED' });
  });
});

describe('continuous batching of concurrent generations', () => {
  const dir = path.join(root, 'batching');
  beforeAll(async () => {
    await makeTiny(dir, { kind: 'v2-lite', seed: 205, dtype: 'bf16' });
  });

  test('concurrent generate() calls share decode steps and give the tokens they give alone', async () => {
    const alone = await Model.load(dir, { device: 'cpu', maxBatch: 1 });
    const batched = await Model.load(dir, { device: 'cpu', maxBatch: 4 });
    try {
      const reqs = [
        { tokens: randomPrompt('c0', 5), maxNewTokens: 12 },
        { tokens: randomPrompt('c1', 9), maxNewTokens: 7, temperature: 0.9, topK: 30, seed: 4 },
        { tokens: randomPrompt('c2', 3), maxNewTokens: 12 },
        { tokens: randomPrompt('c3', 14), maxNewTokens: 10, temperature: 0.9, topK: 30, seed: 8 },
        { tokens: randomPrompt('c4', 6), maxNewTokens: 9 },
        { tokens: randomPrompt('c5', 6), maxNewTokens: 11, temperature: 1.2, seed: 1 },
      ];
      const want = [];
      for (const r of reqs) want.push((await alone.generate(r).result).tokens);
      const got = (await Promise.all(reqs.map((r) => batched.generate(r).result))).map((x) => x.tokens);
      expect(got).toEqual(want);
      const s = batched.batchStats();
      // greedy ones batch together (up to 4), sampled ones by their parameters: fewer steps than tokens
      expect(s.tokens).toBe(got.reduce((a, t) => a + Math.max(0, t.length - 1), 0));
      expect(s.steps).toBeLessThan(s.tokens);
      expect(alone.batchStats().steps).toBe(alone.batchStats().tokens);
    } finally {
      await alone.dispose();
      await batched.dispose();
    }
  });
});
