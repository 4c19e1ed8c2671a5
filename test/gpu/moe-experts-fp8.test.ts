/**
 * The CUDA MoE experts with FP8 block-scaled routed experts (e4m3 codes + f32 scales per
 * 128×128 block of the stacked [2I, H] / [H, I] matrices, see MoeExpertsParams) against the CPU
 * op, which test/moe/experts-fp8.test.ts checks against a float64 reference from the definition.
 * Cases: decode (t = 1, 7) and batches up to 513 tokens, V2-Lite- and V2-like expert counts,
 * H and I not multiples of 128 (a 128-row block of gateUp holding gate and up rows: 2I = 176,
 * 400), scales varying per block and expert, all tokens on one expert (a segment of many
 * 16-row tiles), -1 slots, bf16 shared experts beside the fp8 routed ones, and H or I not a
 * multiple of 8 (the SIMT kernels); deterministic across runs (bit-identical). H = 648 and
 * I = 584 (K > 512): each of the skinny kernel's 4 warps runs a second 128-wide k block (c += 16
 * chunks), in both GEMMs, with a partial last block. codes 'subnormal': every code has exponent 0
 * (±0 and ±m·2^-9), so a decode that flushed e4m3 subnormals (an FTZ multiply) would give y = 0
 * there; with all codes drawn, subnormals are too small a part of each dot product for the
 * tolerance to see that.
 * Kernels exercised (moe_experts_kernel_name): H, I multiples of 8 → routed=mma_skinny_fp8 at
 * every batch size (no tiled fp8 kernel); otherwise routed=simt_fp8.
 * Tolerances:
 * - simt_fp8: each weight is e4m3 · scale rounded once to f32 on both sides (the same f32
 *   product), then f32 dot products in different orders: relative 1e-4 of the output row's
 *   magnitude + 1e-5, as the bf16/f32 SIMT comparison in moe-experts.test.ts.
 * - mma_skinny_fp8: the kernel decodes each code exactly to bf16 (every e4m3 value is a bf16
 *   value) and multiplies the f32 partial sum of each 128-wide k block by the block's scale;
 *   it never forms e4m3 · scale in bf16 (that product has up to 4 + 24 significant bits and is
 *   not always bf16-exact: rounding it would add a relative 2^-9 per weight). So, as for the
 *   bf16 tensor-core path: x is rounded to bf16 once (the CPU op gets the same rounded x) and h
 *   = silu(g)·u is rounded to bf16 before the down GEMM (not emulated), a relative ≤ 2^-8 per
 *   h_j, random in sign: 2^-7 of the row's magnitude + 1e-5 (moe-experts.test.ts's argument).
 * Skipped with the reason in the title where no CUDA device is usable (CI).
 */
import * as ops from '../../lib/ops';
import { binding } from '../../lib/native';
import { Tensor } from '../../lib/tensor';
import { Rng } from '../reference/rng';
import { gpuDescribe, gpuTitle } from './cuda';
import { expectCudaMatchesCpu } from './util';

interface Case {
  t: number; e: number; k: number; h: number; i: number; shared: number; routing: 'router' | 'one' | 'holes';
  codes?: 'subnormal';
}

const CASES: Case[] = [
  { t: 1, e: 64, k: 6, h: 64, i: 48, shared: 2, routing: 'router' },
  { t: 7, e: 16, k: 4, h: 136, i: 88, shared: 1, routing: 'router' },
  { t: 1, e: 160, k: 6, h: 264, i: 200, shared: 0, routing: 'router' },
  { t: 64, e: 160, k: 6, h: 264, i: 200, shared: 2, routing: 'router' },
  { t: 513, e: 8, k: 2, h: 128, i: 136, shared: 1, routing: 'router' },
  { t: 300, e: 8, k: 2, h: 96, i: 40, shared: 1, routing: 'one' },
  { t: 17, e: 8, k: 3, h: 40, i: 24, shared: 1, routing: 'holes' },
  { t: 5, e: 4, k: 2, h: 648, i: 584, shared: 0, routing: 'router' },
  { t: 3, e: 4, k: 2, h: 136, i: 88, shared: 0, routing: 'router', codes: 'subnormal' },
  // the SIMT fallback: H % 8 != 0, I % 8 != 0
  { t: 9, e: 8, k: 2, h: 36, i: 24, shared: 1, routing: 'router' },
  { t: 9, e: 8, k: 2, h: 40, i: 20, shared: 0, routing: 'holes' },
];

const skinny = (c: Case) => c.h % 8 === 0 && c.i % 8 === 0;

