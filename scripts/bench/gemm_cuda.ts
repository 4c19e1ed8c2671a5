/**
 * GPU gemm (`npm run bench -- gemm_cuda [--quick]`): y[M, N] = x[M, K] · W[N, K]ᵀ with bf16 W at
 * DeepSeek-V2 / V2-Lite weight shapes. Kernel-only times: x and W resident on the device, calls
 * captured in a CUDA graph and cycling through copies of W (≥ 256 MiB together, so L2 is
 * cold and W streams from DRAM as it does in a model) — see ops::gemm_cuda_bench.
 *
 * Model (per call):
 *   FLOPs = 2·M·N·K
 *   bytes = N·K·2 (W)  +  M·K·4 (x)  +  M·N·4 (y)   — the useful traffic; split-K partials
 *           (≤ 1/8 of W's bytes by construction, gemm.cu) are overhead, not counted.
 * Decode (M = 1, 8, 64): weight streaming; the figure is GB/s as % of the device-to-device copy
 *   bandwidth measured in this run (read + write counted). Target ≥ 85% at large N·K.
 * Prefill (M = 1024, 4096): TFLOP/s as % of the H100's dense bf16 tensor peak.
 */
import { Tensor } from '../../lib/tensor';
import { randomF32, table, writeResults } from './common';

/** H100 SXM5 dense (no sparsity) bf16 tensor-core peak, TFLOP/s (NVIDIA datasheet, 1980 with sparsity). */
const H100_BF16_DENSE_TFLOPS = 989;

interface Shape {
  name: string; // which projection this is
  n: number;
  k: number;
}

// From ../shared/configs (DeepSeek-V2: hidden 5120, 128 heads, q_lora 1536, kv_lora 512,
// 2 shared experts × 1536, dense MLP 12288, vocab 102400; V2-Lite: hidden 2048, 16 heads,
// dense MLP 10944).
const DECODE: Shape[] = [
  { name: 'v2 q_b_proj', n: 128 * 192, k: 1536 },
  { name: 'v2 kv_b_proj', n: 128 * 256, k: 512 },
  { name: 'v2 o_proj', n: 5120, k: 128 * 128 },
  { name: 'v2 shared gate_up', n: 2 * 3072, k: 5120 },
  { name: 'v2 mlp down_proj', n: 5120, k: 12288 },
  { name: 'v2 lm_head', n: 102400, k: 5120 },
  { name: 'v2-lite q_proj', n: 16 * 192, k: 2048 },
  { name: 'v2-lite o_proj', n: 2048, k: 16 * 128 },
  { name: 'v2-lite mlp up_proj', n: 10944, k: 2048 },
  { name: 'v2-lite lm_head', n: 102400, k: 2048 },
];
const PREFILL: Shape[] = [
  { name: 'v2 q_b_proj', n: 128 * 192, k: 1536 },
  { name: 'v2 o_proj', n: 5120, k: 128 * 128 },
  { name: 'v2 mlp up_proj', n: 12288, k: 5120 },
  { name: 'v2 mlp down_proj', n: 5120, k: 12288 },
  { name: 'v2-lite q_proj', n: 16 * 192, k: 2048 },
];

/** Random finite bf16 weights (|w| in [2^-7, 2^-6), random signs), made as bits: no f32 copy. */
function randomBf16(n: number, k: number, seed: number): Tensor {
  const a = new Uint16Array(n * k);
  let s = seed >>> 0;
  for (let i = 0; i < a.length; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = ((s >>> 16) & 0x807f) | 0x3c00;
  }
  return Tensor.from(a, [n, k], 'bf16');
}

export async function benchGemmCuda(opts: { quick?: boolean } = {}): Promise<void> {
  const { info } = await import('../../lib/info');
  const { cudaCopyBandwidth } = await import('../../lib/bench');
  const { binding } = await import('../../lib/native');
  const i = await info();
  if (!i.cuda.usable) {
    console.log(`gemm_cuda: skipped — CUDA is not usable here: ${i.cuda.reason}`);
    return;
  }
  const dev = i.cuda.devices[0];
  const bw = await cudaCopyBandwidth();
  console.log(`gemm_cuda on ${dev.name}; D2D copy ${(bw / 1e12).toFixed(2)} TB/s; bf16 dense peak (H100 SXM) ${H100_BF16_DENSE_TFLOPS} TFLOP/s`);
  const rows: Record<string, string | number>[] = [];
  const run = async (phase: string, s: Shape, ms: number[], iters: number) => {
    const w = randomBf16(s.n, s.k, s.n + s.k);
    for (const m of ms) {
      const x = Tensor.from(randomF32(m * s.k, m, 0.5), [m, s.k]);
      const r = await binding().benchGemmCuda(x.raw('x'), w.raw('weight'), iters);
      const t = r.ms / 1e3;
      const bytes = s.n * s.k * 2 + m * s.k * 4 + m * s.n * 4;
      const flops = 2 * m * s.n * s.k;
      rows.push({
        phase, shape: s.name, M: m, N: s.n, K: s.k, kernel: r.kernel, us: r.ms * 1e3,
        'GB/s': bytes / t / 1e9, '%copy bw': (100 * bytes) / t / bw,
        'TFLOP/s': flops / t / 1e12, '%bf16 peak': (100 * flops) / t / 1e12 / H100_BF16_DENSE_TFLOPS,
      });
      x.dispose();
    }
    w.dispose();
  };
  for (const s of opts.quick ? DECODE.slice(2, 3) : DECODE) await run('decode', s, opts.quick ? [1, 64] : [1, 8, 64], opts.quick ? 10 : 50);
  for (const s of opts.quick ? PREFILL.slice(2, 3) : PREFILL) await run('prefill', s, opts.quick ? [1024] : [1024, 4096], opts.quick ? 3 : 10);
  table(rows);
  const file = writeResults('gemm-cuda', dev.name, {
    bench: 'gemm_cuda', date: new Date().toISOString(), device: dev, copyBandwidth: bw,
    model: {
      flops: '2*M*N*K', bytes: 'N*K*2 + M*K*4 + M*N*4', roofline: 'D2D copy bandwidth (read+write) measured in the same run',
      peak: `${H100_BF16_DENSE_TFLOPS} TFLOP/s dense bf16 (H100 SXM datasheet)`,
      timing: 'kernel-only, CUDA graph of iters calls cycling through >= 256 MiB of W copies (cold L2)',
    },
    rows,
  });
  console.log(`results: ${file}`);
}
