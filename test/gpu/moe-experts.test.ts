/**
 * The CUDA MoE experts (on-device dispatch, grouped SwiGLU kernels, shared experts, slot-order
 * combine) against the CPU op: T ∈ {1, 7, 64, 513}; routing from the real router over V2-Lite-
 * and V2-like expert counts; experts with no token, all tokens on one expert, -1 slots; f32 and
 * bf16 weights; deterministic across runs.
 * Tolerance: both sides accumulate in f32 in different orders: each output is a sum of k + 1
 * SwiGLU terms whose dot products run over H and I; a relative 1e-4 of the output row's
 * magnitude plus 1e-5 covers γ_{H+I} ≈ 2·10^-4 × ‖terms‖ for the sizes here with margin.
 * Skipped with the reason in the title where no CUDA device is usable (CI).
 */
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import { Rng } from '../reference/rng';
import { gpuDescribe, gpuTitle } from './cuda';

interface Case { t: number; e: number; k: number; h: number; i: number; shared: number; dtype: 'f32' | 'bf16'; routing: 'router' | 'one' | 'holes' }

const CASES: Case[] = [];
for (const dtype of ['f32', 'bf16'] as const) {
  for (const t of [1, 7, 64, 513]) CASES.push({ t, e: 64, k: 6, h: 64, i: 48, shared: 2, dtype, routing: 'router' });
  CASES.push({ t: 64, e: 160, k: 6, h: 96, i: 32, shared: 0, dtype, routing: 'router' });
  CASES.push({ t: 33, e: 8, k: 2, h: 40, i: 24, shared: 1, dtype, routing: 'one' });
  CASES.push({ t: 17, e: 8, k: 3, h: 40, i: 24, shared: 1, dtype, routing: 'holes' });
}

gpuDescribe(gpuTitle('CUDA moe_experts vs CPU'), () => {
  test.each(CASES.map((c) => [JSON.stringify(c), c] as const))('%s', async (_n, c) => {
    const rng = new Rng(`moe cuda ${JSON.stringify(c)}`);
    const rand = (n: number, s: number) => Float32Array.from({ length: n }, () => rng.normal() * s);
    const x = Tensor.from(rand(c.t * c.h, 1), [c.t, c.h]);
    let ids: Tensor;
    let weights: Tensor;
    if (c.routing === 'router') {
      const r = await ops.moeRoute(Tensor.from(rand(c.t * c.e, 2), [c.t, c.e]), { topK: c.k, method: 'greedy' });
      ids = r.ids;
      weights = r.weights;
    } else {
      const idv = Int32Array.from({ length: c.t * c.k }, (_, q) => (c.routing === 'one' ? 3 : q % 4 === 0 ? -1 : (q * 5) % c.e));
      ids = Tensor.from(idv, [c.t, c.k]);
      weights = Tensor.from(rand(c.t * c.k, 0.5), [c.t, c.k]);
    }
    const cast = async (a: Float32Array, shape: number[]) => (c.dtype === 'f32' ? Tensor.from(a, shape) : ops.cast(Tensor.from(a, shape), 'bf16'));
    const experts = {
      gateUp: await cast(rand(c.e * 2 * c.i * c.h, 1 / Math.sqrt(c.h)), [c.e, 2 * c.i, c.h]),
      down: await cast(rand(c.e * c.h * c.i, 1 / Math.sqrt(c.i)), [c.e, c.h, c.i]),
    };
    const is = c.i * c.shared;
    const shared = c.shared
      ? { gateUp: await cast(rand(2 * is * c.h, 1 / Math.sqrt(c.h)), [2 * is, c.h]), down: await cast(rand(c.h * is, 1 / Math.sqrt(is)), [c.h, is]) }
      : null;
    const want = (await ops.moeExperts(x, ids, weights, experts, shared)).data as Float32Array;
    const got = (await ops.moeExperts(x, ids, weights, experts, shared, { device: 'cuda' })).data as Float32Array;
    const again = (await ops.moeExperts(x, ids, weights, experts, shared, { device: 'cuda' })).data as Float32Array;
    expect(Array.from(again)).toEqual(Array.from(got)); // deterministic
    for (let r = 0; r < c.t; r++) {
      let mag = 0;
      for (let n = 0; n < c.h; n++) mag = Math.max(mag, Math.abs(want[r * c.h + n]));
      for (let n = 0; n < c.h; n++) {
        const a = want[r * c.h + n];
        const b = got[r * c.h + n];
        if (!(Math.abs(a - b) <= 1e-4 * mag + 1e-5)) throw new Error(`y[${r}, ${n}]: cpu ${a} cuda ${b}`);
      }
    }
  });
});
