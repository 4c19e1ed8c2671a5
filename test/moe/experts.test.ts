/**
 * moeExperts against the float64 SwiGLU-experts reference (reference/moe.ts moeExperts):
 * y_t = Σ_slots w · down_e(silu(gate_e x_t) ⊙ up_e x_t) + shared(x_t), slots with id -1
 * skipped. Routing patterns: ids from the routing reference on random logits (distinct per
 * token), every token to one expert, experts that get no token, -1 slots (with large junk
 * weights), the same expert twice in one token; T = 0; weights f32, bf16, f16; with and
 * without the shared expert.
 *
 * Tolerance per element, first order in u = 2^-24 (ΔX bounds from the reference magnitudes):
 *  - gate/up dot products of H terms: |Δg_i| ≤ γ_H G_i, |Δu_i| ≤ γ_H U_i (G_i = Σ|gate_ij x_j|);
 *  - h_i = silu(g_i)·u_i: |Δh_i| ≤ 1.1·|Δg_i||u_i| + |silu(g_i)||Δu_i| (|silu'| ≤ 1.0998) plus
 *    silu's own rounding and the product, 16u|h_i| (as in the siluMul test), plus one more u
 *    for a weight folded into h before the down projection;
 *  - down projection, weighting and the sum over slots and the shared expert: any order of
 *    the k·I + Is + k + 1 products, γ_{k·I + Is + k + 2}·Σ|w·down_di·h_i|, plus the propagated
 *    Σ|w||down_di||Δh_i| = γ_H·dH (the reference's dH);
 * so bound = (γ_N + 17u)·absY + γ_H·dH·(1 + 2γ_H) + an f32 min-normal (FTZ), N = k·I + Is + k + 2.
 */
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import * as moe from '../reference/moe';
import { expectClose } from '../reference/compare';
import { Rng } from '../reference/rng';
import type { FloatDType } from '../reference/dtype';
import { F32_MIN_NORMAL, U32, caseName, expectRejects, f32Data, floatTensor, implOpts, table, withImpls, type ImplName } from '../ops/util';
import { gamma } from '../mla/util';

const math = Math; // aliased: global lookups are slow under jest's vm context

type Pattern = 'route' | 'oneExpert' | 'someIdle' | 'minus1' | 'duplicate';

interface ExpCase {
  T: number;
  H: number;
  I: number;
  E: number;
  k: number;
  wdtype: FloatDType;
  /** shared expert intermediate size; 0: none */
  Is: number;
  pattern: Pattern;
}

const cases: ExpCase[] = [];
{
  let rot = 0;
  const dts: FloatDType[] = ['f32', 'bf16', 'f16'];
  const patterns: Pattern[] = ['route', 'oneExpert', 'someIdle', 'minus1', 'duplicate'];
  for (const T of [0, 1, 7, 64]) {
    for (const [H, I] of [[16, 8], [64, 32], [96, 40]]) {
      for (const [E, k] of [[4, 1], [16, 6], [8, 2]]) {
        cases.push({ T, H, I, E, k, wdtype: dts[rot % 3], Is: [0, 24, 64][rot % 3], pattern: patterns[rot % 5] });
        rot++;
      }
    }
  }
  // a larger layer: V2-like ratios (I = H/4 ... ), bf16 weights, 6 of 8 experts, shared 2·I
  cases.push({ T: 33, H: 1024, I: 256, E: 8, k: 6, wdtype: 'bf16', Is: 512, pattern: 'route' });
  cases.push({ T: 5, H: 512, I: 128, E: 4, k: 2, wdtype: 'f16', Is: 0, pattern: 'oneExpert' });
}

interface Prepared {
  x: Float32Array;
  ids: Int32Array;
  w: Float32Array;
  gateUp: { t: Tensor; exact: Float64Array };
  down: { t: Tensor; exact: Float64Array };
  shared: { gateUp: { t: Tensor; exact: Float64Array }; down: { t: Tensor; exact: Float64Array } } | null;
  want: Float64Array;
  bound: Float64Array;
}
const prepared = new Map<string, Prepared>();