/** moe_experts_kernel_name by moe.cu's dispatch rule (device uploads are 16-byte aligned). */
function expectedKernel(c: Case): string {
  const routed = skinny(c) ? 'mma_skinny_fp8' : 'simt_fp8';
  const sharedTc = c.h % 8 === 0 && (c.i * c.shared) % 8 === 0; // shared experts stay bf16
  const shared = !c.shared ? 'none' : !sharedTc ? 'simt' : c.t <= 64 ? 'mma_skinny' : 'mma_tiled';
  return `routed=${routed} shared=${shared}`;
}

/** e4m3 codes (no NaN: 0x7f / 0xff excluded; zeros, subnormals and 448 included; 'subnormal':
 * exponent 0 only) and f32 scales per 128×128 block, around 1/(8·sqrt(fanIn)) times 2^[-2, 2]
 * (times 2^10 for subnormal codes, |v| ≤ 7·2^-9: y ∝ scale³ is then of order 1, not 1e-5). */
function fp8(rng: Rng, e: number, rows: number, cols: number, only?: 'subnormal'): { codes: Tensor; scale: Tensor } {
  const codes = new Uint8Array(e * rows * cols);
  for (let q = 0; q < codes.length; q++) {
    let c = rng.int(0, 256);
    if ((c & 0x7f) === 0x7f) c ^= 0x01; // NaN code → ±448 (0x7e / 0xfe)
    if ((c & 0x78) >= 0x60 && rng.next() < 0.9) c &= 0xbf; // exponent ≥ 12 (|v| ≥ 2^5) mostly → exponent - 8
    if (only === 'subnormal') c &= 0x87; // keep sign and mantissa: ±m·2^-9
    codes[q] = c;
  }
  const br = Math.ceil(rows / 128);
  const bc = Math.ceil(cols / 128);
  const boost = only === 'subnormal' ? 2 ** 10 : 1;
  const s = Float32Array.from({ length: e * br * bc }, () => (boost * 2 ** rng.uniform(-2, 2)) / (8 * Math.sqrt(cols)));
  return { codes: new Tensor('fp8_e4m3', [e, rows, cols], codes), scale: new Tensor('f32', [e, br, bc], s) };
}

gpuDescribe(gpuTitle('CUDA moe_experts with fp8 block-scaled experts vs CPU'), () => {
  test.each(CASES.map((c) => [JSON.stringify(c), c] as const))('dispatch %s', async (_n, c) => {
    const r = await binding().benchMoeExpertsCuda(
      { t: c.t, hidden: c.h, inter: c.i, nExperts: c.e, topK: c.k, interShared: c.i * c.shared, seed: 1, fp8: true }, 1);
    expect(r.kernel).toBe(expectedKernel(c));
  });

  test.each(CASES.map((c) => [JSON.stringify(c), c] as const))('%s', async (_n, c) => {
    const rng = new Rng(`moe fp8 cuda ${JSON.stringify(c)}`);
    const rand = (n: number, s: number) => Float32Array.from({ length: n }, () => rng.normal() * s);
    const x = Tensor.from(rand(c.t * c.h, 1), [c.t, c.h]);
    let ids: Tensor;
    let weights: Tensor;
    if (c.routing === 'router') {
      const r = await ops.moeRoute(Tensor.from(rand(c.t * c.e, 2), [c.t, c.e]), { topK: c.k, method: 'greedy' });
      ids = r.ids;
      weights = r.weights;
    } else {
      const idv = Int32Array.from({ length: c.t * c.k }, (_, q) => (c.routing === 'one' ? 3 : q % 4 === 0 ? -1 : (q * 5) % c.e));
      ids = Tensor.from(idv, [c.t, c.k]);
      weights = Tensor.from(rand(c.t * c.k, 0.5), [c.t, c.k]);
    }
    const gu = fp8(rng, c.e, 2 * c.i, c.h, c.codes);
    const dn = fp8(rng, c.e, c.h, c.i, c.codes);
    const experts = { gateUp: gu.codes, down: dn.codes, gateUpScale: gu.scale, downScale: dn.scale };
    const is = c.i * c.shared;
    const bf16 = (a: Float32Array, shape: number[]) => ops.cast(Tensor.from(a, shape), 'bf16');
    const shared = c.shared
      ? { gateUp: await bf16(rand(2 * is * c.h, 1 / Math.sqrt(c.h)), [2 * is, c.h]), down: await bf16(rand(c.h * is, 1 / Math.sqrt(is)), [c.h, is]) }
      : null;
    // Tensor-core parts round x to bf16 once (the routed skinny kernel, and the shared experts
    // when they take a tensor-core kernel): give the CPU op the same x.
    const tc = skinny(c);
    await expectCudaMatchesCpu(x, ids, weights, experts, shared, tc);
  });
});
