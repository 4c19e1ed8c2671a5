/** Shared inputs and checks of the GPU suites: page-table permutations, router logits, MoE comparisons. */
import * as ops from '../../lib/ops';
import type { Tensor } from '../../lib/tensor';
import { Rng } from '../reference/rng';

/** 0..n-1 in a seeded random order (Fisher-Yates). */
export function permutation(rng: Rng, n: number): number[] {
  const a = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = rng.int(0, i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/** The routing geometries of V2 (160/8/3/6, ×16), V2-Lite (64, greedy, 6) and V3 (256/8/4/8 noaux_tc). */
export const GEOMETRIES = {
  v2: { e: 160, opts: { topK: 6, method: 'group_limited_greedy' as const, nGroup: 8, topkGroup: 3, routedScalingFactor: 16 } },
  'v2-lite': { e: 64, opts: { topK: 6, method: 'greedy' as const } },
  v3: { e: 256, opts: { topK: 8, method: 'noaux_tc' as const, scoring: 'sigmoid' as const, nGroup: 8, topkGroup: 4, normTopkProb: true, routedScalingFactor: 2.5 } },
};

export type RouteData = 'random' | 'ties' | 'nan-rows' | 'one-expert';

/**
 * Router logits [t, e]: random (N(0, 4)), many exact ties (integers 0..3), all tokens to expert
 * 5, or random with NaN rows — every `nan.every`-th row gets one NaN (`whole` false) or is all NaN.
 */
export function routerLogits(rng: Rng, t: number, e: number, data: RouteData, nan = { every: 3, whole: false }): Float32Array {
  const a = new Float32Array(t * e);
  for (let i = 0; i < t; i++) {
    for (let j = 0; j < e; j++) {
      const k = i * e + j;
      if (data === 'ties') a[k] = Math.floor(rng.uniform() * 4); // many exact ties
      else if (data === 'one-expert') a[k] = j === 5 ? 30 : rng.normal();
      else a[k] = rng.normal() * 2;
    }
    if (data === 'nan-rows' && i % nan.every === 0) {
      if (nan.whole) for (let j = 0; j < e; j++) a[i * e + j] = NaN;
      else a[i * e + (i % e)] = NaN;
    }
  }
  return a;
}

/** Every y[r, n] within rel · max_n |want[r, ·]| + abs of want (CPU) — the MoE suites' bound. */
export function expectRowsWithin(want: Float32Array, got: Float32Array, rows: number, cols: number, rel: number, abs: number): void {
  for (let r = 0; r < rows; r++) {
    let mag = 0;
    for (let n = 0; n < cols; n++) mag = Math.max(mag, Math.abs(want[r * cols + n]));
    for (let n = 0; n < cols; n++) {
      const a = want[r * cols + n];
      const b = got[r * cols + n];
      if (!(Math.abs(a - b) <= rel * mag + abs)) throw new Error(`y[${r}, ${n}]: cpu ${a} cuda ${b} (tolerance ${rel} × ${mag} + ${abs})`);
    }
  }
}

/**
 * moeExperts on CUDA (twice: bit-identical) against the CPU op. Where tensor cores run (`tc`) x is
 * rounded to bf16 once on the GPU, so the CPU op gets that same x, and h's bf16 rounding is the
 * budget: 2^-7 of the row's magnitude (see moe-experts.test.ts); otherwise f32 on both sides, 1e-4 —
 * unless `hRounded`: x stays f32 but some h is rounded to bf16 (the SIMT shared experts' down
 * GEMM on gemm's tensor cores, see moe-experts.test.ts), and 2^-7 is the budget again.
 */
export async function expectCudaMatchesCpu(x: Tensor, ids: Tensor, weights: Tensor, experts: ops.ExpertWeights,
  shared: ops.SharedExpertWeights | null, tc: boolean, hRounded = false): Promise<void> {
  const xRef = tc ? await ops.cast(await ops.cast(x, 'bf16'), 'f32') : x;
  const want = (await ops.moeExperts(xRef, ids, weights, experts, shared)).data as Float32Array;
  const got = (await ops.moeExperts(x, ids, weights, experts, shared, { device: 'cuda' })).data as Float32Array;
  const again = (await ops.moeExperts(x, ids, weights, experts, shared, { device: 'cuda' })).data as Float32Array;
  expect(Array.from(again)).toEqual(Array.from(got)); // deterministic
  const [rel, abs] = tc || hRounded ? [2 ** -7, 1e-5] : [1e-4, 1e-5];
  const [rows, cols] = x.shape;
  expectRowsWithin(want, got, rows, cols, rel, abs);
}
