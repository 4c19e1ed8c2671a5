/**
 * gemm: y = x · Wᵀ with fp32 accumulation, against the float64 reference.
 *
 * Two kinds of data:
 *  - 'normal': Gaussian x and W. Tolerance per element is the classic dot-product bound
 *    |fl(Σ x_k w_k) − Σ x_k w_k| ≤ γ_K Σ|x_k w_k|, γ_K = K·u/(1 − K·u), u = 2^-24 (Higham,
 *    Accuracy and Stability of Numerical Algorithms, §3.1). It holds for any summation order
 *    (blocked, pairwise, split-K, FMA), so it is the loosest thing a correct fp32-accumulating
 *    kernel can produce; the reference's own double error (≤ K·2^-53 Σ|x w|) is negligible.
 *  - 'grid': x on a 2^-8 grid with 9 significant bits (not representable in bf16) and small
 *    integer W, sized so every partial sum is an integer multiple of 2^-8 below 2^16 —
 *    representable exactly in f32 — so every summation order gives the exact result:
 *    tolerance 0. This catches precision loss (x rounded to bf16/f16, a low-precision
 *    accumulator) that the worst-case bound is too loose to see at large K.
 * bf16/f16 weights are exact in f32, so the reference takes the decoded (rounded) values.
 */
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import * as ref from '../reference/ops';
import { expectClose } from '../reference/compare';
import { Rng } from '../reference/rng';
import type { FloatDType } from '../reference/dtype';
import { F32_MIN_NORMAL, U32, f32, f32Data, floatTensor, implOpts, table, withImpls, type ImplName } from './util';

interface GemmCase {
  /** leading dims of x: x is [...lead, K]; [] means rank 1 */
  lead: number[];
  N: number;
  K: number;
  wdtype: FloatDType;
  data: 'normal' | 'grid';
}

const cases: GemmCase[] = [];
const dtypes: FloatDType[] = ['f32', 'bf16', 'f16'];
// small and odd sizes, every (M, N, K) with f32 weights, a rotating dtype for the others
let rot = 0;
for (const M of [0, 1, 3, 17]) {
  for (const N of [1, 7, 33]) {
    for (const K of [1, 3, 17, 33, 127]) {
      cases.push({ lead: [M], N, K, wdtype: 'f32', data: 'normal' });
      cases.push({ lead: [M], N, K, wdtype: dtypes[1 + (rot++ % 2)], data: 'normal' });
    }
  }
}
// other ranks of x
for (const wdtype of dtypes) {
  cases.push({ lead: [], N: 5, K: 9, wdtype, data: 'normal' });
  cases.push({ lead: [2, 3], N: 7, K: 33, wdtype, data: 'normal' });
  cases.push({ lead: [2, 0], N: 7, K: 33, wdtype, data: 'normal' });
  cases.push({ lead: [1, 2, 2], N: 3, K: 17, wdtype, data: 'normal' });
}
// large K (4096+, with odd tails) and wider N
for (const wdtype of dtypes) {
  cases.push({ lead: [1], N: 7, K: 4096, wdtype, data: 'normal' });
  cases.push({ lead: [3], N: 33, K: 4099, wdtype, data: 'normal' });
  cases.push({ lead: [17], N: 16, K: 5120, wdtype, data: 'normal' });
  cases.push({ lead: [5], N: 129, K: 4100, wdtype, data: 'normal' });
  cases.push({ lead: [2], N: 3, K: 8192, wdtype, data: 'grid' });
  cases.push({ lead: [7], N: 9, K: 4097, wdtype, data: 'grid' });
  cases.push({ lead: [17], N: 33, K: 127, wdtype, data: 'grid' });
  cases.push({ lead: [1], N: 1, K: 1, wdtype, data: 'grid' });
  cases.push({ lead: [3], N: 65, K: 31, wdtype, data: 'grid' });
}

// decode-time shapes (M = 1, 2: the GEMV path) with wide N
for (const wdtype of dtypes) {
  cases.push({ lead: [1], N: 2049, K: 512, wdtype, data: 'normal' });
  cases.push({ lead: [2], N: 1536, K: 129, wdtype, data: 'normal' });
  cases.push({ lead: [1], N: 4099, K: 64, wdtype, data: 'grid' });
}

type Case = GemmCase & { impl: ImplName };

function makeData(c: GemmCase, rng: Rng, M: number) {
  const { N, K } = c;
  if (c.data === 'normal') {
    const x = rng.normalF32(M * K);
    const w = rng.normalF32(N * K, 0.05);
    return { x, w };
  }
  // grid: x = k/256 with |k| <= 511 (|x| < 2, 9 significant bits), w integer in [-4, 4].
  // |x w| < 8, so every partial sum is a multiple of 2^-8 of magnitude < 8K <= 2^16:
  // at most 24 significant bits, exact in f32 whatever the order.
  if (K * 8 * 256 > 2 ** 24) throw new Error('grid case too large to be exact');
  const x = new Float32Array(M * K);
  for (let i = 0; i < x.length; i++) x[i] = rng.int(-511, 512) / 256;
  const w = new Float32Array(N * K);
  for (let i = 0; i < w.length; i++) w[i] = rng.int(-4, 5);
  return { x, w };
}

