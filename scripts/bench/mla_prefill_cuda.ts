/**
 * GPU benchmark of the CUDA MLA prefill (`npm run bench -- mla_prefill_cuda`).
 *
 * Shapes (issue #6): DeepSeek-V2 dims (dC 512, dR 64, dNope 128, dV 128; d_qk = 192), h = 128,
 * bf16 cache and kv_b, prompts of 1k and 4k tokens, batch 1 and 4 (no cached prefix), plus one
 * chunked-prefill row (1k new tokens after a 3k cached prefix).
 * FLOP model (multiply-adds × 2; the causal mask halves the square):
 *   attention = 2·h·(d_qk + d_v)·Σ_i Σ_{j<n_q,i} (keys seen by query j) = 2·h·320·Σ_i (n_q,i·prefix_i + n_q,i·(n_q,i + 1)/2)
 *   expansion = 2·h·(d_nope + d_v)·d_c·Σ_i s_k,i                       (K_nope, V = c_kv · kv_bᵀ)
 * Reported: the whole op (gather + expansion + attention) and the attention kernels alone,
 * kernel-only (CUDA events, inputs resident on the device); "%gemm" compares the attention
 * rate with a dense [8192², bf16 weights] cuda::gemm timed in the same run.
 */
import { info } from '../../lib/info';
import { KvCache } from '../../lib/kv-cache';
import * as ops from '../../lib/ops';
import { benchMlaPrefillCuda as benchOp } from '../../lib/ops/mla';
import { Tensor } from '../../lib/tensor';
import { randomF32, table, writeResults } from './common';

const D_C = 512;
const D_R = 64;
const D_NOPE = 128;
const D_V = 128;
const H = 128;
const PAGE = 64;

/** n deterministic values in ±scale: a 4M-value LCG block repeated (fast for the GB-sized q). */
function bigRandom(n: number, seed: number, scale: number): Float32Array {
  const a = new Float32Array(n);
  const block = randomF32(Math.min(n, 1 << 22), seed, scale);
  a.set(block);
  for (let o = block.length; o < n; o *= 2) a.copyWithin(o, 0, Math.min(o, n - o));
  return a;
}

interface Shape { label: string; prefix: number; nq: number; b: number }

export async function benchMlaPrefillCuda(opts: { quick?: boolean } = {}): Promise<void> {
  const i = await info();
  if (!i.cuda.usable) {
    console.log(`mla_prefill_cuda: skipped — CUDA is not usable here: ${i.cuda.reason}`);
    return;
  }
  const dev = i.cuda.devices[0];
  console.log(`mla_prefill_cuda on ${dev.name} (sm_${dev.computeCapability.replace('.', '')}), V2 dims, h = ${H}`);
  const shapes: Shape[] = opts.quick
    ? [{ label: '1k', prefix: 0, nq: 1024, b: 1 }]
    : [
      { label: '1k', prefix: 0, nq: 1024, b: 1 },
      { label: '1k', prefix: 0, nq: 1024, b: 4 },
      { label: '4k', prefix: 0, nq: 4096, b: 1 },
      { label: '4k', prefix: 0, nq: 4096, b: 4 },
      { label: '3k+1k', prefix: 3072, nq: 1024, b: 1 },
    ];
  const iters = opts.quick ? 3 : 10;
  const gemmSize = opts.quick ? 4096 : 8192;
  const kvB = await ops.cast(Tensor.from(randomF32(H * (D_NOPE + D_V) * D_C, 11, 0.08), [H * (D_NOPE + D_V), D_C]), 'bf16');
  const scale = 1.6 / Math.sqrt(D_NOPE + D_R);
  let gemmTflops = 0;
  let gemmKernel = '';
  const rows: Record<string, string | number>[] = [];
  for (const s of shapes) {
    const sK = s.prefix + s.nq;
    const perSeq = Math.ceil(sK / PAGE);
    const total = perSeq * s.b;
    const cache = await KvCache.create({ layers: 1, pages: total, dC: D_C, dR: D_R, dtype: 'bf16', device: 'cuda' });
    const pages = cache.allocPages(total);
    const bt = new Int32Array(s.b * perSeq);
    for (let k = 0; k < bt.length; k++) bt[k] = pages[k];
    const chunk = 65536;
    for (let s0 = 0; s0 < total * PAGE; s0 += chunk) { // every slot of every page (values past a sequence's end are unread)
      const n = Math.min(chunk, total * PAGE - s0);
      await cache.append(0, Tensor.from(randomF32(n * D_C, s0 + 1), [n, D_C]), Tensor.from(randomF32(n * D_R, s0 + 7), [n, D_R]),
        Tensor.from(Int32Array.from({ length: n }, (_, t) => s0 + t)));
    }
    const T = s.b * s.nq;
    const q = Tensor.from(bigRandom(T * H * (D_NOPE + D_R), 3, 1.7), [T, H, D_NOPE + D_R]);
    const cu = Int32Array.from({ length: s.b + 1 }, (_, k) => k * s.nq);
    const r = await benchOp(q, cache, 0, Tensor.from(bt, [s.b, perSeq]), Tensor.from(new Int32Array(s.b).fill(sK)),
      Tensor.from(cu), kvB, { scale, dNope: D_NOPE, dV: D_V, iters, gemmSize: rows.length === 0 ? gemmSize : 0 });
    if (rows.length === 0) {
      gemmTflops = (2 * gemmSize ** 3) / (r.gemmMs / 1e3) / 1e12;
      gemmKernel = r.gemmKernel;
      console.log(`dense gemm ${gemmSize}³ (bf16 weights, ${gemmKernel}): ${gemmTflops.toFixed(1)} TFLOP/s`);
    }
    const attnFlops = 2 * H * (D_NOPE + D_R + D_V) * s.b * (s.nq * s.prefix + (s.nq * (s.nq + 1)) / 2);
    const expandFlops = 2 * H * (D_NOPE + D_V) * D_C * s.b * sK;
    const attnTflops = attnFlops / (r.attendMs / 1e3) / 1e12;
    rows.push({
      prompt: s.label, b: s.b, kernel: r.kernel, 'op ms': r.ms, 'attn ms': r.attendMs,
      'attn TFLOP/s': attnTflops, '%gemm': (100 * attnTflops) / gemmTflops,
      'op TFLOP/s': (attnFlops + expandFlops) / (r.ms / 1e3) / 1e12, 'tok/s': T / (r.ms / 1e3),
    });
    cache.dispose();
  }
  table(rows);
  console.log(`results: ${writeResults('mla-prefill-cuda', dev.name, {
    bench: 'mla_prefill_cuda', date: new Date().toISOString(), device: dev, denseGemm: { size: gemmSize, kernel: gemmKernel, tflops: gemmTflops },
    model: {
      attention: 'sum_i 2*h*(d_qk + d_v)*(n_q*prefix + n_q*(n_q+1)/2), d_qk = 192, d_v = 128',
      expansion: 'sum_i 2*h*(d_nope + d_v)*d_c*s_k', roofline: 'dense bf16-weight cuda::gemm of the same run',
    },
    rows,
  })}`);
}
