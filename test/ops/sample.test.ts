/**
 * sample: token-for-token against the reference of the exact sampling definition (greedy;
 * temperature → top-k → top-p → splitmix64 draw over the kept ids in ascending order).
 * The draw is computed in double on both sides from the same f32 logits, so the only way to
 * disagree is a 1-ulp difference of exp() landing the target exactly on a boundary
 * (probability ~1e-16 per draw): the tolerance is exact equality.
 *
 * Statistical checks (with fixed seeds, so deterministic; thresholds are the χ² quantiles
 * at p = 1e-6, i.e. a correct sampler with another seed would fail once in a million):
 * frequencies over 4000 rows of identical logits match the (renormalised) softmax.
 */
import * as ops from '../../lib/ops';
import * as ref from '../reference/ops';
import { expectEqual } from '../reference/compare';
import { Rng } from '../reference/rng';
import { expectShape, f32, implOpts, table, withImpls, type ImplName } from './util';

const math = Math; // aliased: global lookups are slow under jest's vm context

/** χ² quantiles at p = 1e-6 (upper tail) by degrees of freedom. */
const CHI2_1E6: Record<number, number> = { 1: 23.928, 2: 27.631, 3: 30.665, 4: 33.377, 5: 35.888, 6: 38.258, 7: 40.522 };

interface SampleCase {
  /** null: logits are [V] and the result is 0-d */
  B: number | null;
  V: number;
  temperature?: number;
  topK?: number;
  topP?: number;
  /** number, or a decimal string for a bigint seed */
  seed?: number | string;
  kind: 'normal' | 'ties' | 'masked' | 'peaked';
}

const params: Pick<SampleCase, 'temperature' | 'topK' | 'topP'>[] = [
  {},
  { temperature: 0, topK: 5, topP: 0.5 }, // greedy ignores top-k/top-p
  { temperature: 1 },
  { temperature: 0.7, topK: 5 },
  { temperature: 1.5, topP: 0.9 },
  { temperature: 1, topK: 3, topP: 0.5 },
  { temperature: 1, topP: 1e-6 },
  { temperature: 1, topK: 1 },
  { temperature: 0.3, topK: 1000000 }, // k >= V: off
  { temperature: 1e-3 }, // non-max weights underflow to 0
];
const seeds: (number | string | undefined)[] = [undefined, 12345, '18446744073709551615', '9223372036854775808', 7];
const kinds: SampleCase['kind'][] = ['normal', 'ties', 'masked', 'peaked'];

const cases: SampleCase[] = [];
let rot = 0;
for (const B of [null, 1, 3, 17, 0]) {
  for (const V of [1, 7, 33, 1000]) {
    for (const p of params) {
      cases.push({ B, V, ...p, seed: seeds[rot % seeds.length], kind: kinds[rot % kinds.length] });
      rot++;
    }
  }
}
for (const p of params) cases.push({ B: 2, V: 102400, ...p, seed: 99, kind: 'normal' }); // V2 vocabulary

type Case = SampleCase & { impl: ImplName };

function seedOf(c: { seed?: number | string }): bigint | number | undefined {
  return typeof c.seed === 'string' ? BigInt(c.seed) : c.seed;
}

function makeLogits(c: SampleCase, rng: Rng, rows: number): Float32Array {
  const n = rows * c.V;
  const x = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    switch (c.kind) {
      case 'ties':
        x[i] = math.round(rng.uniform(-3, 3)); // 7 distinct values: many ties
        break;
      default:
        x[i] = rng.normal(0, 3);
    }
  }
  for (let r = 0; r < rows; r++) {
    if (c.kind === 'masked') {
      // about a third −inf, never the whole row
      for (let i = 0; i < c.V; i++) if (i % 3 === 1) x[r * c.V + i] = -Infinity;
    } else if (c.kind === 'peaked') {
      x[r * c.V + rng.int(0, c.V)] = 40;
    }
  }
  return x;
}