function makeIds(c: ExpCase, rng: Rng): { ids: Int32Array; w: Float32Array } {
  const { T, E, k } = c;
  const ids = new Int32Array(T * k);
  const w = new Float32Array(T * k);
  if (c.pattern === 'route') {
    // the real thing: greedy softmax routing of random logits, normalised
    const logits = rng.normalF32(T * E, 2);
    const r = moe.moeRoute(logits, T, E, { topK: k, method: 'greedy', normTopkProb: true });
    ids.set(r.ids);
    w.set(r.weights);
    return { ids, w };
  }
  for (let t = 0; t < T; t++) {
    // distinct experts per token, from the allowed pool
    const pool = c.pattern === 'someIdle' ? [0, 2].filter((e) => e < E) : Array.from({ length: E }, (_, e) => e);
    for (let s = 0; s < k; s++) {
      let e: number;
      if (c.pattern === 'oneExpert') e = s === 0 ? E - 1 : -1; // every token to the last expert, other slots empty
      else if (c.pattern === 'duplicate') e = s < 2 ? 1 : rng.int(0, E); // expert 1 twice
      else if (c.pattern === 'someIdle') e = s < pool.length ? pool[(s + t) % pool.length] : -1;
      else e = rng.next() < 0.3 ? -1 : rng.int(0, E); // minus1
      ids[t * k + s] = e;
      w[t * k + s] = e === -1 ? 9.5 : rng.uniform(0.05, 1); // junk weight on -1 slots: must be ignored
    }
  }
  return { ids, w };
}

function prepare(c: ExpCase): Prepared {
  const key = caseName(c);
  const have = prepared.get(key);
  if (have) return have;
  const rng = new Rng(c);
  const { T, H, I, E, k, Is } = c;
  const x = rng.normalF32(T * H);
  const { ids, w } = makeIds(c, rng);
  // weights ~ N(0, 1/sqrt(fan_in)) so activations stay O(1)
  const gateUp = floatTensor(rng.normalF32(E * 2 * I * H, 1 / math.sqrt(H)), [E, 2 * I, H], c.wdtype);
  const down = floatTensor(rng.normalF32(E * H * I, 1 / math.sqrt(I)), [E, H, I], c.wdtype);
  const shared = Is > 0
    ? { gateUp: floatTensor(rng.normalF32(2 * Is * H, 1 / math.sqrt(H)), [2 * Is, H], c.wdtype), down: floatTensor(rng.normalF32(H * Is, 1 / math.sqrt(Is)), [H, Is], c.wdtype) }
    : null;
  const r = moe.moeExperts(x, T, H, ids, w, k, { gateUp: gateUp.exact, down: down.exact, E, I },
    shared ? { gateUp: shared.gateUp.exact, down: shared.down.exact, I: Is } : null);
  const gN = gamma(k * I + Is + k + 2);
  const gH = gamma(H);
  const bound = new Float64Array(T * H);
  for (let i = 0; i < T * H; i++) bound[i] = (gN + 17 * U32) * r.absY[i] + gH * r.dH[i] * (1 + 2 * gH);
  const p = { x, ids, w, gateUp, down, shared, want: r.y, bound };
  prepared.set(key, p);
  return p;
}

describe('moeExperts vs the SwiGLU-experts reference', () => {
  test.each(table(withImpls(cases)))('%s', async (_name, cc: ExpCase & { impl: ImplName }) => {
    const { impl, ...c } = cc;
    const p = prepare(c);
    const y = await ops.moeExperts(
      new Tensor('f32', [c.T, c.H], p.x),
      new Tensor('i32', [c.T, c.k], p.ids),
      new Tensor('f32', [c.T, c.k], p.w),
      { gateUp: p.gateUp.t, down: p.down.t },
      p.shared ? { gateUp: p.shared.gateUp.t, down: p.shared.down.t } : null,
      implOpts(impl),
    );
    expectClose(f32Data(y, [c.T, c.H], cc), p.want, { abs: F32_MIN_NORMAL, bound: p.bound, ctx: cc, label: 'moeExperts y' });
  });

  test('layout: gateUp rows 0..I-1 are gate_proj, I..2I-1 up_proj; down is [H, I]', async () => {
    // E = 1, H = 2, I = 1: gate row [1, 0], up row [0, 1]; down [[2], [3]]; x = [1, 4]
    // h = silu(1) · 4; y = [2h, 3h]
    const y = await ops.moeExperts(
      new Tensor('f32', [1, 2], Float32Array.from([1, 4])),
      new Tensor('i32', [1, 1], Int32Array.from([0])),
      new Tensor('f32', [1, 1], Float32Array.from([1])),
      { gateUp: new Tensor('f32', [1, 2, 2], Float32Array.from([1, 0, 0, 1])), down: new Tensor('f32', [1, 2, 1], Float32Array.from([2, 3])) },
    );
    const h = (1 / (1 + Math.exp(-1))) * 4;
    const got = y.data as Float32Array;
    expect(got[0]).toBeCloseTo(2 * h, 5);
    expect(got[1]).toBeCloseTo(3 * h, 5);
  });
});

