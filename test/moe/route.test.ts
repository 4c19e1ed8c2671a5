/**
 * moeRoute against the float64 routing reference (reference/moe.ts), for the published
 * geometries — DeepSeek-V2 (160 experts, 8 groups, top-3 groups, top-6, softmax, factor 16,
 * group_limited_greedy), V2-Lite (64 experts, greedy top-6), V3 (256 experts, 8 groups, top-4
 * groups, top-8, sigmoid, noaux_tc with e_score_correction_bias, normalised, factor 2.5) — and
 * small ones; T ∈ {0, 1, 7, 64, 513}; Gaussian logits, forced ties, NaN / ±inf entries and rows.
 *
 * Ids: EXACT, order included. The spec fixes the order (descending choice, ties -> lower
 * expert index; group ties -> lower group index), so exactly tied values are compared
 * exactly. What fp32 rounding can legitimately flip are NEAR ties of distinct values
 * (including sums that are equal in exact arithmetic but differ by an ulp in double, e.g.
 * noaux_tc's top-2 sums): rows whose decisive comparisons (consecutive selected experts,
 * every selected expert vs every unselected candidate, every kept group vs every dropped
 * group) are closer than the fp32 error of the compared values are redrawn (DECISION_GAP
 * below) — never compared loosely.
 * Every selected id must lie in a kept group (never a masked group).
 *
 * Weights, relative per element: the score's own fp32 error ε_s — softmax (8A + E + 20)u as
 * in the softmax test (A = max |logit| of the row), sigmoid 16u (exp 8u damped by
 * e^-x/(1+e^-x) ≤ 1, the add and the division: as silu) — then normalisation (a sum of k
 * values γ_k, the division u: 2ε_s + (k + 2)u) and the scaling factor (u); abs: an f32
 * min-normal. Counts: exact; they sum to T·topK minus the unfilled (-1) slots.
 */
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import * as moe from '../reference/moe';
import { expectClose, expectEqual } from '../reference/compare';
import { Rng } from '../reference/rng';
import { F32_MIN_NORMAL, U32, caseName, expectRejects, implOpts, table, withImpls, type ImplName } from '../ops/util';
import { expectRejectsOneOf } from '../mla/util';

const math = Math; // aliased: global lookups are slow under jest's vm context
const { abs } = Math;

interface Geometry {
  name: string;
  E: number;
  topK: number;
  method: moe.TopkMethod;
  scoring: moe.Scoring;
  nGroup?: number;
  topkGroup?: number;
  normTopkProb: boolean;
  routedScalingFactor: number;
}

const V2: Geometry = { name: 'V2', E: 160, nGroup: 8, topkGroup: 3, topK: 6, method: 'group_limited_greedy', scoring: 'softmax', normTopkProb: false, routedScalingFactor: 16 };
const V2_LITE: Geometry = { name: 'V2-Lite', E: 64, topK: 6, method: 'greedy', scoring: 'softmax', normTopkProb: false, routedScalingFactor: 1 };
const V3: Geometry = { name: 'V3', E: 256, nGroup: 8, topkGroup: 4, topK: 8, method: 'noaux_tc', scoring: 'sigmoid', normTopkProb: true, routedScalingFactor: 2.5 };
const EXTRA: Geometry[] = [
  // V2 methods with normalisation: no scaling factor applied
  { name: 'glg-norm', E: 32, nGroup: 4, topkGroup: 2, topK: 4, method: 'group_limited_greedy', scoring: 'softmax', normTopkProb: true, routedScalingFactor: 16 },
  // topK = 1 never normalises: greedy then scales
  { name: 'greedy-top1-sigmoid', E: 16, topK: 1, method: 'greedy', scoring: 'sigmoid', normTopkProb: true, routedScalingFactor: 2 },
  // noaux_tc without normalisation, still scaled
  { name: 'noaux-nonorm', E: 64, nGroup: 4, topkGroup: 2, topK: 6, method: 'noaux_tc', scoring: 'sigmoid', normTopkProb: false, routedScalingFactor: 1.5 },
  // topK = all experts of the kept groups
  { name: 'glg-all-kept', E: 8, nGroup: 4, topkGroup: 2, topK: 4, method: 'group_limited_greedy', scoring: 'sigmoid', normTopkProb: true, routedScalingFactor: 1 },
  // noaux_tc with softmax scoring and 2 experts per group (the minimum)
  { name: 'noaux-softmax-gs2', E: 16, nGroup: 8, topkGroup: 3, topK: 5, method: 'noaux_tc', scoring: 'softmax', normTopkProb: true, routedScalingFactor: 1 },
  // greedy over several groups (counts per group)
  { name: 'greedy-grouped', E: 24, nGroup: 3, topkGroup: 3, topK: 7, method: 'greedy', scoring: 'softmax', normTopkProb: true, routedScalingFactor: 1 },
];

