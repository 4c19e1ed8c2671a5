/**
 * The fused CUDA routing kernel against the CPU op (test/moe checks the CPU op against a
 * float64 reference): V2 (160 experts, 8 groups, top-3 groups, top-6, ×16), V2-Lite (64,
 * greedy), V3 (256, noaux_tc sigmoid + bias, top-8, normalised ×2.5); T ∈ {1, 7, 64, 513, 4096};
 * forced ties, NaN rows, all tokens to one expert (at T = 64: the one-block launch, and T = 513:
 * the grid launch); determinism across runs. The unfused baseline of the router benchmark
 * (router_unfused.cu, timed by scripts/bench/moe.ts) keeps its outputs inside the benchmark, so
 * here it is only run, for each geometry: on the emulated device that checks its launches
 * (bounds of shared memory, alignment, barriers and warp operations all reached).
 * Expert ids identical; weights within fp32 rounding (the CPU computes the softmax in
 * double, the GPU in f32: relative 2^-20 covers both roundings with margin); counts exact.
 * Softmax scores also carry the rounding of the GPU's f32 argument d = logit − max (≤ |d|·2^-24,
 * which exp turns into a relative error of that size): with one expert at 30 and the rest N(0, 1)
 * ('one-expert'), |d| ≈ 31 puts the other weights ≈ 2^-20 off, so the bound adds |d|·2^-23.
 * Skipped with the reason in the title where no CUDA device is usable (CI).
 */
import * as ops from '../../lib/ops';
import { binding } from '../../lib/native';
import { Tensor } from '../../lib/tensor';
import { Rng } from '../reference/rng';
import { gpuDescribe, gpuTitle } from './cuda';
import { GEOMETRIES, routerLogits, type RouteData as Data } from './util';

gpuDescribe(gpuTitle('CUDA moe_route vs CPU'), () => {
  const cases: [string, keyof typeof GEOMETRIES, number, Data][] = [];
  for (const g of Object.keys(GEOMETRIES) as (keyof typeof GEOMETRIES)[]) {
    for (const t of [1, 7, 64, 513, 4096]) cases.push([`${g} T=${t} random`, g, t, 'random']);
    // T = 64 runs the one-block launch, T = 513 the grid launch (moe_route_kernel_name)
    for (const t of [64, 513]) for (const d of ['ties', 'nan-rows', 'one-expert'] as const) cases.push([`${g} T=${t} ${d}`, g, t, d]);
  }
  test.each(cases)('%s', async (_n, g, t, data) => {
    const geo = GEOMETRIES[g];
    const rng = new Rng(`route ${g} ${t} ${data}`);
    const x = Tensor.from(routerLogits(rng, t, geo.e, data), [t, geo.e]);
    const bias = geo.opts.method === 'noaux_tc' ? Tensor.from(Float32Array.from({ length: geo.e }, () => rng.normal() * 0.01)) : null;
    const want = await ops.moeRoute(x, { ...geo.opts, bias });
    const got = await ops.moeRoute(x, { ...geo.opts, bias, device: 'cuda' });
    const again = await ops.moeRoute(x, { ...geo.opts, bias, device: 'cuda' });
    expect(Array.from(got.ids.data as Int32Array)).toEqual(Array.from(want.ids.data as Int32Array));
    expect(Array.from(again.weights.data as Float32Array)).toEqual(Array.from(got.weights.data as Float32Array)); // deterministic
    expect(Array.from(again.ids.data as Int32Array)).toEqual(Array.from(got.ids.data as Int32Array));
    const wa = want.weights.data as Float32Array;
    const wb = got.weights.data as Float32Array;
    const xv = x.data as Float32Array;
    const idv = want.ids.data as Int32Array;
    const k = geo.opts.topK;
    // |d| = max − logit of the chosen expert (softmax scoring only; 0 where not finite)
    const gap = (i: number) => {
      if (geo.opts.method === 'noaux_tc' || idv[i] < 0) return 0;
      const r = Math.floor(i / k);
      let mx = -Infinity;
      for (let j = 0; j < geo.e; j++) if (xv[r * geo.e + j] > mx) mx = xv[r * geo.e + j];
      const d = mx - xv[r * geo.e + idv[i]];
      return Number.isFinite(d) ? d : 0;
    };
    for (let i = 0; i < wa.length; i++) {
      if (!(Math.abs(wa[i] - wb[i]) <= (2 ** -20 + gap(i) * 2 ** -23) * Math.abs(wa[i]) + 1e-30)) throw new Error(`weight ${i}: cpu ${wa[i]} cuda ${wb[i]}`);
    }
    expect(Array.from(got.tokensPerExpert.data as Int32Array)).toEqual(Array.from(want.tokensPerExpert.data as Int32Array));
    expect(Array.from(got.tokensPerGroup.data as Int32Array)).toEqual(Array.from(want.tokensPerGroup.data as Int32Array));
  });

  test.each(Object.keys(GEOMETRIES) as (keyof typeof GEOMETRIES)[])('the benchmark\'s unfused baseline runs (%s, T = 64, NaN rows)', async (g) => {
    const geo = GEOMETRIES[g];
    const rng = new Rng(`unfused ${g}`);
    const x = Tensor.from(routerLogits(rng, 64, geo.e, 'nan-rows'), [64, geo.e]);
    const bias = geo.opts.method === 'noaux_tc' ? Tensor.from(Float32Array.from({ length: geo.e }, () => rng.normal() * 0.01)) : null;
    const o = geo.opts as { topK: number; method: string; scoring?: string; nGroup?: number; topkGroup?: number; normTopkProb?: boolean; routedScalingFactor?: number };
    const raw = { topK: o.topK, method: o.method, scoring: o.scoring ?? 'softmax', nGroup: o.nGroup ?? 1, topkGroup: o.topkGroup ?? 1,
      normTopkProb: o.normTopkProb ?? false, routedScalingFactor: o.routedScalingFactor ?? 1, device: 'cuda' as const }; // as scripts/bench/moe.ts
    for (const unfused of [true, false]) {
      const r = await binding().benchMoeRouteCuda(x.raw('logits'), { ...raw, unfused }, bias ? bias.raw('bias') : null, 1);
      expect(r.kernel).toBe(unfused ? 'unfused' : 'fused_one_block');
      expect(r.us).toBeGreaterThan(0);
    }
  });
});
