/**
 * CPU benchmarks of the DeepSeek-V2 attention-side ops at V2 dims (dC = 512, dR = 64):
 *
 * mla_decode — absorbed decode over the paged latent cache, s_q = 1.
 *   FLOPs = b·h_q·s_q·(2·576·s_k + 2·512·s_k)        (FlashMLA's formula)
 *   bytes = b·s_k·bytesPerToken + q + out             (the cache once, q and o once)
 * kv_append — new tokens written into the cache (fp8: quantized in the same pass).
 *   bytes = T·(dC + dR)·4 (f32 in) + T·bytesPerToken (out)
 * Roofline: copy bandwidth measured in the same run. With h_q = 128 the CPU decode is
 * compute-bound (~1 FLOP per 2 bytes of bf16 cache per head), so GFLOP/s is the figure to read
 * there; at h_q = 16 the cache stream matters more.
 */
import { KvCache } from '../../lib/kv-cache';
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import { machine, randomF32, table, time, writeResults, type Machine } from './common';

const D_C = 512;
const D_R = 64;
const PAGE = 64;


/** A cache holding b sequences of s_k tokens each, pages in shuffled order. */
async function filledCache(b: number, sK: number, dtype: 'bf16' | 'fp8') {
  const perSeq = Math.ceil(sK / PAGE);
  const cache = await KvCache.create({ layers: 1, pages: b * perSeq, dC: D_C, dR: D_R, dtype });
  const pages = cache.allocPages(b * perSeq);
  for (let i = pages.length - 1; i > 0; i--) {
    const j = (i * 7919) % (i + 1);
    [pages[i], pages[j]] = [pages[j], pages[i]];
  }
  const blockTable = new Int32Array(b * perSeq);
  blockTable.set(pages);
  const chunk = 4096;
  const all = new Int32Array(b * sK);
  for (let i = 0; i < b; i++) for (let t = 0; t < sK; t++) all[i * sK + t] = blockTable[i * perSeq + Math.floor(t / PAGE)] * PAGE + (t % PAGE);
  for (let o = 0; o < all.length; o += chunk) {
    const n = Math.min(chunk, all.length - o);
    await cache.append(0, Tensor.from(randomF32(n * D_C, o), [n, D_C]), Tensor.from(randomF32(n * D_R, o + 1), [n, D_R]),
      Tensor.from(all.slice(o, o + n)));
  }
  return { cache, blockTable: Tensor.from(blockTable, [b, perSeq]), seqlens: Tensor.from(new Int32Array(b).fill(sK)) };
}

async function benchDecode(m: Machine, quick: boolean) {
  const rows: Record<string, string | number>[] = [];
  const shapes = quick ? [{ b: 1, sK: 1024 }] : [{ b: 1, sK: 1024 }, { b: 1, sK: 4096 }, { b: 4, sK: 4096 }, { b: 1, sK: 8192 }];
  for (const { b, sK } of shapes) {
    for (const dtype of ['bf16', 'fp8'] as const) {
      const { cache, blockTable, seqlens } = await filledCache(b, sK, dtype);
      for (const hQ of [16, 128]) {
        const q = Tensor.from(randomF32(b * hQ * (D_C + D_R), hQ), [b, 1, hQ, D_C + D_R]);
        const t = await time(() => ops.mlaDecode(q, cache, 0, blockTable, seqlens, { scale: 0.07 }), quick ? 0.2 : 0.5, 3);
        const flops = b * hQ * (2 * 576 * sK + 2 * 512 * sK);
        const bytes = b * sK * cache.bytesPerToken + q.nbytes + b * hQ * D_C * 4;
        rows.push({
          op: 'mla_decode', cache: dtype, b, s_k: sK, h_q: hQ, us: t.median * 1e6,
          'GB/s': bytes / t.median / 1e9, 'GFLOP/s': flops / t.median / 1e9, '%bw': (100 * bytes) / t.median / m.copyBandwidth,
          'tok/s': b / t.median,
        });
      }
      cache.dispose();
    }
  }
  return rows;
}

async function benchAppend(m: Machine, quick: boolean) {
  const rows: Record<string, string | number>[] = [];
  for (const dtype of ['bf16', 'fp8'] as const) {
    for (const T of quick ? [64] : [1, 64, 4096]) {
      const cache = await KvCache.create({ layers: 1, pages: Math.ceil(T / PAGE), dC: D_C, dR: D_R, dtype });
      const pages = cache.allocPages(cache.pages);
      const slots = Tensor.from(Int32Array.from({ length: T }, (_, i) => pages[Math.floor(i / PAGE)] * PAGE + (i % PAGE)));
      const cKv = Tensor.from(randomF32(T * D_C, 3), [T, D_C]);
      const kPe = Tensor.from(randomF32(T * D_R, 4), [T, D_R]);
      const t = await time(() => cache.append(0, cKv, kPe, slots), quick ? 0.2 : 0.4);
      const bytes = T * (D_C + D_R) * 4 + T * cache.bytesPerToken;
      rows.push({ op: 'kv_append', cache: dtype, T, us: t.median * 1e6, 'GB/s': bytes / t.median / 1e9,
        '%bw': (100 * bytes) / t.median / m.copyBandwidth, 'tok/s': T / t.median });
      cache.dispose();
    }
  }
  return rows;
}

export async function benchMlaDecode(opts: { quick?: boolean } = {}): Promise<void> {
  const m = await machine();
  console.log(`mla_decode on ${m.cpu}, ${m.threads} threads; copy bandwidth ${(m.copyBandwidth / 1e9).toFixed(1)} GB/s`);
  const rows = await benchDecode(m, !!opts.quick);
  table(rows);
  console.log(`results: ${writeResults('mla-decode-cpu', m.cpu, {
    bench: 'mla_decode', date: new Date().toISOString(), machine: m,
    model: { flops: 'b*h_q*s_q*(2*576*s_k + 2*512*s_k)', bytes: 'b*s_k*bytesPerToken + q + out', roofline: 'copy bandwidth' }, rows,
  })}`);
}

export async function benchKvAppend(opts: { quick?: boolean } = {}): Promise<void> {
  const m = await machine();
  console.log(`kv_append on ${m.cpu}, ${m.threads} threads; copy bandwidth ${(m.copyBandwidth / 1e9).toFixed(1)} GB/s`);
  const rows = await benchAppend(m, !!opts.quick);
  table(rows);
  console.log(`results: ${writeResults('kv-append-cpu', m.cpu, {
    bench: 'kv_append', date: new Date().toISOString(), machine: m,
    model: { bytes: 'T*(dC+dR)*4 in + T*bytesPerToken out', roofline: 'copy bandwidth' }, rows,
  })}`);
}