type DataKind = 'normal' | 'ties' | 'zeros' | 'nan';

interface RouteCase {
  geom: string;
  T: number;
  data: DataKind;
}

const GEOMS: Record<string, Geometry> = Object.fromEntries([V2, V2_LITE, V3, ...EXTRA].map((g) => [g.name, g]));

const cases: RouteCase[] = [];
for (const g of [V2, V2_LITE, V3]) {
  for (const T of [0, 1, 7, 64, 513]) cases.push({ geom: g.name, T, data: 'normal' });
  cases.push({ geom: g.name, T: 64, data: 'ties' });
  cases.push({ geom: g.name, T: 7, data: 'zeros' });
  cases.push({ geom: g.name, T: 64, data: 'nan' });
}
for (const g of EXTRA) {
  cases.push({ geom: g.name, T: 64, data: 'normal' });
  cases.push({ geom: g.name, T: 33, data: 'ties' });
  cases.push({ geom: g.name, T: 33, data: 'nan' });
}

/** Relative fp32 error allowance of one score (see the header). */
function scoreRel(g: Geometry, row: ArrayLike<number>): number {
  if (g.scoring === 'sigmoid') return 16 * U32;
  let A = 0;
  for (let e = 0; e < row.length; e++) if (abs(row[e]) !== Infinity && abs(row[e]) > A) A = abs(row[e]);
  return (8 * A + g.E + 20) * U32;
}

/**
 * The smallest relative gap of a row's decisive comparisons among DISTINCT values (exact
 * ties are decided by index and compared exactly). Infinity when nothing is decisive.
 */
function decisionGap(g: Geometry, r: moe.RouteOut, t: number): number {
  const E = g.E;
  const K = g.topK;
  const nG = g.nGroup ?? 1;
  const gs = E / nG;
  const ch = r.choice.subarray(t * E, (t + 1) * E);
  const sc = r.scores.subarray(t * E, (t + 1) * E);
  let gap = Infinity;
  // the bias adds a term that scores do not have: measure gaps against |score| + |choice|
  const rel = (a: number, b: number, magA: number, magB: number) => {
    if (a === b || a !== a || b !== b) return Infinity;
    return abs(a - b) / (math.max(magA, magB) || 1);
  };
  const mag = (e: number) => abs(sc[e]) + abs(ch[e]);
  const ids = Array.from(r.ids.subarray(t * K, (t + 1) * K)).filter((e) => e >= 0);
  for (let s = 0; s + 1 < ids.length; s++) gap = math.min(gap, rel(ch[ids[s]], ch[ids[s + 1]], mag(ids[s]), mag(ids[s + 1])));
  // every selected expert vs every selectable candidate left out (in a kept group)
  const chosen = new Set(ids);
  for (const a of ids) {
    for (let e = 0; e < E; e++) {
      if (chosen.has(e) || ch[e] !== ch[e]) continue;
      if (g.method !== 'greedy' && !r.groupKept[t * nG + ((e / gs) | 0)]) continue;
      gap = math.min(gap, rel(ch[a], ch[e], mag(a), mag(e)));
    }
  }
  if (g.method !== 'greedy') {
    const gsc = r.groupScores.subarray(t * nG, (t + 1) * nG);
    // group magnitude: the (up to two) members' |score| + |choice| summed
    const gmag = (gi: number) => {
      let m = 0;
      for (let e = gi * gs; e < (gi + 1) * gs; e++) m = math.max(m, mag(e));
      return 2 * m;
    };
    // every kept group vs every dropped group
    for (let a = 0; a < nG; a++) {
      if (!r.groupKept[t * nG + a] || gsc[a] === -Infinity) continue;
      for (let d = 0; d < nG; d++) {
        if (r.groupKept[t * nG + d]) continue;
        gap = math.min(gap, rel(gsc[a], gsc[d], gmag(a), gmag(d)));
      }
    }
  }
  return gap;
}