function sampleOpts(c: SampleCase & { impl?: ImplName }) {
  return {
    ...(c.impl ? implOpts(c.impl) : {}),
    ...(c.temperature === undefined ? {} : { temperature: c.temperature }),
    ...(c.topK === undefined ? {} : { topK: c.topK }),
    ...(c.topP === undefined ? {} : { topP: c.topP }),
    ...(c.seed === undefined ? {} : { seed: seedOf(c) }),
  };
}

function refOpts(c: SampleCase): ref.SampleOpts {
  return { temperature: c.temperature ?? 0, topK: c.topK ?? 0, topP: c.topP ?? 1, seed: seedOf(c) ?? 0 };
}

async function libSample(logits: Float32Array, B: number | null, V: number, opts: object, ctx: unknown): Promise<Int32Array> {
  const shape = B === null ? [V] : [B, V];
  const out = await ops.sample(f32(logits, shape), opts);
  if (out.dtype !== 'i32') throw new Error(`sample returned ${out.dtype}, expected i32`);
  expectShape(out, B === null ? [] : [B], ctx);
  return out.data as Int32Array;
}

describe('sample: token-for-token', () => {
  test.each(table(withImpls(cases)))('%s', async (_name, c: Case) => {
    const rng = new Rng(c);
    const rows = c.B ?? 1;
    const logits = makeLogits(c, rng, rows);
    const got = await libSample(logits, c.B, c.V, sampleOpts(c), c);
    const want = ref.sample(logits, rows, c.V, refOpts(c));
    expectEqual(got, want, { ctx: c, label: 'sampled ids' });
  });
});

