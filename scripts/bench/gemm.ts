/**
 * CPU gemm benchmark: y[M, N] = x[M, K] · W[N, K]ᵀ at DeepSeek-V2 projection shapes.
 *
 * Model (per call):
 *   FLOPs = 2·M·N·K
 *   bytes = N·K·sizeof(W)  +  M·K·4 (x)  +  M·N·4 (y)      — each touched once
 * Roofline: the copy bandwidth measured in the same run (memcpy, read+write counted).
 * At decode sizes (small M) the weight stream dominates and the target is ≥ 70% of that
 * bandwidth; as M grows the kernel turns compute-bound (arithmetic intensity M FLOP/byte
 * for bf16 weights) and % of bandwidth falls by design.
 */
import { Tensor } from '../../lib/tensor';
import * as ops from '../../lib/ops';
import { machine, randomF32, table, time, writeResults } from './common';

interface Shape {
  name: string; // which projection this is
  n: number;
  k: number;
}

// Weight shapes from ../shared/configs: each ≥ 40 MB in bf16 so it streams from DRAM, not cache.
const SHAPES: Shape[] = [
  { name: 'v2-lite mlp.up_proj', n: 10944, k: 2048 },
  { name: 'v2 q_b_proj', n: 128 * 192, k: 1536 },
  { name: 'v2 o_proj', n: 5120, k: 128 * 128 },
];
const MS = [1, 2, 4, 8, 16, 64];


export async function benchGemm(opts: { quick?: boolean } = {}): Promise<void> {
  const m = await machine();
  console.log(`gemm on ${m.cpu}, ${m.threads} threads, ${m.isa}; copy bandwidth ${(m.copyBandwidth / 1e9).toFixed(1)} GB/s`);
  const rows: Record<string, string | number>[] = [];
  const shapes = opts.quick ? SHAPES.slice(0, 1) : SHAPES;
  for (const s of shapes) {
    for (const dtype of ['bf16', 'f32'] as const) {
      const w32 = Tensor.from(randomF32(s.n * s.k, s.n, 0.05), [s.n, s.k]);
      const w = dtype === 'f32' ? w32 : await ops.cast(w32, 'bf16');
      if (dtype !== 'f32') w32.dispose();
      for (const mm of dtype === 'f32' ? [1, 16] : MS) {
        const x = Tensor.from(randomF32(mm * s.k, mm, 0.05), [mm, s.k]);
        const t = await time(() => ops.gemm(x, w), opts.quick ? 0.2 : 0.6);
        const bytes = s.n * s.k * (dtype === 'f32' ? 4 : 2) + mm * s.k * 4 + mm * s.n * 4;
        const flops = 2 * mm * s.n * s.k;
        const gbs = bytes / t.median / 1e9;
        rows.push({
          shape: s.name, dtype, M: mm, N: s.n, K: s.k,
          ms: t.median * 1e3, 'GB/s': gbs, 'GFLOP/s': flops / t.median / 1e9,
          '%bw': (100 * bytes) / t.median / m.copyBandwidth,
        });
      }
      w.dispose();
    }
  }
  table(rows);
  const file = writeResults('gemm-cpu', m.cpu, {
    bench: 'gemm', date: new Date().toISOString(), machine: m,
    model: { flops: '2*M*N*K', bytes: 'N*K*sizeof(W) + M*K*4 + M*N*4', roofline: 'copy bandwidth (read+write) measured in the same run' },
    rows,
  });
  console.log(`results: ${file}`);
}

// The GPU gemm benchmark lives in gemm_cuda.ts.
