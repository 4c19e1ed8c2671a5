/**
 * The CUDA gemm kernels (gemv for M ≤ 8, tiled above) against a float64 dot product of the
 * same (bf16/f16-rounded) values, over decode and prefill shapes, odd sizes and large K.
 * Tolerance: fp32 accumulation over K terms in any order: |error| ≤ γ_K · Σ|x_k·w_k| with
 * γ_K = K·u/(1 − K·u), u = 2^-24 (Higham's bound, the same as the CPU gemm tests).
 * Skipped with the reason in the title where no CUDA device is usable (CI).
 */
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import { Rng } from '../reference/rng';
import { gpuDescribe, gpuTitle } from './cuda';

const SHAPES: [number, number, number][] = [
  [1, 1, 1], [1, 7, 33], [3, 129, 257], [8, 1000, 2048], [9, 65, 17], [64, 300, 1536], [130, 257, 96], [1, 5120, 16384], [512, 64, 0],
];

gpuDescribe(gpuTitle('CUDA gemm vs float64'), () => {
  test.each(SHAPES.flatMap(([m, n, k]) => (['f32', 'bf16', 'f16'] as const).map((dt) => [`${dt} m=${m} n=${n} k=${k}`, m, n, k, dt] as const)))(
    '%s', async (_name, m, n, k, dt) => {
      const rng = new Rng(`gemm cuda ${m} ${n} ${k} ${dt}`);
      const x = Tensor.from(Float32Array.from({ length: m * k }, () => rng.normal()), [m, k]);
      const w32 = Tensor.from(Float32Array.from({ length: n * k }, () => rng.normal()), [n, k]);
      const w = dt === 'f32' ? w32 : await ops.cast(w32, dt);
      const wf = (dt === 'f32' ? w32 : await ops.cast(w, 'f32')).data as Float32Array;
      const y = (await ops.gemm(x, w, { device: 'cuda' })).data as Float32Array;
      const xd = x.data as Float32Array;
      const u = 2 ** -24;
      const gamma = (k * u) / (1 - k * u);
      for (let i = 0; i < m; i++) {
        for (let j = 0; j < n; j++) {
          let acc = 0;
          let mag = 0;
          for (let t = 0; t < k; t++) {
            acc += xd[i * k + t] * wf[j * k + t];
            mag += Math.abs(xd[i * k + t] * wf[j * k + t]);
          }
          const got = y[i * n + j];
          if (!(Math.abs(got - acc) <= gamma * mag + 1e-30)) throw new Error(`y[${i}, ${j}] = ${got}, float64 ${acc} (bound ${gamma * mag})`);
        }
      }
    });
});
