/**
 * rmsNorm: y = x / sqrt(mean(x²) + eps) * weight (DeepseekV2RMSNorm), against float64.
 *
 * Tolerance, relative per element: y_i = w_i · x_i · s with one row scale s, so every error
 * is relative. The sum of D squares (non-negative terms) in fp32 is within γ_D of the exact
 * sum in any order (squares' rounding included); /D, +eps (eps > 0), sqrt and the reciprocal
 * add ≤ 3u, the square root halves what came before; × x and × w add 2u. Total
 * ≤ (D/2 + 5)·u; we allow (D/2 + 8)·u, the extra 3u for an rsqrt refined by a Newton step.
 * Plus an absolute f32 min-normal for outputs in the subnormal range (FTZ is allowed).
 * bf16/f16 weights are exact in f32; the reference uses the decoded values.
 */
import * as ops from '../../lib/ops';
import * as ref from '../reference/ops';
import { expectClose } from '../reference/compare';
import { Rng } from '../reference/rng';
import type { FloatDType } from '../reference/dtype';
import { F32_MIN_NORMAL, U32, f32, f32Data, floatTensor, implOpts, table, withImpls, type ImplName } from './util';

interface NormCase {
  lead: number[];
  D: number;
  wdtype: FloatDType;
  /** undefined: use the default (1e-6) */
  eps?: number;
  /** std of x; 1e-3 makes mean(x²) ~ 1e-6, comparable to the default eps */
  xstd: number;
}

const cases: NormCase[] = [];
let rot = 0;
for (const lead of [[1], [3], [0], [17], [], [2, 3]]) {
  for (const D of [1, 3, 7, 17, 33, 127, 4096, 5120, 4099]) {
    if (D >= 4096 && lead.length > 0 && lead[0] > 3) continue; // keep the suite fast
    const wdtype = (['f32', 'bf16', 'f16'] as const)[rot % 3];
    const eps = [undefined, 1e-6, 1e-5, 0.1][rot % 4];
    const xstd = [1, 1e-3, 30][rot % 3];
    rot++;
    cases.push({ lead, D, wdtype, eps, xstd });
  }
}
for (const wdtype of ['f32', 'bf16', 'f16'] as const) {
  cases.push({ lead: [4], D: 5120, wdtype, eps: 1e-6, xstd: 1 }); // V2 hidden size
  cases.push({ lead: [2], D: 512, wdtype, eps: 1e-6, xstd: 1 }); // V2 kv_lora_rank
  cases.push({ lead: [2], D: 1536, wdtype, xstd: 1e-3 }); // V2 q_lora_rank, default eps matters
}

type Case = NormCase & { impl: ImplName };

async function runCase(c: Case): Promise<void> {
  const rng = new Rng(c);
  const rows = c.lead.reduce((a, b) => a * b, 1);
  const x = rng.normalF32(rows * c.D, c.xstd);
  const W = floatTensor(rng.normalF32(c.D, 0.5, 1), [c.D], c.wdtype);
  const opts = { ...implOpts(c.impl), ...(c.eps === undefined ? {} : { eps: c.eps }) };
  const y = await ops.rmsNorm(f32(x, [...c.lead, c.D]), W.t, opts);
  const got = f32Data(y, [...c.lead, c.D], c);
  const want = ref.rmsNorm(x, c.D, W.exact, c.eps ?? 1e-6);
  expectClose(got, want, { rel: (c.D / 2 + 8) * U32, abs: F32_MIN_NORMAL, ctx: c, label: 'rmsNorm y' });
}

describe('rmsNorm', () => {
  test.each(table(withImpls(cases)))('%s', async (_name, c) => {
    await runCase(c);
  });

  test('default eps is 1e-6 (distinguishable: mean(x²) = 1e-6)', async () => {
    // x = ±1e-3: mean square 1e-6; with eps 1e-6, y = x / sqrt(2e-6) = ±0.7071; eps 1e-5 would give 0.3015
    const x = f32([1e-3, -1e-3, 1e-3, -1e-3], [1, 4]);
    const w = f32([1, 1, 1, 1], [4]);
    const y = f32Data(await ops.rmsNorm(x, w), [1, 4]);
    const want = ref.rmsNorm(Float32Array.from([1e-3, -1e-3, 1e-3, -1e-3]), 4, [1, 1, 1, 1], 1e-6);
    expectClose(y, want, { rel: (4 / 2 + 8) * U32, label: 'default eps' });
  });

  test('zero rows give zeros (0 / sqrt(eps))', async () => {
    for (const impl of ['reference', 'fast'] as const) {
      const y = f32Data(await ops.rmsNorm(f32(new Float32Array(2 * 33), [2, 33]), f32(new Float32Array(33).fill(3), [33]), { impl }), [2, 33]);
      expect(Array.from(y).every((v) => v === 0)).toBe(true);
    }
  });

  test('large magnitudes do not overflow the mean square in a correct fp32 sum (|x| ~ 1e18)', async () => {
    // x² ~ 1e36 < f32 max 3.4e38, sum of 64 ~ 6.4e37 still finite
    const rng = new Rng('rmsnorm large');
    const x = rng.normalF32(64, 1e18);
    for (const impl of ['reference', 'fast'] as const) {
      const y = f32Data(await ops.rmsNorm(f32(x, [1, 64]), f32(new Float32Array(64).fill(1), [64]), { impl }), [1, 64]);
      expectClose(y, ref.rmsNorm(x, 64, new Float32Array(64).fill(1), 1e-6), { rel: (64 / 2 + 8) * U32, ctx: { impl }, label: 'rmsNorm large' });
    }
  });
});
