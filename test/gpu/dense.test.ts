/**
 * The CUDA row-wise kernels (embedding, rms_norm, rope, silu_mul, softmax) against the CPU
 * ops (which test/ops checks against float64 references). Tolerances are the CPU tests' own
 * fp32 bounds against float64, doubled because both sides now carry that error
 * (u = 2^-24): rms_norm (D/2 + 8)·u relative; rope 3u·(|a·cos| + |b·sin|); silu_mul 16u
 * relative (expf within 2 ulp on both sides plus 4 roundings); softmax (8A + n + 20)·u
 * relative with A = max |scale·x|. Embedding is a gather: exact.
 * Skipped with the reason in the title where no CUDA device is usable (CI).
 */
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import { Rng } from '../reference/rng';
import { gpuDescribe, gpuTitle } from './cuda';

const U = 2 ** -24;

function close(want: Float32Array, got: Float32Array, bound: (i: number) => number, what: string): void {
  expect(got.length).toBe(want.length);
  for (let i = 0; i < want.length; i++) {
    if (Number.isNaN(want[i]) || Number.isNaN(got[i])) {
      if (Number.isNaN(want[i]) !== Number.isNaN(got[i])) throw new Error(`${what}[${i}]: cpu ${want[i]} cuda ${got[i]}`);
      continue;
    }
    if (!(Math.abs(want[i] - got[i]) <= 2 * bound(i) + 1e-37)) throw new Error(`${what}[${i}]: cpu ${want[i]} cuda ${got[i]}`);
  }
}

