/**
 * The whole CUDA MoE layer — routing (moe_route) + routed experts + shared experts
 * (moe_experts) — against the CPU layer (the same two ops on the CPU), at the routing geometries
 * of V2 (160 experts, 8 groups, top-3 groups, top-6, softmax, ×16), V2-Lite (64, greedy, top-6)
 * and V3 (256, 8 groups, top-4 groups, top-8, noaux_tc sigmoid + bias, normalised ×2.5), with
 * small H and I (the experts' widths are exercised in moe-experts.test.ts), bf16 weights (the
 * tensor-core kernels), T ∈ {1, 7, 64, 513, 4096}; forced ties, NaN rows (routed nowhere: y is
 * the shared experts alone) and all tokens to one expert at T = 64 and 513 (both router launch
 * shapes); most experts get no token at small T. Determinism: two CUDA runs are bit-identical.
 * Tolerances: ids and counts identical (moe.test.ts); y within 2^-7 of the row's magnitude
 * + 1e-5 — the tensor-core path rounds x and h = silu(g)·u to bf16 (relative ≤ 2^-8 each),
 * x's rounding is emulated for the CPU layer, h's is the budget (see moe-experts.test.ts), plus
 * the router's f32 weights (relative 2^-20, negligible here).
 * Skipped with the reason in the title where no CUDA device is usable (CI).
 */
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import { Rng } from '../reference/rng';
import { gpuDescribe, gpuTitle } from './cuda';
import { GEOMETRIES, routerLogits, type RouteData as Data } from './util';

const H = 64;
const I = 32;
const SHARED = 2;

gpuDescribe(gpuTitle('CUDA MoE layer (route + experts + shared) vs CPU'), () => {
  const cases: [string, keyof typeof GEOMETRIES, number, Data][] = [];
  for (const g of Object.keys(GEOMETRIES) as (keyof typeof GEOMETRIES)[]) {
    for (const t of [1, 7, 64, 513, 4096]) cases.push([`${g} T=${t} random`, g, t, 'random']);
    for (const t of [64, 513]) for (const d of ['ties', 'nan-rows', 'one-expert'] as const) cases.push([`${g} T=${t} ${d}`, g, t, d]);
  }
  test.each(cases)('%s', async (_n, g, t, data) => {
    const geo = GEOMETRIES[g];
    const rng = new Rng(`moe layer ${g} ${t} ${data}`);
    const rand = (n: number, s: number) => Float32Array.from({ length: n }, () => rng.normal() * s);
    const bf16 = (a: Float32Array, shape: number[]) => ops.cast(Tensor.from(a, shape), 'bf16');
    const x = Tensor.from(rand(t * H, 1), [t, H]);
    const lg = Tensor.from(routerLogits(rng, t, geo.e, data, { every: 5, whole: true }), [t, geo.e]);
    const bias = geo.opts.method === 'noaux_tc' ? Tensor.from(rand(geo.e, 0.01)) : null;
    const experts = {
      gateUp: await bf16(rand(geo.e * 2 * I * H, 1 / Math.sqrt(H)), [geo.e, 2 * I, H]),
      down: await bf16(rand(geo.e * H * I, 1 / Math.sqrt(I)), [geo.e, H, I]),
    };
    const is = I * SHARED;
    const shared = { gateUp: await bf16(rand(2 * is * H, 1 / Math.sqrt(H)), [2 * is, H]), down: await bf16(rand(H * is, 1 / Math.sqrt(is)), [H, is]) };

    const rc = await ops.moeRoute(lg, { ...geo.opts, bias });
    const xRef = await ops.cast(await ops.cast(x, 'bf16'), 'f32'); // the tensor-core path's x rounding
    const want = (await ops.moeExperts(xRef, rc.ids, rc.weights, experts, shared)).data as Float32Array;

    const layer = async () => {
      const r = await ops.moeRoute(lg, { ...geo.opts, bias, device: 'cuda' });
      const y = await ops.moeExperts(x, r.ids, r.weights, experts, shared, { device: 'cuda' });
      return { r, y: y.data as Float32Array };
    };
    const a = await layer();
    const b = await layer();
    expect(Array.from(a.r.ids.data as Int32Array)).toEqual(Array.from(rc.ids.data as Int32Array));
    expect(Array.from(a.r.tokensPerExpert.data as Int32Array)).toEqual(Array.from(rc.tokensPerExpert.data as Int32Array));
    expect(Array.from(b.y)).toEqual(Array.from(a.y)); // bit-identical across runs
    expect(Array.from(b.r.weights.data as Float32Array)).toEqual(Array.from(a.r.weights.data as Float32Array));
    for (let r = 0; r < t; r++) {
      let mag = 0;
      for (let n = 0; n < H; n++) mag = Math.max(mag, Math.abs(want[r * H + n]));
      for (let n = 0; n < H; n++) {
        const u = want[r * H + n];
        const v = a.y[r * H + n];
        if (!(Math.abs(u - v) <= 2 ** -7 * mag + 1e-5)) throw new Error(`y[${r}, ${n}]: cpu ${u} cuda ${v}`);
      }
    }
  });
});
