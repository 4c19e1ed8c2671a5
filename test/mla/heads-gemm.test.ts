/**
 * headsGemm: per head y[t, h, :] = x[t, h, :] · w[h]ᵀ, the projections around the absorbed
 * decode (q_nope · W_UK with W_UK stored [h, dC, dNope]; out · W_UVᵀ with W_UV [h, dV, dC]).
 *
 * Tolerance per element: γ_K Σ_k |x_k w_k| with γ_K = K·u/(1 − K·u), u = 2^-24 — the
 * dot-product bound for any summation order (Higham §3.1), as in the gemm test; plus an f32
 * min-normal for underflowed products. bf16/f16 weights enter the reference exactly decoded.
 */
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import * as mla from '../reference/mla';
import { expectClose } from '../reference/compare';
import { Rng } from '../reference/rng';
import type { FloatDType } from '../reference/dtype';
import { F32_MIN_NORMAL, expectRejects, f32Data, floatTensor, implOpts, table, withImpls, type ImplName } from '../ops/util';
import { gamma } from './util';

interface HCase {
  T: number;
  h: number;
  K: number;
  N: number;
  wdtype: FloatDType;
}

const cases: HCase[] = [];
{
  let rot = 0;
  const dts: FloatDType[] = ['f32', 'bf16', 'f16'];
  for (const T of [0, 1, 3, 17]) {
    for (const h of [1, 3, 16]) {
      for (const [K, N] of [[1, 1], [7, 5], [33, 17], [128, 64]]) {
        cases.push({ T, h, K, N, wdtype: dts[rot++ % 3] });
      }
    }
  }
  // V2 decode shapes: q_nope [T, 128, 128] · W_UK [128, 512, 128]ᵀ and out [T, 128, 512] · W_UV [128, 128, 512]ᵀ
  cases.push({ T: 2, h: 128, K: 128, N: 512, wdtype: 'bf16' });
  cases.push({ T: 1, h: 128, K: 512, N: 128, wdtype: 'bf16' });
  cases.push({ T: 3, h: 16, K: 512, N: 128, wdtype: 'f32' });
}

describe('headsGemm', () => {
  test.each(table(withImpls(cases)))('%s', async (_name, c: HCase & { impl: ImplName }) => {
    const rng = new Rng(c);
    const x = rng.normalF32(c.T * c.h * c.K);
    const W = floatTensor(rng.normalF32(c.h * c.N * c.K, 0.05), [c.h, c.N, c.K], c.wdtype);
    const y = await ops.headsGemm(new Tensor('f32', [c.T, c.h, c.K], x), W.t, implOpts(c.impl));
    const want = mla.headsGemm(x, c.T, c.h, c.K, W.exact, c.N);
    const g = gamma(c.K);
    expectClose(f32Data(y, [c.T, c.h, c.N], c), want.y, { abs: F32_MIN_NORMAL, bound: want.absDot.map((a) => g * a), ctx: c, label: 'headsGemm y' });
  });

  test('head h uses w[h] (not w[0]) on a hand case', async () => {
    // T = 1, h = 2, K = 2, N = 1: head 0 w = [1, 0], head 1 w = [0, 1]; x = [[3, 4], [5, 6]]
    const y = await ops.headsGemm(new Tensor('f32', [1, 2, 2], Float32Array.from([3, 4, 5, 6])), new Tensor('f32', [2, 1, 2], Float32Array.from([1, 0, 0, 1])));
    expect(Array.from(y.data as Float32Array)).toEqual([3, 6]);
  });

  const z = (shape: number[]) => new Tensor('f32', shape, new Float32Array(shape.reduce((a, b) => a * b, 1)));
  test.each<[string, string, () => Promise<unknown>]>([
    ['x rank 2', 'E_SHAPE', () => ops.headsGemm(z([2, 4]), z([1, 3, 4]))],
    ['w rank 2', 'E_SHAPE', () => ops.headsGemm(z([2, 1, 4]), z([3, 4]))],
    ['heads differ', 'E_SHAPE', () => ops.headsGemm(z([2, 2, 4]), z([3, 3, 4]))],
    ['K differs', 'E_SHAPE', () => ops.headsGemm(z([2, 2, 4]), z([2, 3, 5]))],
    ['x bf16', 'E_DTYPE', () => ops.headsGemm(new Tensor('bf16', [1, 1, 2], new Uint16Array(2)), z([1, 1, 2]))],
    ['w i32', 'E_DTYPE', () => ops.headsGemm(z([1, 1, 2]), new Tensor('i32', [1, 1, 2], new Int32Array(2)))],
  ])('bad input: %s -> %s', async (_n, code, call) => {
    await expectRejects(call, code);
  });
});
