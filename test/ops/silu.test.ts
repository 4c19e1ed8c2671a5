/**
 * siluMul: silu(gate) · up, silu(g) = g / (1 + e^-g), separate or packed [gate ; up].
 *
 * Tolerance, relative per element: 8u budget for expf (a correctly rounded exp is ½ulp, a
 * vectorised polynomial a few ulps), which enters σ(g) damped by e^-g/(1+e^-g) ≤ 1; then
 * 1 + e, the division (or reciprocal) and the two products add ≤ 4u: 12u; we allow 16u.
 * Absolute: where e^-g overflows f32 (g < −88.7) an fp32 silu legitimately returns −0
 * although the true value (|silu(g)| ≤ 89·e^-88.7 ≈ 2^-121 there) may still be a normal f32;
 * for g < −88 we allow 2^-100·|up|, irrelevant at model scale. Everywhere an f32 min-normal
 * for results in the subnormal range (FTZ allowed).
 */
import * as ops from '../../lib/ops';
import * as ref from '../reference/ops';
import { expectClose } from '../reference/compare';
import { Rng } from '../reference/rng';
import { F32_MIN_NORMAL, U32, f32, f32Data, implOpts, table, withImpls, type ImplName } from './util';

const REL = 16 * U32;

interface SiluCase {
  lead: number[];
  I: number;
  packed: boolean;
  /** std of the gate values (8 reaches the saturated tails) */
  gstd: number;
}

const cases: SiluCase[] = [];
let rot = 0;
for (const lead of [[1], [3], [0], [], [2, 3], [17]]) {
  for (const I of [1, 3, 7, 17, 33, 127, 1407, 4096, 4099]) {
    if (I >= 1407 && lead.length > 0 && lead[0] > 3) continue;
    for (const packed of [false, true]) {
      cases.push({ lead, I, packed, gstd: [1, 4, 8][rot++ % 3] });
    }
  }
}
cases.push({ lead: [8], I: 12288, packed: false, gstd: 2 }); // V2 intermediate_size
cases.push({ lead: [8], I: 12288, packed: true, gstd: 2 });

type Case = SiluCase & { impl: ImplName };

function absBound(up: ArrayLike<number>, gate: ArrayLike<number>): Float64Array {
  const out = new Float64Array(up.length);
  for (let i = 0; i < up.length; i++) out[i] = gate[i] < -88 ? 2 ** -100 * Math.abs(up[i]) : 0;
  return out;
}

describe('siluMul', () => {
  test.each(table(withImpls(cases)))('%s', async (_name, c: Case) => {
    const rng = new Rng(c);
    const rows = c.lead.reduce((a, b) => a * b, 1);
    const outShape = [...c.lead, c.I];
    if (c.packed) {
      const g = rng.normalF32(rows * 2 * c.I, c.gstd);
      // the up half: unit scale
      for (let r = 0; r < rows; r++) for (let i = 0; i < c.I; i++) g[r * 2 * c.I + c.I + i] /= c.gstd;
      const y = await ops.siluMul(f32(g, [...c.lead, 2 * c.I]), null, implOpts(c.impl));
      const got = f32Data(y, outShape, c);
      const want = ref.siluMulPacked(g, rows, c.I);
      const gate = new Float64Array(rows * c.I);
      const up = new Float64Array(rows * c.I);
      for (let r = 0; r < rows; r++) {
        for (let i = 0; i < c.I; i++) {
          gate[r * c.I + i] = g[r * 2 * c.I + i];
          up[r * c.I + i] = g[r * 2 * c.I + c.I + i];
        }
      }
      expectClose(got, want, { rel: REL, abs: F32_MIN_NORMAL, bound: absBound(up, gate), ctx: c, label: 'siluMul packed' });
    } else {
      const g = rng.normalF32(rows * c.I, c.gstd);
      const u = rng.normalF32(rows * c.I);
      const y = await ops.siluMul(f32(g, outShape), f32(u, outShape), implOpts(c.impl));
      const got = f32Data(y, outShape, c);
      expectClose(got, ref.siluMul(g, u), { rel: REL, abs: F32_MIN_NORMAL, bound: absBound(u, g), ctx: c, label: 'siluMul' });
    }
  });

  test.each(table([{ impl: 'reference' as const }, { impl: 'fast' as const }, { impl: 'default' as const }]))(
    'extreme gates: saturation, overflow of e^-g, signed zero (%s)',
    async (_name, c) => {
      const gv = [-1e4, -200, -100, -89, -88, -87, -30, -20, -1, -1e-30, -0, 0, 1e-30, 1, 20, 30, 87, 88, 89, 100, 200, 1e4, 3e38, -3e38];
      const n = 3 * gv.length; // repeat so SIMD bodies and tails both see them
      const g = new Float32Array(n);
      const u = new Float32Array(n);
      for (let i = 0; i < n; i++) {
        g[i] = gv[i % gv.length];
        u[i] = [1, -2.5, 0.75][i % 3];
      }
      const got = f32Data(await ops.siluMul(f32(g, [n]), f32(u, [n]), implOpts(c.impl)), [n], c);
      // rounded to f32 so that a true value beyond the f32 range (3e38 · -2.5) is the inf it rounds to
      const want = Float32Array.from(ref.siluMul(g, u));
      expectClose(got, want, { rel: REL, abs: F32_MIN_NORMAL, bound: absBound(u, g), ctx: c, label: 'siluMul extremes' });
      // no NaN anywhere (e.g. from inf/inf or -inf · 0 in the saturated tails)
      expect(Array.from(got).some((v) => Number.isNaN(v))).toBe(false);
    },
  );

  test('packed halves are [gate ; up], gate first', async () => {
    // row [g=2, u=10]: silu(2)·10 = 17.616; swapped would be silu(10)·2 = 19.999
    const y = f32Data(await ops.siluMul(f32([2, 10], [1, 2])), [1, 1]);
    expect(y[0]).toBeCloseTo(ref.silu(2) * 10, 4);
  });
});