/**
 * Smallest relative gap a decisive comparison may have: one choice's fp32 error is at most
 * (8A + 20)u + u (softmax, the shared 1/Z only rescales; A ≤ 10 for these N(0, 2) logits) or
 * 16u + u (sigmoid + bias), ≤ 101u relative to |score| + |choice|; two compared values
 * ≤ 202u; a noaux_tc group sum adds one rounding per member. 1024u leaves a 5x margin.
 */
const DECISION_GAP = 1024 * U32;

function drawRow(g: Geometry, c: RouteCase, rng: Rng, t: number, out: Float32Array): void {
  const E = g.E;
  const row = out.subarray(t * E, (t + 1) * E);
  if (c.data === 'zeros') {
    row.fill(0);
    return;
  }
  if (c.data === 'ties') {
    // few distinct values: many exact ties, decided by index
    for (let e = 0; e < E; e++) row[e] = [-1, 0, 0.5, 2][rng.int(0, 4)];
    return;
  }
  for (let e = 0; e < E; e++) row[e] = rng.normal(0, 2);
  if (c.data === 'nan') {
    const gs = E / (g.nGroup ?? 1);
    const kind = t % 4;
    if (g.scoring === 'softmax') {
      if (kind === 0) row[rng.int(0, E)] = NaN; // a NaN makes the softmax row NaN: all slots -1
      else if (kind === 1) row.fill(-Infinity); // all -inf: NaN row too
      else if (kind === 2) for (let e = 0; e < E; e++) if (rng.next() < 0.9) row[e] = -Infinity; // few finite: -inf scores 0, still selectable
    } else {
      // sigmoid: NaN experts are skipped individually; at most gs - 2 per group so that every
      // group keeps a top-2 (noaux_tc's group score is then unambiguous); ±inf -> 1 / 0
      if (kind === 0) {
        for (let gi = 0; gi < E / gs; gi++) for (let j = 0; j < gs - 2; j++) if (rng.next() < 0.5) row[gi * gs + j] = NaN;
      } else if (kind === 1) row[rng.int(0, E)] = Infinity;
      else if (kind === 2) row[rng.int(0, E)] = -Infinity;
    }
  }
}

interface Prepared {
  logits: Float32Array;
  bias: Float32Array | null;
  ref: moe.RouteOut;
}
const prepared = new Map<string, Prepared>();

function prepare(c: RouteCase): Prepared {
  const key = caseName(c);
  const have = prepared.get(key);
  if (have) return have;
  const g = GEOMS[c.geom];
  const rng = new Rng(c);
  const E = g.E;
  let bias: Float32Array | null = null;
  if (g.method === 'noaux_tc') {
    bias = new Float32Array(E);
    for (let e = 0; e < E; e++) bias[e] = c.data === 'ties' || c.data === 'zeros' ? [0, 0.25][rng.int(0, 2)] : rng.normal(0, 0.1);
  }
  const logits = new Float32Array(c.T * E);
  const opts = { ...g, bias };
  // draw, then redraw rows whose decisive comparisons are near-ties (see the header)
  for (let t = 0; t < c.T; t++) {
    for (let attempt = 0; ; attempt++) {
      drawRow(g, c, rng, t, logits);
      const one = moe.moeRoute(logits.subarray(t * E, (t + 1) * E), 1, E, opts);
      if (decisionGap(g, one, 0) > DECISION_GAP) break;
      if (attempt > 200) throw new Error(`cannot draw a row without near-ties; case ${caseName(c)}`);
    }
  }
  const ref = moe.moeRoute(logits, c.T, E, opts);
  const p = { logits, bias, ref };
  prepared.set(key, p);
  return p;
}

