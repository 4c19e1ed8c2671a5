/**
 * End-to-end correctness of the forward pass: Model.logits (prefill and decode through the
 * paged latent cache) and greedy generation against the float64 reference of
 * test/reference/forward.ts, for every tiny kind (V2: q_lora + group-limited routing; V2-Lite:
 * plain q_proj + greedy routing; V3: sigmoid noaux_tc with bias) with bf16 and f32 weights,
 * and the f32 / bf16 / fp8 caches. Then: sharded = single file bit for bit, and sampling
 * reproducible per seed.
 *
 * Tolerances (see forward.ts): per element, SAFETY (8) × the row's max deviation of an f32
 * shadow run of the same maths from float64 (+ 4 ulp of the row's largest logit), plus the
 * effect of every cache rounding whose input lies within the estimated error of a rounding
 * midpoint. Routing near-ties are reported, never absorbed.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Model, makeTiny, type Tensor } from '../../lib';
import type { TinyKind } from '../../lib/model/tiny';
import { checkClose, checkEqual } from '../reference/compare';
import { loadReference, referenceLogits, SAFETY, top2, type CacheKind, type RefLogits, type RefModel } from '../reference/forward';
import { EOS, expectLogitsMatch, note, randomPrompt, referenceGreedy, rmDir, routingSafePrompt, tmpDir } from './util';

const math = Math;

const KINDS: readonly TinyKind[] = ['v2', 'v2-lite', 'v3'];
const WEIGHTS = ['bf16', 'f32'] as const;
const CACHES: readonly CacheKind[] = ['f32', 'bf16', 'fp8'];
const SEED: Record<TinyKind, number> = { v2: 101, 'v2-lite': 102, v3: 103 };
/** Prompt length of the main comparisons. */
const T = 12;
/** Long enough that decode crosses from the first 64-token cache page into the second. */
const T_LONG = 70;
/** Greedy steps compared with the reference. */
const STEPS = 8;

const root = tmpDir('forward');
afterAll(() => rmDir(root));

const f32 = (t: Tensor): Float32Array => t.data as Float32Array;

const cases = KINDS.flatMap((kind) => WEIGHTS.map((weights) => [`${kind} ${weights} weights`, kind, weights] as const));

