/**
 * 8-bit weights on CUDA (issue 16): int8 and fp8_e4m3 codes with one f32 scale per 128 × 128
 * block (the format of `Model.load(dir, { weights })` and `ops.quantizeWeight`).
 *
 * 1. gemm: the CUDA op against a float64 reference of the dequantised weights, w = value(code) ·
 *    scale (exact in float64: ≤ 8 + 24 significant bits), decoded here from the codes and scales
 *    with test/reference (not by the library). Bound per element, a multiple of
 *    S = Σ_k |x_k · w_k| (float64) plus 1e-30 absolute (the split residual clamp of gemm_mma.cuh):
 *    - tensor-core kernels (K % 16 == 0): the block scale multiplies x (one f32 rounding, 2^-24)
 *      before x's bf16 treatment — split hi + lo for M ≤ 32 (2^-16), one rounding above
 *      (2^-8) — and the codes enter the mma exactly; accumulation γ(2K + 16) with u = 2^-23
 *      (mma's f32 adds are not documented to round to nearest; + split-K partial sums), as in
 *      gemm.test.ts;
 *    - SIMT kernels (K % 16 != 0): w = fl32(code · scale) (2^-24) and f32 FMAs, γ_K with u = 2^-24.
 *    NaN positions must match (an fp8 NaN weight keeps a NaN code: its column is NaN for every row).
 * 2. moe_experts with int8 routed experts against the CPU op (test/moe checks that one against
 *    float64): the same kernels and tolerances as the fp8 suite (moe-experts-fp8.test.ts, whose
 *    header derives them), since an int8 code, like an e4m3 one, is an exact bf16 value.
 * 3. The engine: tiny v2 and v2-lite checkpoints loaded with `weights: 'int8' | 'fp8'` on cuda
 *    against the same load on the CPU: logits within model.test.ts's allowance (3% of the row's
 *    largest |logit| + 1e-3: the bf16 roundings of the CUDA path, the 8-bit codes being the same
 *    on both devices), greedy tokens equal while the CPU's top-2 gap is clear.
 * Shapes are small enough for the emulated device as they are (nothing scaled).
 * Skipped with the reason in the title where no CUDA device is usable (CI without the emulator).
 */
import * as path from 'node:path';
import { Model, makeTiny, type Tensor as LibTensor } from '../../lib';
import * as ops from '../../lib/ops';
import { binding } from '../../lib/native';
import { Tensor } from '../../lib/tensor';
import { codeValue, QBLOCK, type QuantTarget } from '../reference/quant';
import { Rng } from '../reference/rng';
import { randomPrompt, rmDir, tmpDir } from '../model/util';
import { gpuDescribe, gpuTitle } from './cuda';
import { expectCudaMatchesCpu } from './util';

const gamma = (n: number, u: number) => (n * u) / (1 - n * u);

/** gemm.cu's dispatch rule for 8-bit W (device uploads are 16-byte aligned). */
function expectedKernel(m: number, k: number, to: QuantTarget): string {
  if (k > 0 && k % 16 === 0) return `${m <= 16 ? 'tc_m16x' : m <= 32 ? 'tc_m32x' : m <= 64 ? 'tc_m64' : 'tc_m128'}_${to === 'i8' ? 'i8' : 'fp8'}`;
  return m <= 8 ? 'gemv' : 'tiled';
}

/** W [n, k] whose 128 × 128 blocks differ in magnitude by up to 2^±6 (per-block scales matter). */
function blockyWeights(rng: Rng, n: number, k: number): Float32Array {
  const cb = Math.ceil(k / QBLOCK);
  const mag = Float64Array.from({ length: Math.ceil(n / QBLOCK) * cb }, () => 2 ** rng.uniform(-6, 6));
  return Float32Array.from({ length: n * k }, (_, i) => rng.normal() * mag[Math.floor(Math.floor(i / k) / QBLOCK) * cb + Math.floor((i % k) / QBLOCK)]);
}

interface GemmCase { m: number; n: number; k: number; nan?: boolean }
// Every tensor-core tile height (16x, 32x, 64, 128), partial column blocks (N = 129..200: a
// block row of scales that is not full), partial K blocks (K = 272, 400), split-K (M = 5,
// K = 2048: the K splits cross scale blocks), the SIMT kernels (K % 16 = 8), empty M.
const GEMMS: GemmCase[] = [
  { m: 1, n: 200, k: 272 },
  { m: 5, n: 136, k: 2048 },
  { m: 20, n: 130, k: 384 },
  { m: 40, n: 129, k: 256, nan: true },
  { m: 70, n: 150, k: 400 },
  { m: 3, n: 50, k: 200 },
  { m: 12, n: 70, k: 136, nan: true },
  { m: 0, n: 64, k: 128 },
];