describe('moeRoute vs the routing reference', () => {
  test.each(table(withImpls(cases)))('%s', async (_name, cc: RouteCase & { impl: ImplName }) => {
    const { impl, ...c } = cc;
    const g = GEOMS[c.geom];
    const p = prepare(c);
    const E = g.E;
    const K = g.topK;
    const nG = g.nGroup ?? 1;
    const r = await ops.moeRoute(new Tensor('f32', [c.T, E], p.logits), {
      topK: K, method: g.method, scoring: g.scoring, normTopkProb: g.normTopkProb, routedScalingFactor: g.routedScalingFactor,
      ...(g.nGroup ? { nGroup: g.nGroup, topkGroup: g.topkGroup } : {}),
      ...(p.bias ? { bias: new Tensor('f32', [E], p.bias) } : {}),
      ...implOpts(impl),
    });
    expect([r.ids.dtype, r.weights.dtype, r.tokensPerExpert.dtype, r.tokensPerGroup.dtype]).toEqual(['i32', 'f32', 'i32', 'i32']);
    expect(r.ids.shape).toEqual([c.T, K]);
    expect(r.weights.shape).toEqual([c.T, K]);
    expect(r.tokensPerExpert.shape).toEqual([E]);
    expect(r.tokensPerGroup.shape).toEqual([nG]);
    const ids = r.ids.data as Int32Array;
    expectEqual(ids, p.ref.ids, { ctx: cc, label: 'ids' });
    // never a masked group (redundant with exact ids, but stated on its own)
    if (g.method !== 'greedy') {
      for (let t = 0; t < c.T; t++) {
        for (let s = 0; s < K; s++) {
          const e = ids[t * K + s];
          if (e >= 0 && !p.ref.groupKept[t * nG + ((e / (E / nG)) | 0)]) throw new Error(`token ${t} slot ${s}: expert ${e} of a masked group; case ${caseName(cc)}`);
        }
      }
    }
    // weights
    const bound = new Float64Array(c.T * K);
    const norm = g.normTopkProb && K > 1;
    for (let t = 0; t < c.T; t++) {
      const es = scoreRel(g, p.logits.subarray(t * E, (t + 1) * E));
      const rel = (norm ? 2 * es + (K + 2) * U32 : es) + U32;
      for (let s = 0; s < K; s++) bound[t * K + s] = rel * abs(p.ref.weights[t * K + s]);
    }
    expectClose(r.weights.data as Float32Array, p.ref.weights, { abs: F32_MIN_NORMAL, bound, ctx: cc, label: 'weights' });
    // counts
    expectEqual(r.tokensPerExpert.data as Int32Array, p.ref.tokensPerExpert, { ctx: cc, label: 'tokensPerExpert' });
    expectEqual(r.tokensPerGroup.data as Int32Array, p.ref.tokensPerGroup, { ctx: cc, label: 'tokensPerGroup' });
    let filled = 0;
    for (let i = 0; i < ids.length; i++) if (ids[i] >= 0) filled++;
    const sum = (a: Int32Array) => a.reduce((x, y) => x + y, 0);
    expect(sum(r.tokensPerExpert.data as Int32Array)).toBe(filled);
    expect(sum(r.tokensPerGroup.data as Int32Array)).toBe(filled);
    if (c.data === 'normal' || c.data === 'ties' || c.data === 'zeros') expect(filled).toBe(c.T * K);
  });
});

describe('moeRoute hand checks', () => {
  test('V2: all-zero logits -> groups 0..2 kept, experts 0..5, weight 16/160 each', async () => {
    const r = await ops.moeRoute(new Tensor('f32', [1, 160], new Float32Array(160)), { topK: 6, method: 'group_limited_greedy', nGroup: 8, topkGroup: 3, routedScalingFactor: 16 });
    expect(Array.from(r.ids.data as Int32Array)).toEqual([0, 1, 2, 3, 4, 5]);
    for (const w of r.weights.data as Float32Array) expect(w).toBeCloseTo(0.1, 6);
    expect(Array.from(r.tokensPerGroup.data as Int32Array)).toEqual([6, 0, 0, 0, 0, 0, 0, 0]);
  });

  test('group limit beats a better expert of a masked group', async () => {
    // E = 8, 4 groups of 2; softmax weights ∝ [9, 1, 8, 7, 2, 2, 3, 0.5]: groups 0 and 1 kept,
    // the 4th expert is 1 (weight 1) rather than 6 (weight 3) of group 3
    const logits = Float32Array.from([9, 1, 8, 7, 2, 2, 3, 0.5].map(Math.log));
    const r = await ops.moeRoute(new Tensor('f32', [1, 8], logits), { topK: 4, method: 'group_limited_greedy', nGroup: 4, topkGroup: 2 });
    expect(Array.from(r.ids.data as Int32Array)).toEqual([0, 2, 3, 1]);
  });

  test('noaux_tc: groups by top-2 sum, weights from unbiased scores', async () => {
    const E = 16;
    const bias = new Float32Array(E);
    bias[0] = 1;
    bias[4] = 0.625;
    bias[5] = 0.625;
    bias[12] = 0.875;
    const r = await ops.moeRoute(new Tensor('f32', [1, E], new Float32Array(E)), {
      topK: 3, method: 'noaux_tc', scoring: 'sigmoid', nGroup: 4, topkGroup: 2, bias: new Tensor('f32', [E], bias), normTopkProb: true, routedScalingFactor: 2.5,
    });
    expect(Array.from(r.ids.data as Int32Array)).toEqual([0, 4, 5]);
    for (const w of r.weights.data as Float32Array) expect(w).toBeCloseTo(2.5 / 3, 6);
  });
});