describe.each(cases)('%s', (_name, kind, weights) => {
  const dir = path.join(root, `${kind}-${weights}`);
  let ref: RefModel;
  const models = {} as Record<CacheKind, Model>;
  let prompt: number[];
  const refs = {} as Record<CacheKind, RefLogits>;
  const ctx = (o: object) => ({ kind, weights, ...o });

  beforeAll(async () => {
    await makeTiny(dir, { kind, seed: SEED[kind], dtype: weights });
    ref = loadReference(dir);
    for (const kv of CACHES) models[kv] = await Model.load(dir, { kvCache: kv, device: 'cpu' });
    const safe = routingSafePrompt(ref, kind, T, 'f32');
    prompt = safe.tokens;
    refs.f32 = safe.r;
    refs.bf16 = referenceLogits(ref, prompt, { cache: 'bf16' });
    refs.fp8 = referenceLogits(ref, prompt, { cache: 'fp8' });
  });
  afterAll(async () => {
    for (const m of Object.values(models)) await m.dispose();
  });

  test('the checkpoint holds the weight dtype asked for (what the reference decodes)', () => {
    const st = weights === 'bf16' ? 'BF16' : 'F32';
    for (const [name, t] of ref.tensors) {
      // the router bias is kept in f32 in both layouts
      expect([name, t.dtype]).toEqual([name, name.endsWith('e_score_correction_bias') ? 'F32' : st]);
    }
  });

  test.each(CACHES)('%s cache: prefill and decode logits match the reference', async (kv) => {
    for (const mode of ['prefill', 'decode'] as const) {
      const l = await models[kv].logits(prompt, { mode });
      expectLogitsMatch(l, refs[kv], ctx({ cache: kv, mode, prompt }), `logits ${kv} ${mode}`);
    }
  });

  test(`f32 cache, ${T_LONG} tokens: decode crosses a 64-token cache page and matches the reference`, async () => {
    const tokens = randomPrompt({ kind, long: 1 }, T_LONG);
    const r = referenceLogits(ref, tokens, { cache: 'f32' });
    for (const mode of ['prefill', 'decode'] as const) {
      expectLogitsMatch(await models.f32.logits(tokens, { mode }), r, ctx({ cache: 'f32', mode, T: T_LONG }), `logits f32 ${mode} long`);
    }
  });

  test('prefill and decode agree with each other (each cache dtype)', async () => {
    for (const kv of CACHES) {
      const p = f32(await models[kv].logits(prompt, { mode: 'prefill' }));
      const d = f32(await models[kv].logits(prompt, { mode: 'decode' }));
      // each is within tol of the reference, so they are within 2·tol of each other
      const bound = refs[kv].tol.map((x) => 2 * x);
      const msg = checkClose(d, p, { bound, ctx: ctx({ cache: kv }), label: 'decode vs prefill' });
      if (msg) throw new Error(msg);
    }
  });

  test('the cache dtype matters as modelled: bf16 and fp8 logits differ from f32-cache ones', () => {
    // Guards the tight bf16/fp8 comparisons: if rounding the latent changed nothing beyond the
    // allowance, they could not tell a library that ignores the cache dtype from one that doesn't.
    for (const kv of ['bf16', 'fp8'] as const) {
      let worst = 0;
      for (let i = 0; i < refs.f32.logits.length; i++) {
        worst = math.max(worst, math.abs(refs[kv].logits[i] - refs.f32.logits[i]) / (refs[kv].tol[i] + refs.f32.tol[i]));
      }
      expect(worst).toBeGreaterThan(4);
    }
  });

  test('fp8 cache: logits stay within the e4m3 bound of the f32-cache logits', async () => {
    // The bound is the e4m3 model's own effect (reference fp8 − reference f32: 3 mantissa bits,
    // one amax/448 scale per 128-element tile of c_kv, k_pe in bf16) plus both allowances.
    const a = f32(await models.fp8.logits(prompt, { mode: 'decode' }));
    const b = f32(await models.f32.logits(prompt, { mode: 'decode' }));
    let moved = 0;
    let rel = 0;
    for (let i = 0; i < a.length; i++) {
      const d = math.abs(a[i] - b[i]);
      const allowed = math.abs(refs.fp8.logits[i] - refs.f32.logits[i]) + refs.fp8.tol[i] + refs.f32.tol[i];
      if (!(d <= allowed)) {
        throw new Error(`fp8 vs f32 cache logit [${i}]: |${a[i]} − ${b[i]}| = ${d} > ${allowed} (e4m3 model + allowances); case ${JSON.stringify(ctx({ prompt }))}`);
      }
      moved = math.max(moved, d);
      rel = math.max(rel, d / math.max(1e-30, math.abs(b[i])));
    }
    note(`fp8 vs f32 cache ${kind} ${weights}: max |Δlogit| ${moved.toExponential(2)}`);
    expect(moved).toBeGreaterThan(0);
  });

  test.each(['f32', 'bf16'] as const)('greedy generation (temperature 0) = the reference argmax continuation, %s cache', async (kv) => {
    // A prompt whose reference continuation is decisive: every step's top-1/top-2 gap exceeds
    // both logits' allowances, so any correct f32 implementation must pick the same tokens.
    let chosen: { prompt: number[]; tokens: number[]; eos: boolean } | null = null;
    for (let s = 0; s < 30 && !chosen; s++) {
      const p = randomPrompt({ kind, greedy: s }, 6);
      const g = referenceGreedy(ref, p, STEPS, kv);
      if (g.minGap < 1e-3) continue;
      const r = referenceLogits(ref, [...p, ...g.tokens], { cache: kv });
      if (r.nearTies.length) continue;
      let decisive = true;
      for (let i = 0; i <= g.tokens.length && i < STEPS; i++) {
        const t = p.length - 1 + i;
        const { best, second, gap } = top2(r.logits, t * r.V, r.V);
        if (!(gap > r.tol[t * r.V + best] + r.tol[t * r.V + second])) decisive = false;
      }
      if (decisive) chosen = { prompt: p, tokens: g.tokens, eos: g.eos };
    }
    if (!chosen) throw new Error(`no decisive greedy prompt for ${kind} ${weights} ${kv} in 30 tries`);
    const res = await models[kv].generate({ tokens: chosen.prompt, maxNewTokens: STEPS, temperature: 0 }).result;
    const msg = checkEqual(res.tokens, chosen.tokens, { ctx: ctx({ cache: kv, prompt: chosen.prompt }), label: 'greedy tokens' });
    if (msg) throw new Error(msg);
    expect(res.finishReason).toBe(chosen.eos ? 'eos' : 'length');
    expect(res.promptTokens).toBe(chosen.prompt.length);
    if (!chosen.eos) expect(chosen.tokens).not.toContain(EOS);
  });
});

