/**
 * GPU benchmark of the CUDA absorbed MLA decode (`node dist/scripts/bench/run.js mla_decode_cuda`).
 *
 * Shapes (issue #6, FlashMLA's): b = 128, mean s_k ∈ {1024, 4096, 16384} with varlen rows
 * (s_k_i uniform in ±25% of the mean, seeded), h_q ∈ {16, 64, 128}, s_q ∈ {1, 2}, bf16 and fp8
 * caches, d_c = 512, d_r = 64 (the tensor-core kernel). FlashMLA's model:
 *   FLOPs = Σ_i h_q·s_q·(2·576·s_k_i + 2·s_k_i·512)
 *   bytes = Σ_i s_k_i·bytesPerToken + q + out       (the cache, q (f32) and o (f32) once)
 * Roofline: device-to-device copy bandwidth measured in the same run (read + write bytes/s).
 * Kernel-only times (CUDA events, inputs resident on the device, plan + attention + combine).
 * Targets (issue #6): memory-bound shapes ≥ 93% of copy bandwidth, h_q = 128 ≥ 450 TFLOP/s,
 * fp8 tokens/s ≥ 1.8 × bf16 tokens/s at s_k ≥ 4096.
 */
import { cudaCopyBandwidth } from '../../lib/bench';
import { info } from '../../lib/info';
import { KvCache } from '../../lib/kv-cache';
import { binding } from '../../lib/native';
import { Tensor } from '../../lib/tensor';
import { randomF32, table, writeResults } from './common';

const D_C = 512;
const D_R = 64;
const PAGE = 64;

/** Seeded uniform lengths in [0.75, 1.25] × mean (an LCG: reproducible across runs). */
function varlenLens(b: number, mean: number, seed: number): number[] {
  let s = seed >>> 0;
  return Array.from({ length: b }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return Math.max(1, Math.round(mean * (0.75 + 0.5 * (s / 2 ** 32))));
  });
}

export async function benchMlaDecodeCuda(opts: { quick?: boolean } = {}): Promise<void> {
  const i = await info();
  if (!i.cuda.usable) {
    console.log(`mla_decode_cuda: skipped — CUDA is not usable here: ${i.cuda.reason}`);
    return;
  }
  const dev = i.cuda.devices[0];
  const bw = await cudaCopyBandwidth();
  console.log(`mla_decode_cuda on ${dev.name} (sm_${dev.computeCapability.replace('.', '')}); D2D copy ${(bw / 1e12).toFixed(2)} TB/s`);
  console.log('targets: memory-bound shapes >= 93% of copy bandwidth; h_q = 128 >= 450 TFLOP/s; fp8 tok/s >= 1.8x bf16 at s_k >= 4096');
  const b = opts.quick ? 16 : 128;
  const means = opts.quick ? [1024] : [1024, 4096, 16384];
  const rows: Record<string, string | number>[] = [];
  const tokPerS = new Map<string, number>(); // `${mean}/${sQ}/${hQ}/${dtype}` → tokens/s
  for (const dtype of ['bf16', 'fp8'] as const) {
    for (const mean of means) {
      const lens = varlenLens(b, mean, 1000 + mean);
      const perSeq = lens.map((l) => Math.ceil(l / PAGE));
      const maxBlocks = Math.max(...perSeq);
      const total = perSeq.reduce((a, x) => a + x, 0);
      const cache = await KvCache.create({ layers: 1, pages: total, dC: D_C, dR: D_R, dtype, device: 'cuda' });
      const pages = cache.allocPages(total);
      const bt = new Int32Array(b * maxBlocks).fill(2 ** 31 - 1);
      let o = 0;
      for (let s = 0; s < b; s++) for (let k = 0; k < perSeq[s]; k++) bt[s * maxBlocks + k] = pages[o++];
      // Fill every page (whole pages: values past a sequence's end are never read).
      const chunk = 65536;
      for (let s0 = 0; s0 < total * PAGE; s0 += chunk) {
        const n = Math.min(chunk, total * PAGE - s0);
        await cache.append(0, Tensor.from(randomF32(n * D_C, s0), [n, D_C]), Tensor.from(randomF32(n * D_R, s0 + 7), [n, D_R]),
          Tensor.from(Int32Array.from({ length: n }, (_, t) => s0 + t)));
      }
      const sumSk = lens.reduce((a, x) => a + x, 0);
      for (const sQ of [1, 2]) {
        for (const hQ of opts.quick ? [16, 128] : [16, 64, 128]) {
          const q = Tensor.from(randomF32(b * sQ * hQ * (D_C + D_R), hQ), [b, sQ, hQ, D_C + D_R]);
          const r = await binding().benchMlaDecodeCuda(q.raw('q'), cache.raw(), 0, Tensor.from(bt, [b, maxBlocks]).raw('blockTable'),
            Tensor.from(Int32Array.from(lens)).raw('seqlens'), 1 / Math.sqrt(192), 0, opts.quick ? 5 : 20);
          const s = r.ms / 1e3;
          const flops = hQ * sQ * (2 * 576 * sumSk + 2 * 512 * sumSk);
          const bytes = sumSk * cache.bytesPerToken + q.nbytes + b * sQ * hQ * D_C * 4;
          const tps = (b * sQ) / s;
          tokPerS.set(`${mean}/${sQ}/${hQ}/${dtype}`, tps);
          rows.push({
            cache: dtype, b, 'mean s_k': mean, s_q: sQ, h_q: hQ, kernel: r.kernel, items: r.items, ms: r.ms,
            'GB/s': bytes / s / 1e9, 'TFLOP/s': flops / s / 1e12, '%copy bw': (100 * bytes) / s / bw, 'tok/s': tps,
          });
        }
      }
      cache.dispose();
    }
  }
  table(rows);
  const ratios: Record<string, string | number>[] = [];
  for (const mean of means.filter((m) => m >= 4096)) {
    for (const sQ of [1, 2]) {
      for (const hQ of opts.quick ? [16, 128] : [16, 64, 128]) {
        const a = tokPerS.get(`${mean}/${sQ}/${hQ}/fp8`);
        const c = tokPerS.get(`${mean}/${sQ}/${hQ}/bf16`);
        if (a && c) ratios.push({ 'mean s_k': mean, s_q: sQ, h_q: hQ, 'fp8 tok/s ÷ bf16 tok/s': a / c, target: 1.8 });
      }
    }
  }
  if (ratios.length > 0) table(ratios);
  console.log(`results: ${writeResults('mla-decode-cuda', dev.name, {
    bench: 'mla_decode_cuda', date: new Date().toISOString(), device: dev, copyBandwidth: bw,
    model: { flops: 'sum_i h_q*s_q*(2*576*s_k_i + 2*512*s_k_i)', bytes: 'sum_i s_k_i*bytesPerToken + q + out', roofline: 'D2D copy bandwidth' },
    targets: { memoryBoundPctCopyBw: 93, hq128TflopS: 450, fp8OverBf16: 1.8 }, rows, ratios,
  })}`);
}