async function runCase(c: Case): Promise<void> {
  const rng = new Rng(c);
  const M = c.lead.reduce((a, b) => a * b, 1);
  const { x, w } = makeData(c, rng, M);
  const W = floatTensor(w, [c.N, c.K], c.wdtype);
  const y = await ops.gemm(f32(x, [...c.lead, c.K]), W.t, implOpts(c.impl));
  const got = f32Data(y, [...c.lead, c.N], c);
  const want = ref.gemm(x, M, c.K, W.exact, c.N);
  if (c.data === 'grid') {
    // exact: all partial sums representable (see makeData)
    expectClose(got, want.y, { abs: 0, ctx: c, label: 'gemm y (exact grid)' });
  } else {
    // γ_K Σ|x w| (any summation order), + one f32 min-normal for underflowed products
    const gamma = (c.K * U32) / (1 - c.K * U32);
    const bound = want.absDot.map((a) => gamma * a);
    expectClose(got, want.y, { abs: F32_MIN_NORMAL, bound, ctx: c, label: 'gemm y' });
  }
}

describe('gemm', () => {
  test.each(table(withImpls(cases)))('%s', async (_name, c) => {
    await runCase(c);
  });

  test('weight layout is [N, K] (y = x Wᵀ, not x W) on a non-square case', async () => {
    // x [1, 2] = [1, 10]; W [3, 2] rows (1,0), (0,1), (1,1): y = [1, 10, 11]
    const y = await ops.gemm(f32([1, 10], [1, 2]), f32([1, 0, 0, 1, 1, 1], [3, 2]));
    expect(Array.from(f32Data(y, [1, 3]))).toEqual([1, 10, 11]);
  });

  test.each(table(withImpls([{ wdtype: 'f32' as const }, { wdtype: 'bf16' as const }, { wdtype: 'f16' as const }])))(
    'inputs that are views at odd element offsets into larger buffers (%s)',
    async (_name, c) => {
      // x starts 1 float into its buffer, the weight 1 element (2 or 4 bytes) into its own:
      // the native side must honour byteOffset and cope with unaligned SIMD loads
      const rng = new Rng(c);
      const M = 3;
      const N = 17;
      const K = 67;
      const xs = rng.normalF32(M * K + 3);
      const x = new Float32Array(xs.buffer, 4, M * K);
      const Wfull = floatTensor(rng.normalF32(N * K + 2, 0.05), [N * K + 2], c.wdtype);
      const wdata = Wfull.t.data as Float32Array | Uint16Array;
      const wview = c.wdtype === 'f32' ? new Float32Array(wdata.buffer, 4, N * K) : new Uint16Array(wdata.buffer, 2, N * K);
      const y = await ops.gemm(f32(x, [M, K]), new Tensor(c.wdtype, [N, K], wview), implOpts(c.impl));
      const want = ref.gemm(x, M, K, Wfull.exact.subarray(1, 1 + N * K), N);
      const gamma = (K * U32) / (1 - K * U32);
      expectClose(f32Data(y, [M, N], c), want.y, { abs: F32_MIN_NORMAL, bound: want.absDot.map((a) => gamma * a), ctx: c, label: 'gemm on views' });
    },
  );

  test.each(table(withImpls([{ wdtype: 'f32' as const }, { wdtype: 'bf16' as const }])))('NaN in x makes its output row NaN (%s)', async (_name, c) => {
    const rng = new Rng(c);
    const M = 4;
    const N = 19;
    const K = 40;
    const x = rng.normalF32(M * K);
    x[1 * K + 7] = NaN; // row 1
    const W = floatTensor(rng.normalF32(N * K), [N, K], c.wdtype);
    const y = f32Data(await ops.gemm(f32(x, [M, K]), W.t, implOpts(c.impl)), [M, N], c);
    const want = ref.gemm(x, M, K, W.exact, N);
    const gamma = (K * U32) / (1 - K * U32);
    expectClose(y, want.y, { abs: F32_MIN_NORMAL, bound: want.absDot.map((a) => gamma * a), ctx: c, label: 'gemm NaN row' });
  });

  test('inputs are not modified', async () => {
    const rng = new Rng('gemm inputs untouched');
    const x = rng.normalF32(3 * 17);
    const w = rng.normalF32(5 * 17);
    const x0 = x.slice();
    const w0 = w.slice();
    await ops.gemm(f32(x, [3, 17]), f32(w, [5, 17]), { impl: 'fast' });
    await ops.gemm(f32(x, [3, 17]), f32(w, [5, 17]), { impl: 'reference' });
    expect(x).toEqual(x0);
    expect(w).toEqual(w0);
  });
});