describe('sharded checkpoints (shards: 3 + index) = one file, bit for bit', () => {
  // Sharding is kind-independent; V2 (the most tensors per layer besides V3) with the
  // single-file checkpoint of the comparisons above (same kind, seed and dtype).
  test('v2', async () => {
    const one = path.join(root, 'v2-bf16');
    const three = path.join(root, 'v2-bf16-3-shards');
    await makeTiny(three, { kind: 'v2', seed: SEED.v2, shards: 3 });
    const files = fs.readdirSync(three).filter((f) => f.endsWith('.safetensors')).sort();
    expect(files).toEqual(['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors']);
    expect(fs.existsSync(path.join(three, 'model.safetensors.index.json'))).toBe(true);
    expect(fs.existsSync(path.join(three, 'model.safetensors'))).toBe(false);
    // the reference reads the same tensors from both layouts
    const r1 = loadReference(one);
    const r3 = loadReference(three);
    expect([...r3.tensors.keys()].sort()).toEqual([...r1.tensors.keys()].sort());
    for (const [k, v] of r1.tensors) expect(checkEqual(r3.tensors.get(k)!.values, v.values, { label: k })).toBeNull();
    const a = await Model.load(one, { device: 'cpu' });
    const b = await Model.load(three, { device: 'cpu' });
    try {
      const tokens = randomPrompt({ sharded: 1 }, 10);
      for (const mode of ['prefill', 'decode'] as const) {
        const la = f32(await a.logits(tokens, { mode }));
        const lb = f32(await b.logits(tokens, { mode }));
        // bit for bit: same weights, same computation
        expect(checkEqual(new Uint32Array(lb.buffer, lb.byteOffset, lb.length), new Uint32Array(la.buffer, la.byteOffset, la.length),
          { label: `${mode} logits bits`, hex: true })).toBeNull();
      }
      const ga = await a.generate({ tokens, maxNewTokens: 6 }).result;
      const gb = await b.generate({ tokens, maxNewTokens: 6 }).result;
      expect(gb).toEqual(ga);
    } finally {
      await a.dispose();
      await b.dispose();
    }
  });
});