describe('moeRoute bad inputs', () => {
  const logits = (T = 2, E = 8) => new Tensor('f32', [T, E], new Float32Array(T * E));
  const bias = (E = 8) => new Tensor('f32', [E], new Float32Array(E));
  type O = { impl?: 'reference' | 'fast' };
  const bad: { name: string; codes: string[]; call: (o: O) => Promise<unknown> }[] = [
    { name: 'topK 0', codes: ['E_RANGE'], call: (o) => ops.moeRoute(logits(), { topK: 0, method: 'greedy', ...o }) },
    { name: 'topK > E (greedy)', codes: ['E_RANGE'], call: (o) => ops.moeRoute(logits(), { topK: 9, method: 'greedy', ...o }) },
    { name: 'topK > topkGroup · E / nGroup', codes: ['E_RANGE'], call: (o) => ops.moeRoute(logits(), { topK: 5, method: 'group_limited_greedy', nGroup: 4, topkGroup: 2, ...o }) },
    { name: 'E % nGroup != 0', codes: ['E_RANGE', 'E_SHAPE'], call: (o) => ops.moeRoute(logits(), { topK: 2, method: 'group_limited_greedy', nGroup: 3, topkGroup: 1, ...o }) },
    { name: 'topkGroup > nGroup', codes: ['E_RANGE'], call: (o) => ops.moeRoute(logits(), { topK: 2, method: 'group_limited_greedy', nGroup: 2, topkGroup: 3, ...o }) },
    // a missing argument: E_ARG by lib/errors.ts's definitions (E_RANGE / E_SHAPE also accepted)
    { name: 'noaux_tc without bias', codes: ['E_ARG', 'E_RANGE', 'E_SHAPE'], call: (o) => ops.moeRoute(logits(), { topK: 2, method: 'noaux_tc', nGroup: 2, topkGroup: 1, scoring: 'sigmoid', ...o }) },
    { name: 'noaux_tc with 1 expert per group', codes: ['E_RANGE', 'E_SHAPE'], call: (o) => ops.moeRoute(logits(), { topK: 2, method: 'noaux_tc', nGroup: 8, topkGroup: 2, bias: bias(), ...o }) },
    { name: 'bias of the wrong length', codes: ['E_SHAPE'], call: (o) => ops.moeRoute(logits(), { topK: 2, method: 'noaux_tc', nGroup: 2, topkGroup: 1, bias: bias(7), ...o }) },
    { name: 'logits rank 1', codes: ['E_SHAPE'], call: (o) => ops.moeRoute(new Tensor('f32', [8], new Float32Array(8)), { topK: 2, method: 'greedy', ...o }) },
    { name: 'logits bf16', codes: ['E_DTYPE'], call: (o) => ops.moeRoute(new Tensor('bf16', [1, 8], new Uint16Array(8)), { topK: 2, method: 'greedy', ...o }) },
    { name: 'method bogus', codes: ['E_ARG', 'E_RANGE'], call: (o) => ops.moeRoute(logits(), { topK: 2, method: 'top2' as 'greedy', ...o }) },
  ];
  const rows: [string, (typeof bad)[number] & { impl: ImplName }][] = [];
  for (const b of bad) for (const impl of ['reference', 'fast', 'default'] as ImplName[]) rows.push([`${b.codes.join('|')} ${b.name} [impl ${impl}]`, { ...b, impl }]);
  test.each(rows)('%s', async (_n, b) => {
    const o = implOpts(b.impl);
    if (b.codes.length === 1) await expectRejects(() => b.call(o), b.codes[0], [], { name: b.name, impl: b.impl });
    else await expectRejectsOneOf(() => b.call(o), b.codes, { name: b.name, impl: b.impl });
  });
});
