/**
 * GPU benchmark of the CUDA absorbed MLA decode (`npm run bench -- mla_decode_cuda`).
 *
 * Shapes (issue #6): b = 128, mean s_k ∈ {1024, 4096, 16384} with varlen rows (s_k_i spread
 * evenly over [0.5, 1.5] × the mean), h_q ∈ {16, 64, 128}, s_q ∈ {1, 2}, bf16 and fp8 caches.
 * FlashMLA's model:
 *   FLOPs = Σ_i h_q·s_q·(2·576·s_k_i + 2·s_k_i·512)
 *   bytes = Σ_i s_k_i·bytesPerToken + q + out       (the cache, q and o once)
 * Roofline: device-to-device copy bandwidth measured in the same run. Kernel-only times
 * (CUDA events, inputs resident on the device).
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


export async function benchMlaDecodeCuda(opts: { quick?: boolean } = {}): Promise<void> {
  const i = await info();
  if (!i.cuda.usable) {
    console.log(`mla_decode_cuda: skipped — CUDA is not usable here: ${i.cuda.reason}`);
    return;
  }
  const dev = i.cuda.devices[0];
  const bw = await cudaCopyBandwidth();
  console.log(`mla_decode_cuda on ${dev.name} (sm_${dev.computeCapability.replace('.', '')}); D2D copy ${(bw / 1e12).toFixed(2)} TB/s`);
  const b = opts.quick ? 16 : 128;
  const rows: Record<string, string | number>[] = [];
  for (const dtype of ['bf16', 'fp8'] as const) {
    for (const mean of opts.quick ? [1024] : [1024, 4096, 16384]) {
      const lens = Array.from({ length: b }, (_, k) => Math.max(1, Math.round(mean * (0.5 + k / Math.max(1, b - 1)))));
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
      const slotsAll = Int32Array.from({ length: total * PAGE }, (_, t) => t);
      for (let s0 = 0; s0 < slotsAll.length; s0 += chunk) {
        const n = Math.min(chunk, slotsAll.length - s0);
        await cache.append(0, Tensor.from(randomF32(n * D_C, s0), [n, D_C]), Tensor.from(randomF32(n * D_R, s0 + 7), [n, D_R]),
          Tensor.from(slotsAll.slice(s0, s0 + n)));
      }
      const sumSk = lens.reduce((a, x) => a + x, 0);
      for (const sQ of [1, 2]) {
        for (const hQ of opts.quick ? [16, 128] : [16, 64, 128]) {
          const q = Tensor.from(randomF32(b * sQ * hQ * (D_C + D_R), hQ), [b, sQ, hQ, D_C + D_R]);
          const r = await binding().benchMlaDecodeCuda(q.raw('q'), cache.raw(), 0, Tensor.from(bt, [b, maxBlocks]).raw('blockTable'),
            Tensor.from(Int32Array.from(lens)).raw('seqlens'), 0.07, 0, opts.quick ? 5 : 20);
          const s = r.ms / 1e3;
          const flops = hQ * sQ * (2 * 576 * sumSk + 2 * 512 * sumSk);
          const bytes = sumSk * cache.bytesPerToken + q.nbytes + b * sQ * hQ * D_C * 4;
          rows.push({
            cache: dtype, b, 'mean s_k': mean, s_q: sQ, h_q: hQ, kernel: r.kernel, items: r.items, us: r.ms * 1e3,
            'GB/s': bytes / s / 1e9, 'TFLOP/s': flops / s / 1e12, '%copy bw': (100 * bytes) / s / bw,
            'tok/s': b * sQ / s,
          });
        }
      }
      cache.dispose();
    }
  }
  table(rows);
  console.log(`results: ${writeResults('mla-decode-cuda', dev.name, {
    bench: 'mla_decode_cuda', date: new Date().toISOString(), device: dev, copyBandwidth: bw,
    model: { flops: 'sum_i h_q*s_q*(2*576*s_k_i + 2*512*s_k_i)', bytes: 'sum_i s_k_i*bytesPerToken + q + out', roofline: 'D2D copy bandwidth' }, rows,
  })}`);
}