describe('sample: distribution', () => {
  const V = 8;
  const ROWS = 4000;
  // a fixed distribution with a spread of probabilities (at T = 1: largest 0.339, smallest 0.010,
  // so every expected count is >= 40 and the χ² approximation holds)
  const base = [1.2, -0.5, 0.3, 2.0, -1.5, 0.9, 1.7, 0.0];
  const logits = new Float32Array(ROWS * V);
  for (let r = 0; r < ROWS; r++) for (let i = 0; i < V; i++) logits[r * V + i] = base[i];
  const row = Float64Array.from(Float32Array.from(base));

  function chi2(ids: Int32Array, probs: Float64Array): number {
    const counts = new Float64Array(V);
    for (const id of ids) counts[id]++;
    let x = 0;
    for (let i = 0; i < V; i++) {
      if (probs[i] === 0) continue;
      const e = probs[i] * ids.length;
      x += ((counts[i] - e) * (counts[i] - e)) / e;
    }
    return x;
  }

  /** softmax(l / T) renormalised over `kept`, 0 elsewhere. */
  function keptProbs(T: number, kept: number[]): Float64Array {
    const p = ref.probabilities(row, T);
    const out = new Float64Array(V);
    let s = 0;
    for (const i of kept) s += p[i];
    for (const i of kept) out[i] = p[i] / s;
    return out;
  }

  test.each(table([
    { temperature: 1, seed: 1, df: 7 },
    { temperature: 0.8, seed: 2, df: 7 },
    { temperature: 2.5, seed: 3, df: 7 },
    { temperature: 1, topK: 3, seed: 4, df: 2 },
    { temperature: 1, topP: 0.6, seed: 5, df: 2 }, // keeps ids 3, 6, 0 (0.339 + 0.251 < 0.6 <= + 0.152)
    { temperature: 1.3, topK: 5, topP: 0.8, seed: 6, df: 3 }, // top-5 then the 4 ids reaching 0.8 of their mass
  ]))('%s', async (_name, c) => {
    const opts = { temperature: c.temperature, topK: 'topK' in c ? c.topK : 0, topP: 'topP' in c ? c.topP : 1, seed: c.seed };
    const ids = await libSample(logits, ROWS, V, opts, c);
    // exact agreement with the reference on all 4000 rows
    expectEqual(ids, ref.sample(logits, ROWS, V, opts), { ctx: c, label: 'ids' });
    // never a filtered-out id
    const { kept } = ref.sampleCandidates(row, opts);
    for (const id of ids) if (!kept.includes(id)) throw new Error(`id ${id} outside kept set [${kept}]; case ${JSON.stringify(c)}`);
    // frequencies: χ² against the renormalised softmax over the kept set, df = |kept| − 1
    const df = kept.length - 1;
    expect(df).toBe(c.df);
    const x = chi2(ids, keptProbs(c.temperature, kept));
    const limit = CHI2_1E6[df];
    if (limit === undefined) throw new Error(`no χ² quantile for df ${df}`);
    if (!(x < limit)) throw new Error(`χ² = ${x} >= ${limit} (df ${df}, p = 1e-6); case ${JSON.stringify(c)}`);
  });

  test('top-k / top-p never return a filtered-out token (varied logits, many rows)', async () => {
    const rng = new Rng('sample filtered');
    const rows = 500;
    const Vv = 50;
    const l = rng.normalF32(rows * Vv, 2);
    for (const opts of [{ temperature: 1, topK: 4 }, { temperature: 1, topP: 0.3 }, { temperature: 2, topK: 10, topP: 0.5 }]) {
      const ids = await libSample(l, rows, Vv, { ...opts, seed: 11 }, opts);
      for (let r = 0; r < rows; r++) {
        const { kept } = ref.sampleCandidates(l.subarray(r * Vv, (r + 1) * Vv), opts);
        if (!kept.includes(ids[r])) throw new Error(`row ${r}: id ${ids[r]} not in [${kept}] (${JSON.stringify(opts)})`);
      }
    }
  });

  test('same seed: identical across calls and impls; number and bigint seeds agree', async () => {
    const opts = { temperature: 1, seed: 42 };
    const a = await libSample(logits, ROWS, V, { ...opts, impl: 'reference' }, 'a');
    const b = await libSample(logits, ROWS, V, { ...opts, impl: 'fast' }, 'b');
    const c = await libSample(logits, ROWS, V, { ...opts, impl: 'auto' }, 'c');
    const d = await libSample(logits, ROWS, V, { temperature: 1, seed: 42n }, 'd');
    const e = await libSample(logits, ROWS, V, opts, 'e');
    expectEqual(b, a, { label: 'fast vs reference' });
    expectEqual(c, a, { label: 'auto vs reference' });
    expectEqual(d, a, { label: 'bigint seed vs number seed' });
    expectEqual(e, a, { label: 'second call' });
  });

  test('different seeds differ; rows of one call differ from each other', async () => {
    const a = await libSample(logits, ROWS, V, { temperature: 1, seed: 1 }, 'a');
    const b = await libSample(logits, ROWS, V, { temperature: 1, seed: 2 }, 'b');
    // two independent draws agree with probability Σp² ≈ 0.22 here: expect ~78% of rows to
    // differ; 50% is > 25 standard deviations away
    const p = ref.probabilities(row, 1);
    const same = p.reduce((s, v) => s + v * v, 0);
    expect(same).toBeLessThan(0.3);
    let diff = 0;
    for (let r = 0; r < ROWS; r++) if (a[r] !== b[r]) diff++;
    expect(diff).toBeGreaterThan(ROWS / 2);
    // within one call rows draw differently (not all the same id)
    expect(new Set(a).size).toBeGreaterThan(4);
  });

  test('greedy: argmax with lowest id on ties; -inf entries ignored', async () => {
    const l = Float32Array.from([1, 5, 5, -Infinity, 2, /* row 2 */ -Infinity, -Infinity, -3, -3, -Infinity]);
    for (const impl of ['reference', 'fast', 'default'] as const) {
      const ids = await libSample(l, 2, 5, implOpts(impl), impl);
      expect(Array.from(ids)).toEqual([1, 2]);
    }
  });
});