describe('sampling', () => {
  let m: Model;
  const tokens = randomPrompt('sampling', 8);
  beforeAll(async () => {
    m = await Model.load(path.join(root, 'v2-bf16'), { device: 'cpu' });
  });
  afterAll(async () => m.dispose());

  const gen = async (o: { seed?: number | bigint; temperature?: number; topK?: number; topP?: number }) =>
    (await m.generate({ tokens, maxNewTokens: 16, ...o }).result).tokens;

  test('the same seed reproduces the same tokens; different seeds differ', async () => {
    const a = await gen({ seed: 42, temperature: 1 });
    const b = await gen({ seed: 42, temperature: 1 });
    expect(b).toEqual(a);
    expect(await gen({ seed: 42n, temperature: 1 })).toEqual(a); // a bigint seed is the same seed
    const others = [await gen({ seed: 43, temperature: 1 }), await gen({ seed: 44, temperature: 1 })];
    // 16 draws at temperature 1 from ~320 tokens: equal sequences for two seeds are not plausible
    for (const o of others) expect(o).not.toEqual(a);
    expect(others[1]).not.toEqual(others[0]);
    // with top-k / top-p as well
    const c = await gen({ seed: 9, temperature: 0.8, topK: 20, topP: 0.9 });
    expect(await gen({ seed: 9, temperature: 0.8, topK: 20, topP: 0.9 })).toEqual(c);
  });

  test('degenerate samplers are greedy: topK 1, and temperature 0 whatever the seed', async () => {
    const greedy = await gen({ temperature: 0 });
    expect(await gen({ temperature: 1, topK: 1, seed: 3 })).toEqual(greedy);
    expect(await gen({ temperature: 0, seed: 12345 })).toEqual(greedy);
  });

  test('stop strings: generation ends where the text first contains one, which is cut from the text', async () => {
    const tok = m.tokenizer!;
    const full = await m.generate({ tokens, maxNewTokens: 16, temperature: 0 }).result;
    // a stop string: the text of a later token that decodes cleanly on its own
    const k = full.tokens.findIndex((t, i) => i >= 3 && /^[\x20-\x7e]+$/.test(tok.decode([t])));
    if (k < 0) throw new Error(`fixture: no printable token in ${JSON.stringify(full.tokens)}`);
    const stop = tok.decode([full.tokens[k]]);
    let n = 1;
    while (!tok.decode(full.tokens.slice(0, n)).includes(stop)) n++;
    const prefix = tok.decode(full.tokens.slice(0, n));
    const r = await m.generate({ tokens, maxNewTokens: 16, temperature: 0, stop: ['never-in-this-text-\u0001', stop] }).result;
    expect(r.finishReason).toBe('stop');
    expect(r.tokens).toEqual(full.tokens.slice(0, n));
    expect(r.text).toBe(prefix.slice(0, prefix.indexOf(stop)));
  });

  test('streamed chunks are the result tokens, and their text concatenates to the result text', async () => {
    const g = m.generate({ tokens, maxNewTokens: 12, temperature: 0.7, seed: 1 });
    const chunks: { token: number | null; text: string }[] = [];
    for await (const c of g) chunks.push(c);
    const again = await m.generate({ tokens, maxNewTokens: 12, temperature: 0.7, seed: 1 }).result;
    // a null token only on a final text-only flush chunk
    expect(chunks.slice(0, -1).every((c) => c.token !== null)).toBe(true);
    expect(chunks.filter((c) => c.token !== null).map((c) => c.token)).toEqual(again.tokens);
    expect(chunks.map((c) => c.text).join('')).toBe(again.text);
  });
});

describe('stop strings while streaming', () => {
  test('no chunk carries text that the stop string later cuts off', async () => {
    const dir = require('node:path').join(require('node:os').tmpdir(), `dsv2-stop-${process.pid}`);
    const { makeTiny: mk, Model: M } = require('../../lib') as typeof import('../../lib');
    await mk(dir, { kind: 'v2-lite', seed: 3 });
    const model = await M.load(dir, { kvCache: 'f32' });
    try {
      const full = await model.generate({ tokens: [256, 104, 105], maxNewTokens: 16 }).result;
      // A stop string made of the text of generated tokens 3..5: its first part is emitted
      // (held back) before the string completes.
      const ids = full.tokens;
      const before = model.tokenizer!.decode(ids.slice(0, 3));
      const stop = model.tokenizer!.decode(ids.slice(0, 6)).slice(before.length);
      if (stop.length < 2 || before.includes(stop)) return; // degenerate random text: nothing to check
      const g = model.generate({ tokens: [256, 104, 105], maxNewTokens: 16, stop: [stop] });
      let streamed = '';
      for await (const c of g) streamed += c.text;
      const r = await model.generate({ tokens: [256, 104, 105], maxNewTokens: 16, stop: [stop] }).result;
      expect(r.finishReason).toBe('stop');
      expect(streamed).toBe(r.text);
      expect(r.text.includes(stop)).toBe(false);
    } finally {
      await model.dispose();
      require('node:fs').rmSync(dir, { recursive: true, force: true });
    }
  });
});
