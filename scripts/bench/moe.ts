/**
 * CPU benchmark of MoE routing at the published geometries (../shared/configs):
 * router logits [T, E] → ids, weights, per-expert and per-group counts, one call.
 * Reported: µs per call and per token. Small T is dominated by the fixed cost of an async
 * op (a libuv worker hop, ~10–50 µs), which the table makes visible.
 */
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import { machine, table, time, writeResults } from './common';

const GEOMETRIES = [
  { name: 'v2', e: 160, opts: { topK: 6, method: 'group_limited_greedy' as const, nGroup: 8, topkGroup: 3, routedScalingFactor: 16 } },
  { name: 'v2-lite', e: 64, opts: { topK: 6, method: 'greedy' as const } },
  { name: 'v3', e: 256, opts: { topK: 8, method: 'noaux_tc' as const, scoring: 'sigmoid' as const, nGroup: 8, topkGroup: 4, normTopkProb: true, routedScalingFactor: 2.5 } },
];

export async function benchMoeRoute(opts: { quick?: boolean } = {}): Promise<void> {
  const m = await machine();
  console.log(`moe_route on ${m.cpu}, ${m.threads} threads`);
  const rows: Record<string, string | number>[] = [];
  for (const g of opts.quick ? GEOMETRIES.slice(0, 1) : GEOMETRIES) {
    const bias = g.opts.method === 'noaux_tc' ? Tensor.from(new Float32Array(g.e).map((_, i) => (i % 7) * 1e-3)) : null;
    for (const T of [1, 64, 4096]) {
      const logits = Tensor.from(Float32Array.from({ length: T * g.e }, (_, i) => Math.sin(i * 12.9898) * 3), [T, g.e]);
      const t = await time(() => ops.moeRoute(logits, { ...g.opts, bias }), opts.quick ? 0.2 : 0.4, 20);
      rows.push({ geometry: g.name, E: g.e, T, 'us/call': t.median * 1e6, 'us/token': (t.median * 1e6) / T, 'min us': t.min * 1e6 });
    }
  }
  table(rows);
  console.log(`results: ${writeResults('moe-route-cpu', m.cpu, { bench: 'moe_route', date: new Date().toISOString(), machine: m, rows })}`);
}

/**
 * GPU: the fused routing kernel, kernel-only µs per call (CUDA events, logits resident),
 * V2 geometry and the others, T = 1, 16, 64, 512, 4096. Target (issue #7): ≤ 5 µs at T ≤ 64.
 */
export async function benchMoeRouteCuda(opts: { quick?: boolean } = {}): Promise<void> {
  const { info } = await import('../../lib/info');
  const { binding } = await import('../../lib/native');
  const i = await info();
  if (!i.cuda.usable) {
    console.log(`moe_route_cuda: skipped — CUDA is not usable here: ${i.cuda.reason}`);
    return;
  }
  const dev = i.cuda.devices[0];
  const rows: Record<string, string | number>[] = [];
  for (const g of opts.quick ? GEOMETRIES.slice(0, 1) : GEOMETRIES) {
    const bias = g.opts.method === 'noaux_tc' ? Tensor.from(new Float32Array(g.e).map((_, k) => (k % 7) * 1e-3)) : null;
    for (const T of [1, 16, 64, 512, 4096]) {
      const logits = Tensor.from(Float32Array.from({ length: T * g.e }, (_, k) => Math.sin(k * 12.9898) * 3), [T, g.e]);
      const o = { topK: g.opts.topK, method: g.opts.method, scoring: (g.opts as { scoring?: string }).scoring ?? 'softmax',
        nGroup: (g.opts as { nGroup?: number }).nGroup ?? 1, topkGroup: (g.opts as { topkGroup?: number }).topkGroup ?? 1,
        normTopkProb: (g.opts as { normTopkProb?: boolean }).normTopkProb ?? false,
        routedScalingFactor: (g.opts as { routedScalingFactor?: number }).routedScalingFactor ?? 1, device: 'cuda' as const };
      const us = await binding().benchMoeRouteCuda(logits.raw('logits'), o, bias ? bias.raw('bias') : null, opts.quick ? 20 : 200);
      rows.push({ geometry: g.name, E: g.e, T, 'us/call': us, 'ns/token': (us * 1e3) / T });
    }
  }
  table(rows);
  console.log(`results: ${writeResults('moe-route-cuda', dev.name, { bench: 'moe_route_cuda', date: new Date().toISOString(), device: dev, rows })}`);
}
