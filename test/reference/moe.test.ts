/**
 * Self-tests of the MoE references: hand-routed tokens for each top-k method (including the
 * cases where the group limit changes the answer), ties, NaN, the scaling-factor rules of the
 * V2 and V3 code, validation, and a hand-computed SwiGLU expert.
 */
import * as moe from './moe';
import { RefError } from './ops';

const ln = Math.log;

describe('moeRoute', () => {
  test('greedy softmax: top-2 of E = 4, descending, weights = softmax probabilities × factor', () => {
    // logits ln [1, 4, 2, 3] -> softmax [0.1, 0.4, 0.2, 0.3]
    const r = moe.moeRoute([ln(1), ln(4), ln(2), ln(3)], 1, 4, { topK: 2, method: 'greedy', routedScalingFactor: 2 });
    expect(Array.from(r.ids)).toEqual([1, 3]);
    expect(r.weights[0]).toBeCloseTo(0.8, 14);
    expect(r.weights[1]).toBeCloseTo(0.6, 14);
    expect(Array.from(r.tokensPerExpert)).toEqual([0, 1, 0, 1]);
    expect(Array.from(r.tokensPerGroup)).toEqual([2]);
  });

  test('group_limited_greedy: the group limit excludes a better expert of a masked group', () => {
    // E = 8, 4 groups of 2. choices (softmax of logits ∝ these weights):
    // group 0: [9, 1], group 1: [8, 7], group 2: [2, 2], group 3: [3, 0.5]
    const w = [9, 1, 8, 7, 2, 2, 3, 0.5];
    const logits = w.map(ln);
    const r = moe.moeRoute(logits, 1, 8, { topK: 3, method: 'group_limited_greedy', nGroup: 4, topkGroup: 2 });
    // groups by max: g0 (9), g1 (8) kept; experts 0, 2, 3 (not 6 of group 3 with 3 > 1)
    expect(Array.from(r.ids)).toEqual([0, 2, 3]);
    expect(Array.from(r.groupKept)).toEqual([1, 1, 0, 0]);
    expect(Array.from(r.tokensPerGroup)).toEqual([1, 2, 0, 0]);
    // greedy would take 0, 2, 3 too; with topK 4 it differs: greedy picks 6 (3), limited picks 1
    const g = moe.moeRoute(logits, 1, 8, { topK: 4, method: 'greedy' });
    const l = moe.moeRoute(logits, 1, 8, { topK: 4, method: 'group_limited_greedy', nGroup: 4, topkGroup: 2 });
    expect(Array.from(g.ids)).toEqual([0, 2, 3, 6]);
    expect(Array.from(l.ids)).toEqual([0, 2, 3, 1]);
  });

  test('noaux_tc: group score is the sum of the top-2 choices; bias steers choice but not weight', () => {
    // sigmoid scoring; logits 0 -> 0.5 everywhere; bias makes the choice
    // groups of 4: g0 bias [1, 0, 0, 0] (top2 sum 2.0), g1 [0.6, 0.6, 0, 0] (2.2), g2 0 (1.0), g3 [0.9,0,0,0] (1.9)
    const E = 16;
    const bias = new Array(E).fill(0);
    bias[0] = 1;
    bias[4] = 0.6;
    bias[5] = 0.6;
    bias[12] = 0.9;
    const r = moe.moeRoute(new Array(E).fill(0), 1, E, {
      topK: 3, method: 'noaux_tc', scoring: 'sigmoid', nGroup: 4, topkGroup: 2, bias, normTopkProb: true, routedScalingFactor: 2.5,
    });
    // kept groups g1 (2.2), g0 (2.0) — by max alone g0 (1.5) would beat g1 (1.1); g3 (1.9) is out
    expect(Array.from(r.groupKept)).toEqual([1, 1, 0, 0]);
    expect(Array.from(r.ids)).toEqual([0, 4, 5]);
    // weights: sigmoid(0) = 0.5 each, normalised to 1/3, times 2.5
    for (let s = 0; s < 3; s++) expect(r.weights[s]).toBeCloseTo(2.5 / 3, 14);
  });

  test('ties: lower expert index first, lower group index first', () => {
    const r = moe.moeRoute(new Array(8).fill(0), 1, 8, { topK: 3, method: 'group_limited_greedy', nGroup: 4, topkGroup: 2 });
    expect(Array.from(r.ids)).toEqual([0, 1, 2]);
    const s = moe.moeRoute([0, 1, 1, 0, 1, 0], 1, 6, { topK: 4, method: 'greedy' });
    expect(Array.from(s.ids)).toEqual([1, 2, 4, 0]);
  });

  test('NaN: a NaN logit makes the softmax row NaN (all slots -1); sigmoid skips only that expert', () => {
    const a = moe.moeRoute([0, NaN, 1, 2], 1, 4, { topK: 2, method: 'greedy' });
    expect(Array.from(a.ids)).toEqual([-1, -1]);
    expect(Array.from(a.weights)).toEqual([0, 0]);
    expect(Array.from(a.tokensPerExpert)).toEqual([0, 0, 0, 0]);
    const b = moe.moeRoute([0, NaN, 1, 2], 1, 4, { topK: 3, method: 'greedy', scoring: 'sigmoid' });
    expect(Array.from(b.ids)).toEqual([3, 2, 0]);
    const c = moe.moeRoute([NaN, NaN, NaN, 2], 1, 4, { topK: 2, method: 'greedy', scoring: 'sigmoid', normTopkProb: true });
    expect(Array.from(c.ids)).toEqual([3, -1]);
    expect(c.weights[0]).toBeCloseTo(1, 14); // normalised over the one valid slot
    expect(c.weights[1]).toBe(0);
    expect(Array.from(c.tokensPerGroup)).toEqual([1]);
  });

  test('scaling factor: V2 methods scale only without normalisation; noaux_tc always', () => {
    const logits = [0, 1, 2, 3];
    const f = 16;
    const g1 = moe.moeRoute(logits, 1, 4, { topK: 2, method: 'greedy', normTopkProb: false, routedScalingFactor: f });
    const g2 = moe.moeRoute(logits, 1, 4, { topK: 2, method: 'greedy', normTopkProb: true, routedScalingFactor: f });
    const p3 = Math.exp(3) / (1 + Math.exp(1) + Math.exp(2) + Math.exp(3));
    const p2 = Math.exp(2) / (1 + Math.exp(1) + Math.exp(2) + Math.exp(3));
    expect(g1.weights[0]).toBeCloseTo(f * p3, 12);
    expect(g2.weights[0]).toBeCloseTo(p3 / (p3 + p2), 12);
    // topK = 1 never normalises, so V2 scales
    const g3 = moe.moeRoute(logits, 1, 4, { topK: 1, method: 'greedy', normTopkProb: true, routedScalingFactor: f });
    expect(g3.weights[0]).toBeCloseTo(f * p3, 12);
    const n = moe.moeRoute(logits, 1, 4, {
      topK: 2, method: 'noaux_tc', scoring: 'sigmoid', nGroup: 2, topkGroup: 2, bias: [0, 0, 0, 0], normTopkProb: true, routedScalingFactor: 2.5,
    });
    const s3 = 1 / (1 + Math.exp(-3));
    const s2 = 1 / (1 + Math.exp(-2));
    expect(n.weights[0]).toBeCloseTo((2.5 * s3) / (s3 + s2), 12);
  });

  test('validation codes', () => {
    const code = (f: () => unknown) => {
      try {
        f();
      } catch (e) {
        return (e as RefError).code;
      }
      return 'none';
    };
    const l = new Array(8).fill(0);
    expect(code(() => moe.moeRoute(l, 1, 8, { topK: 0, method: 'greedy' }))).toBe('E_RANGE');
    expect(code(() => moe.moeRoute(l, 1, 8, { topK: 9, method: 'greedy' }))).toBe('E_RANGE');
    expect(code(() => moe.moeRoute(l, 1, 8, { topK: 2, method: 'group_limited_greedy', nGroup: 3 }))).toBe('E_RANGE');
    expect(code(() => moe.moeRoute(l, 1, 8, { topK: 2, method: 'group_limited_greedy', nGroup: 2, topkGroup: 3 }))).toBe('E_RANGE');
    expect(code(() => moe.moeRoute(l, 1, 8, { topK: 5, method: 'group_limited_greedy', nGroup: 4, topkGroup: 2 }))).toBe('E_RANGE');
    expect(code(() => moe.moeRoute(l, 1, 8, { topK: 2, method: 'noaux_tc', nGroup: 2, topkGroup: 1 }))).toBe('E_RANGE');
    expect(code(() => moe.moeRoute(l, 1, 8, { topK: 2, method: 'noaux_tc', nGroup: 8, topkGroup: 2, bias: l }))).toBe('E_RANGE');
    expect(code(() => moe.moeRoute(l, 1, 8, { topK: 2, method: 'noaux_tc', nGroup: 2, topkGroup: 1, bias: [0, 0] }))).toBe('E_SHAPE');
    expect(code(() => moe.moeRoute(l, 1, 8, { topK: 4, method: 'group_limited_greedy', nGroup: 4, topkGroup: 2 }))).toBe('none');
  });
});