gpuDescribe(gpuTitle('CUDA dense kernels vs CPU'), () => {
  const rng = new Rng('cuda dense');
  const randn = (n: number, s = 1) => Float32Array.from({ length: n }, () => rng.normal() * s);

  test.each([[1, 7], [3, 5120], [17, 2048], [0, 64]])('embedding T=%i H=%i (bf16 and f32 tables)', async (t, h) => {
    const v = 321;
    for (const dt of ['f32', 'bf16'] as const) {
      const tab32 = Tensor.from(randn(v * h), [v, h]);
      const table = dt === 'f32' ? tab32 : await ops.cast(tab32, 'bf16');
      const ids = Tensor.from(Int32Array.from({ length: t }, (_, i) => (i * 97) % v));
      const want = (await ops.embedding(ids, table)).data as Float32Array;
      const got = (await ops.embedding(ids, table, { device: 'cuda' })).data as Float32Array;
      expect(Array.from(got)).toEqual(Array.from(want));
    }
    await expect(ops.embedding(Tensor.from(Int32Array.of(v)), Tensor.zeros([v, h]), { device: 'cuda' })).rejects.toMatchObject({ code: 'E_RANGE' });
  });

  test.each([[1, 1], [4, 512], [7, 5120], [130, 33]])('rms_norm rows=%i D=%i', async (r, d) => {
    const x = Tensor.from(randn(r * d, 3), [r, d]);
    const w = await ops.cast(Tensor.from(randn(d, 0.5)), 'bf16');
    const want = (await ops.rmsNorm(x, w, { eps: 1e-6 })).data as Float32Array;
    const got = (await ops.rmsNorm(x, w, { eps: 1e-6, device: 'cuda' })).data as Float32Array;
    close(want, got, (i) => (d / 2 + 8) * U * Math.abs(want[i]), 'rms_norm');
  });

  test.each([[1, 1, 8], [5, 16, 64], [33, 128, 64]])('rope T=%i H=%i d=%i (interleaved and not)', async (t, h, d) => {
    const table = await ops.ropeTable({ dim: d, maxPositions: 4096, yarn: { factor: 40, originalMaxPositionEmbeddings: 4096, betaFast: 32, betaSlow: 1, mscale: 0.707, mscaleAllDim: 0.707 } });
    const x = Tensor.from(randn(t * h * d), [t, h, d]);
    const pos = Tensor.from(Int32Array.from({ length: t }, (_, i) => (i * 131) % 4096));
    for (const interleaved of [true, false]) {
      const want = (await ops.rope(x, pos, table, { interleaved })).data as Float32Array;
      const got = (await ops.rope(x, pos, table, { interleaved, device: 'cuda' })).data as Float32Array;
      const xv = x.data as Float32Array;
      const half = d / 2;
      // out[j] and out[j + d/2] come from the pair (a, b) of index j mod d/2; |cos|, |sin| <= 1
      // here (V2's yarn mscale ratio is 1).
      const pairMag = (o: number) => {
        const base = o - (o % d);
        const p = (o % d) % half;
        const a = interleaved ? xv[base + 2 * p] : xv[base + p];
        const b = interleaved ? xv[base + 2 * p + 1] : xv[base + p + half];
        return Math.abs(a) + Math.abs(b);
      };
      close(want, got, (i) => 3 * U * pairMag(i), 'rope');
    }
    await expect(ops.rope(x, Tensor.from(Int32Array.from({ length: t }, () => 5000)), table, { device: 'cuda' })).rejects.toMatchObject({ code: 'E_RANGE' });
  });

  test.each([[1, 8], [9, 1408], [64, 10944]])('silu_mul rows=%i I=%i (fused and split inputs)', async (r, i) => {
    const gu = Tensor.from(randn(r * 2 * i, 4), [r, 2 * i]);
    const want = (await ops.siluMul(gu)).data as Float32Array;
    const got = (await ops.siluMul(gu, null, { device: 'cuda' })).data as Float32Array;
    close(want, got, (k) => 16 * U * Math.abs(want[k]), 'silu_mul');
    const g = Tensor.from(randn(r * i, 4), [r, i]);
    const u = Tensor.from(randn(r * i), [r, i]);
    close((await ops.siluMul(g, u)).data as Float32Array, (await ops.siluMul(g, u, { device: 'cuda' })).data as Float32Array,
      (k) => 16 * U * Math.abs(((g.data as Float32Array)[k] * (u.data as Float32Array)[k])), 'silu_mul split');
  });

  test.each([[1, 1], [3, 320], [8, 102400], [2, 7]])('softmax rows=%i n=%i', async (r, n) => {
    const x = Tensor.from(randn(r * n, 3), [r, n]);
    const scale = 0.7;
    const want = (await ops.softmax(x, { scale })).data as Float32Array;
    const got = (await ops.softmax(x, { scale, device: 'cuda' })).data as Float32Array;
    let a = 0;
    for (const v of x.data as Float32Array) a = Math.max(a, Math.abs(scale * v));
    close(want, got, (k) => (8 * a + n + 20) * U * Math.abs(want[k]), 'softmax');
  });

  test('softmax: a row holding a NaN, and a row of -inf only, are NaN as on the CPU; -inf elsewhere gives 0', async () => {
    const n = 300;
    const x = randn(4 * n, 5);
    x[1 * n + 17] = NaN;                          // row 1: NaN
    x.fill(-Infinity, 2 * n, 3 * n);              // row 2: all -inf
    x[3 * n + 3] = -Infinity;                     // row 3: one -inf, an ordinary row otherwise
    const t = Tensor.from(x, [4, n]);
    const want = (await ops.softmax(t, { scale: 1 })).data as Float32Array;
    const got = (await ops.softmax(t, { scale: 1, device: 'cuda' })).data as Float32Array;
    for (let i = n; i < 3 * n; i++) expect([i, Number.isNaN(want[i]), Number.isNaN(got[i])]).toEqual([i, true, true]);
    expect(got[3 * n + 3]).toBe(0);
    let a = 0;
    for (const v of x) if (Number.isFinite(v)) a = Math.max(a, Math.abs(v));
    const rows = (v: Float32Array) => Float32Array.from([...v.subarray(0, n), ...v.subarray(3 * n)]);
    close(rows(want), rows(got), (k) => (8 * a + n + 20) * U * Math.abs(rows(want)[k]), 'softmax'); // the bound of the test above
  });
});