async function checkGemm(c: GemmCase, to: QuantTarget): Promise<void> {
  const rng = new Rng(`gemm-quant cuda ${JSON.stringify(c)} ${to}`);
  const w = blockyWeights(rng, c.n, c.k);
  if (c.nan) w[7 * c.k + 3] = NaN; // row 7: an fp8 NaN code (i8: code 0)
  const x = Tensor.from(Float32Array.from({ length: c.m * c.k }, () => rng.normal()), [c.m, c.k]);
  const { codes, scale } = await ops.quantizeWeight(Tensor.from(w, [c.n, c.k]), to);
  if (c.m > 0) {
    const kernel = (await binding().benchGemmCuda(x.raw('x'), codes.raw('weight'), 1, scale.raw('scale'))).kernel;
    expect(kernel).toBe(expectedKernel(c.m, c.k, to));
  }
  const got = (await ops.gemm(x, codes, { scale, device: 'cuda' })).data as Float32Array;
  const again = (await ops.gemm(x, codes, { scale, device: 'cuda' })).data as Float32Array;
  expect(got.length).toBe(c.m * c.n);
  expect(Buffer.from(again.buffer).equals(Buffer.from(got.buffer))).toBe(true); // deterministic
  // The dequantised weights in float64, from the codes and scales.
  const cv = codes.data as Int8Array | Uint8Array;
  const sv = scale.data as Float32Array;
  const cb = Math.ceil(c.k / QBLOCK);
  const wd = Float64Array.from({ length: c.n * c.k }, (_, i) =>
    codeValue(cv[i], to) * sv[Math.floor(Math.floor(i / c.k) / QBLOCK) * cb + Math.floor((i % c.k) / QBLOCK)]);
  const tc = c.k % 16 === 0;
  const xErr = !tc ? 0 : c.m <= 32 ? 2 ** -16 : 2 ** -8;
  const rel = xErr + 2 ** -24 + (tc ? gamma(2 * c.k + 16, 2 ** -23) : gamma(c.k, 2 ** -24));
  const xd = x.data as Float32Array;
  for (let i = 0; i < c.m; i++) {
    for (let j = 0; j < c.n; j++) {
      let y = 0;
      let s = 0;
      for (let t = 0; t < c.k; t++) {
        y += xd[i * c.k + t] * wd[j * c.k + t];
        s += Math.abs(xd[i * c.k + t] * wd[j * c.k + t]);
      }
      const g = got[i * c.n + j];
      if (Number.isNaN(y) || Number.isNaN(g)) {
        if (Number.isNaN(y) !== Number.isNaN(g)) throw new Error(`y[${i}, ${j}]: float64 ${y}, cuda ${g}`);
        continue;
      }
      if (!(Math.abs(y - g) <= rel * s + 1e-30)) throw new Error(`y[${i}, ${j}]: float64 ${y}, cuda ${g}, bound ${rel * s}`);
    }
  }
}

interface MoeCase { t: number; e: number; k: number; h: number; i: number; shared: number }
// Decode and a batch, a second 128-wide k block per warp (H = 648, I = 584), V2-like 160
// experts, and the SIMT fallback (H % 8 != 0).
const MOES: MoeCase[] = [
  { t: 1, e: 16, k: 6, h: 136, i: 88, shared: 1 },
  { t: 33, e: 160, k: 6, h: 264, i: 200, shared: 2 },
  { t: 5, e: 4, k: 2, h: 648, i: 584, shared: 0 },
  { t: 9, e: 8, k: 2, h: 36, i: 24, shared: 1 },
];
const skinny = (c: MoeCase) => c.h % 8 === 0 && c.i % 8 === 0;

/** Random int8 codes (±127, 0 included) and f32 block scales ≈ 1/(127·sqrt(fanIn)) · 2^[-2, 2]. */
function int8Experts(rng: Rng, e: number, rows: number, cols: number): { codes: Tensor; scale: Tensor } {
  const codes = Int8Array.from({ length: e * rows * cols }, () => rng.int(-127, 128));
  const br = Math.ceil(rows / QBLOCK);
  const bc = Math.ceil(cols / QBLOCK);
  const s = Float32Array.from({ length: e * br * bc }, () => 2 ** rng.uniform(-2, 2) / (127 * Math.sqrt(cols)));
  return { codes: new Tensor('i8', [e, rows, cols], codes), scale: new Tensor('f32', [e, br, bc], s) };
}

function allowance(row: Float32Array): number {
  let m = 0;
  for (const v of row) m = Math.max(m, Math.abs(v));
  return 0.03 * m + 1e-3;
}

function expectLogitsClose(cpu: LibTensor, gpu: LibTensor, label: string): void {
  expect(gpu.shape).toEqual(cpu.shape);
  const V = cpu.shape[1];
  const a = cpu.data as Float32Array;
  const b = gpu.data as Float32Array;
  for (let r = 0; r < cpu.shape[0]; r++) {
    const tol = allowance(a.subarray(r * V, (r + 1) * V));
    for (let v = 0; v < V; v++) {
      const d = Math.abs(a[r * V + v] - b[r * V + v]);
      if (!(d <= tol)) throw new Error(`${label}: row ${r}, logit ${v}: cpu ${a[r * V + v]} cuda ${b[r * V + v]} (|diff| ${d} > ${tol})`);
    }
  }
}