describe('moeExperts bad inputs', () => {
  const T = 2;
  const H = 4;
  const I = 3;
  const E = 2;
  const x = () => new Tensor('f32', [T, H], new Float32Array(T * H));
  const ids = (v: number[] = [0, 1, 1, 0], shape = [T, 2]) => new Tensor('i32', shape, Int32Array.from(v));
  const w = (shape = [T, 2]) => new Tensor('f32', shape, new Float32Array(shape[0] * shape[1]));
  const z = (shape: number[]) => new Tensor('f32', shape, new Float32Array(shape.reduce((a, b) => a * b, 1)));
  const ex = () => ({ gateUp: z([E, 2 * I, H]), down: z([E, H, I]) });
  type O = { impl?: 'reference' | 'fast' };
  const bad: { name: string; code: string; perImpl?: boolean; call: (o: O) => Promise<unknown> }[] = [
    { name: 'id == E', code: 'E_RANGE', perImpl: true, call: (o) => ops.moeExperts(x(), ids([0, 1, 2, 0]), w(), ex(), null, o) },
    { name: 'id -2', code: 'E_RANGE', perImpl: true, call: (o) => ops.moeExperts(x(), ids([0, -2, 1, 0]), w(), ex(), null, o) },
    { name: 'weights shape != ids shape', code: 'E_SHAPE', call: (o) => ops.moeExperts(x(), ids(), w([T, 3]), ex(), null, o) },
    { name: 'ids rows != T', code: 'E_SHAPE', call: (o) => ops.moeExperts(x(), ids([0, 1], [1, 2]), w([1, 2]), ex(), null, o) },
    { name: 'gateUp H mismatch', code: 'E_SHAPE', call: (o) => ops.moeExperts(x(), ids(), w(), { gateUp: z([E, 2 * I, H + 1]), down: z([E, H, I]) }, null, o) },
    { name: 'gateUp rows odd', code: 'E_SHAPE', call: (o) => ops.moeExperts(x(), ids(), w(), { gateUp: z([E, 2 * I + 1, H]), down: z([E, H, I]) }, null, o) },
    { name: 'down [E, H, I+1]', code: 'E_SHAPE', call: (o) => ops.moeExperts(x(), ids(), w(), { gateUp: z([E, 2 * I, H]), down: z([E, H, I + 1]) }, null, o) },
    { name: 'down experts != gateUp experts', code: 'E_SHAPE', call: (o) => ops.moeExperts(x(), ids(), w(), { gateUp: z([E, 2 * I, H]), down: z([E + 1, H, I]) }, null, o) },
    { name: 'shared down [H, Is+1]', code: 'E_SHAPE', call: (o) => ops.moeExperts(x(), ids(), w(), ex(), { gateUp: z([4, H]), down: z([H, 3]) }, o) },
    { name: 'ids f32', code: 'E_DTYPE', call: (o) => ops.moeExperts(x(), z([T, 2]), w(), ex(), null, o) },
    { name: 'x bf16', code: 'E_DTYPE', call: (o) => ops.moeExperts(new Tensor('bf16', [T, H], new Uint16Array(T * H)), ids(), w(), ex(), null, o) },
  ];
  const rows: [string, (typeof bad)[number] & { impl: ImplName }][] = [];
  for (const b of bad) for (const impl of b.perImpl ? (['reference', 'fast', 'default'] as ImplName[]) : (['default'] as ImplName[])) rows.push([`${b.code} ${b.name} [impl ${impl}]`, { ...b, impl }]);
  test.each(rows)('%s', async (_n, b) => {
    await expectRejects(() => b.call(implOpts(b.impl)), b.code, [], { name: b.name, impl: b.impl });
  });
});
