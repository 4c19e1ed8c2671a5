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
 * GPU routing: the fused kernel against the unfused baseline (one launch per step, as eager torch
 * runs the published code: softmax, group scores, top groups, mask, top-k, weights, counts), both
 * kernel-only µs per call (CUDA events, logits resident) in the same run, T = 1, 16, 64, 512,
 * 4096. Targets (issue #7), printed per row at V2 geometry: fused ≤ 5 µs at T ≤ 64, and ≥ 5× the
 * unfused baseline.
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
  console.log(`moe_route_cuda on ${dev.name}`);
  const rows: Record<string, string | number>[] = [];
  const iters = opts.quick ? 20 : 200;
  for (const g of opts.quick ? GEOMETRIES.slice(0, 1) : GEOMETRIES) {
    const bias = g.opts.method === 'noaux_tc' ? Tensor.from(new Float32Array(g.e).map((_, k) => (k % 7) * 1e-3)) : null;
    for (const T of [1, 16, 64, 512, 4096]) {
      const logits = Tensor.from(Float32Array.from({ length: T * g.e }, (_, k) => Math.sin(k * 12.9898) * 3), [T, g.e]);
      const o = { topK: g.opts.topK, method: g.opts.method, scoring: (g.opts as { scoring?: string }).scoring ?? 'softmax',
        nGroup: (g.opts as { nGroup?: number }).nGroup ?? 1, topkGroup: (g.opts as { topkGroup?: number }).topkGroup ?? 1,
        normTopkProb: (g.opts as { normTopkProb?: boolean }).normTopkProb ?? false,
        routedScalingFactor: (g.opts as { routedScalingFactor?: number }).routedScalingFactor ?? 1, device: 'cuda' as const };
      const raw = logits.raw('logits');
      const braw = bias ? bias.raw('bias') : null;
      const fused = await binding().benchMoeRouteCuda(raw, o, braw, iters);
      const unfused = await binding().benchMoeRouteCuda(raw, { ...o, unfused: true }, braw, iters);
      const speedup = unfused.us / fused.us;
      const target = g.name !== 'v2' ? '' : `${T <= 64 ? (fused.us <= 5 ? '≤5us ok' : '≤5us MISS') + ', ' : ''}${speedup >= 5 ? '≥5x ok' : '≥5x MISS'}`;
      rows.push({ geometry: g.name, E: g.e, T, kernel: fused.kernel, 'fused us': fused.us, 'unfused us': unfused.us,
        speedup, 'fused ns/token': (fused.us * 1e3) / T, target });
    }
  }
  table(rows);
  console.log(`results: ${writeResults('moe-route-cuda', dev.name, { bench: 'moe_route_cuda', date: new Date().toISOString(), device: dev,
    targets: 'v2: fused <= 5 us at T <= 64; fused >= 5x unfused', rows })}`);
}

/**
 * GPU MoE layer, experts part (`npm run bench -- moe_experts_cuda`): moe_experts (on-device
 * dispatch, grouped SwiGLU gate+up, grouped down with the routing weight, shared experts,
 * slot-order combine), kernel-only with random bf16 weights resident and seeded random routing
 * (8 routings cycled between calls so the last call's experts are not L2-resident).
 * Shapes: V2 (H 5120, I 1536, E 160, top-6, shared 2 × 1536) and V2-Lite (H 2048, I 1408, E 64,
 * top-6, shared 2 × 1408).
 *   decode T = 1, 8, 64: bytes = weight bytes touched = (distinct experts hit + shared) × 3·H·I·2,
 *     reported as % of the device-to-device copy bandwidth measured in the same run (target ≥ 70%);
 *   prefill T = 4096: FLOPs = 6·T·k·H·I + 6·T·H·I_shared, as % of the rate of one dense cuda::gemm
 *     (m = T, n = 2·I_shared, k = H, bf16 weights) timed in the same call (target ≥ 50%).
 * fp8 rows (weights = fp8): the routed experts as e4m3 codes + 128×128 block scales (V3's
 * format; shared experts stay bf16), decode T = 1, 8, 64 (and 4096 outside --quick): routed
 * bytes halve, (experts hit × 3·H·I·1 + shared × 3·H·Is·2); same % copy-bandwidth target.
 */
export async function benchMoeExpertsCuda(opts: { quick?: boolean } = {}): Promise<void> {
  const { info } = await import('../../lib/info');
  const { binding } = await import('../../lib/native');
  const { cudaCopyBandwidth } = await import('../../lib/bench');
  const i = await info();
  if (!i.cuda.usable) {
    console.log(`moe_experts_cuda: skipped — CUDA is not usable here: ${i.cuda.reason}`);
    return;
  }
  const dev = i.cuda.devices[0];
  const bw = await cudaCopyBandwidth();
  console.log(`moe_experts_cuda on ${dev.name}; D2D copy ${(bw / 1e12).toFixed(2)} TB/s`);
  const SHAPES = [
    { name: 'v2', hidden: 5120, inter: 1536, nExperts: 160, topK: 6, interShared: 3072 },
    { name: 'v2-lite', hidden: 2048, inter: 1408, nExperts: 64, topK: 6, interShared: 2816 },
  ];
  const rows: Record<string, string | number>[] = [];
  for (const sh of opts.quick ? SHAPES.slice(1) : SHAPES) {
    const runs: { t: number; fp8: boolean }[] = [];
    for (const t of opts.quick ? [1, 64, 4096] : [1, 8, 64, 4096]) runs.push({ t, fp8: false });
    for (const t of opts.quick ? [1, 64] : [1, 8, 64, 4096]) runs.push({ t, fp8: true });
    for (const { t, fp8 } of runs) {
      const { name, ...shape } = sh;
      const r = await binding().benchMoeExpertsCuda({ ...shape, t, seed: 7, fp8 }, t >= 1024 ? (opts.quick ? 3 : 10) : opts.quick ? 10 : 50);
      const s = r.ms / 1e3;
      const gemmRate = r.gemmFlops / (r.gemmMs / 1e3);
      const decode = t <= 64;
      const pct = decode ? (100 * r.weightBytes) / s / bw : (100 * r.flops) / s / gemmRate;
      rows.push({
        shape: name, weights: fp8 ? 'fp8' : 'bf16', T: t, kernel: r.kernel, 'experts hit': r.expertsHit, us: r.ms * 1e3, 'GB/s': r.weightBytes / s / 1e9,
        'TFLOP/s': r.flops / s / 1e12, 'dense TFLOP/s': gemmRate / 1e12, 'dense kernel': r.gemmKernel,
        metric: decode ? '% copy bw' : '% dense', value: pct, target: decode ? (pct >= 70 ? '≥70% ok' : '≥70% MISS') : pct >= 50 ? '≥50% ok' : '≥50% MISS',
      });
    }
  }
  table(rows);
  console.log(`results: ${writeResults('moe-experts-cuda', dev.name, {
    bench: 'moe_experts_cuda', date: new Date().toISOString(), device: dev, copyBandwidth: bw,
    model: { bytes: '(experts hit + shared) * 3*H*I*2 (bf16 weights touched); fp8 rows: experts hit * 3*H*I*1 + shared * 3*H*Is*2', flops: '6*T*k*H*I + 6*T*H*I_shared',
      roofline: 'decode: D2D copy bandwidth; prefill: one dense cuda::gemm (m=T, n=2*I_shared, k=H) in the same call' }, rows,
  })}`);
}