function top2Gap(row: Float32Array): number {
  let a = -Infinity;
  let b = -Infinity;
  for (const v of row) {
    if (v > a) [a, b] = [v, a];
    else if (v > b) b = v;
  }
  return a - b;
}

gpuDescribe(gpuTitle('8-bit weights on CUDA'), () => {
  describe.each(['i8', 'fp8_e4m3'] as const)('gemm, %s codes vs float64', (to) => {
    test.each(GEMMS.map((c) => [JSON.stringify(c), c] as const))('%s', async (_n, c) => {
      await checkGemm(c, to);
    });
  });

  describe('moe_experts, int8 routed experts vs the CPU op', () => {
    test.each(MOES.map((c) => [JSON.stringify(c), c] as const))('%s', async (_n, c) => {
      const r = await binding().benchMoeExpertsCuda(
        { t: c.t, hidden: c.h, inter: c.i, nExperts: c.e, topK: c.k, interShared: c.i * c.shared, seed: 1, i8: true }, 1);
      const sharedTc = c.h % 8 === 0 && (c.i * c.shared) % 8 === 0;
      const sharedPath = !c.shared ? 'none' : !sharedTc ? 'simt' : c.t <= 64 ? 'mma_skinny' : 'mma_tiled';
      expect(r.kernel).toBe(`routed=${skinny(c) ? 'mma_skinny_i8' : 'simt_i8'} shared=${sharedPath}`);

      const rng = new Rng(`moe i8 cuda ${JSON.stringify(c)}`);
      const rand = (n: number, s: number) => Float32Array.from({ length: n }, () => rng.normal() * s);
      const x = Tensor.from(rand(c.t * c.h, 1), [c.t, c.h]);
      const { ids, weights } = await ops.moeRoute(Tensor.from(rand(c.t * c.e, 2), [c.t, c.e]), { topK: c.k, method: 'greedy' });
      const gu = int8Experts(rng, c.e, 2 * c.i, c.h);
      const dn = int8Experts(rng, c.e, c.h, c.i);
      const is = c.i * c.shared;
      const bf16 = (a: Float32Array, shape: number[]) => ops.cast(Tensor.from(a, shape), 'bf16');
      const shared = c.shared
        ? { gateUp: await bf16(rand(2 * is * c.h, 1 / Math.sqrt(c.h)), [2 * is, c.h]), down: await bf16(rand(c.h * is, 1 / Math.sqrt(is)), [c.h, is]) }
        : null;
      await expectCudaMatchesCpu(x, ids, weights, { gateUp: gu.codes, down: dn.codes, gateUpScale: gu.scale, downScale: dn.scale }, shared, skinny(c));
    });
  });

  describe.each(['v2', 'v2-lite'] as const)('the engine on %s', (kind) => {
    const root = tmpDir(`gpu-quant-${kind}`);
    const dir = path.join(root, kind);
    const prompt = randomPrompt(`gpu-quant-${kind}`, 19);
    beforeAll(async () => {
      await makeTiny(dir, { kind, seed: 305, dtype: 'bf16' });
    });
    afterAll(() => rmDir(root));

    test.each(['int8', 'fp8'] as const)('weights %s: cuda logits and greedy tokens as the CPU engine', async (weights) => {
      const cpu = await Model.load(dir, { device: 'cpu', weights });
      const gpu = await Model.load(dir, { device: 'cuda', weights });
      const bf16 = await Model.load(dir, { device: 'cuda' });
      try {
        expect(gpu.device).toBe('cuda');
        expect(gpu.memory().weights).toBeLessThan(bf16.memory().weights);
        for (const mode of ['prefill', 'decode'] as const) {
          expectLogitsClose(await cpu.logits(prompt, { mode }), await gpu.logits(prompt, { mode }), `${kind} ${weights} ${mode}`);
        }
        const n = 8;
        const a = await cpu.generate({ tokens: prompt, maxNewTokens: n }).result;
        const b = await gpu.generate({ tokens: prompt, maxNewTokens: n }).result;
        const seq = [...prompt];
        for (let i = 0; i < a.tokens.length; i++) {
          const l = await cpu.logits(seq);
          const V = l.shape[1];
          const last = (l.data as Float32Array).subarray((seq.length - 1) * V);
          if (top2Gap(last) <= 2 * allowance(last)) break;
          expect([i, b.tokens[i]]).toEqual([i, a.tokens[i]]);
          seq.push(a.tokens[i]);
        }
      } finally {
        await cpu.dispose();
        await gpu.dispose();
        await bf16.dispose();
      }
    }, 600_000);
  });
});