describe('moeExperts', () => {
  test('hand-computed SwiGLU expert, weighted, plus the shared expert, -1 skipped', () => {
    // H = 1, I = 1, E = 2: expert e: gate g_e, up u_e, down d_e
    const gateUp = [1, 2, /* e1 */ -1, 3];
    const down = [0.5, /* e1 */ 2];
    const x = [2];
    const silu = (g: number) => g / (1 + Math.exp(-g));
    const r = moe.moeExperts(x, 1, 1, [1, -1, 0], [0.25, 9, 0.75], 3, { gateUp, down, E: 2, I: 1 }, { gateUp: [1, 1], down: [1], I: 1 });
    const e0 = 0.5 * silu(2) * 4;
    const e1 = 2 * silu(-2) * 6;
    const sh = silu(2) * 2;
    expect(r.y[0]).toBeCloseTo(0.25 * e1 + 0.75 * e0 + sh, 14);
    expect(r.absY[0]).toBeCloseTo(0.25 * Math.abs(e1) + 0.75 * Math.abs(e0) + Math.abs(sh), 14);
  });

  test('an id outside [0, E) is E_RANGE', () => {
    expect(() => moe.moeExperts([1], 1, 1, [2], [1], 1, { gateUp: [1, 1, 1, 1], down: [1, 1], E: 2, I: 1 }, null)).toThrow(RefError);
  });
});
