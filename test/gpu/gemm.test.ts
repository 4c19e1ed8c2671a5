/**
 * The CUDA gemm (native/src/cuda/gemm.cu) against the CPU op, which test/ops checks against
 * float64. Each element's bound is a multiple of S = Σ_k |x_k·w_k| (float64 here), the sum of:
 *   - the CPU op's own fp32 accumulation: γ_K·S, γ_n = n·u/(1 − n·u), u = 2^-24 (Higham);
 *   - the GPU's accumulation: γ(2K + 16) with u = 2^-23 on the tensor-core kernels (mma's f32
 *     accumulation is not documented to round to nearest, so one ulp per addition; 2K terms
 *     when x is split hi + lo, + up to 16 split-K partial sums), γ_K with u = 2^-24 on SIMT;
 *   - the x rounding of the tensor-core kernels: 2^-8·S where x is rounded to bf16 (M > 32;
 *     bf16 has 8 significant bits, unit roundoff 2^-8), 2^-16·S where x is split into bf16
 *     hi (toward zero) + lo (M ≤ 32; gemm_mma.cuh), 0 where x is bf16-representable
 *     (cases marked "x bf16") or on the SIMT kernels (x used as f32); the split path also
 *     moves a residual below 2^-126 to ±2^-126 (never 0·inf = NaN against an infinite
 *     weight), ≤ 1.2e-38·Σ|w| absolute, inside the 1e-30 absolute slack.
 * W's dtype conversion is exact (bf16/f16 → f32) on both sides. NaN positions must match.
 * Kernel names are checked against the documented dispatch rule; determinism is bit-exact.
 * Skipped with the reason in the title where no CUDA device is usable (CI).
 * On the emulated device (test:cuda-emu) the decode shapes and the large deterministic ones keep
 * M and K (so the same kernels, split-K included, run) with N cut to ≤ 128 (one column tile of the
 * tensor-core kernels: their splits still fill the SMs); in the main grid
 * M = 300 becomes 136 (still 2 M-tiles of BM 128, 3 of the SIMT kernel's 64, the last partial)
 * and, for M > 32, K = 520 becomes 136 (4¼ K-tiles of 32: still a partial K-tile, K % 8 = 0) and
 * K = 2048 becomes 264 (no split-K there at either K: splits ≤ K / (32·M)); for M ≤ 32 K = 2048
 * becomes 1040 (still over 1024, a partial K-tile, split for M ≤ 16), K = 520 stays (split for M ≤ 8)
 * — "(scaled ...)"; the "x bf16" cases take the same shapes (K = 1040 for M > 32 becomes 264).
 * There the kernel name is read from a benchmark call on W's first 8 rows (the dispatch rule
 * depends on M, K and the dtype only), not on the whole W: the benchmark runs the kernel three
 * more times.
 */
import * as ops from '../../lib/ops';
import { binding } from '../../lib/native';
import { Tensor } from '../../lib/tensor';
import { Rng } from '../reference/rng';
import { EMU_TAG, EMULATED, gpuDescribe, gpuTitle, scaled } from './cuda';

type WType = 'f32' | 'bf16' | 'f16';

/** The dispatch rule of gemm.cu (uploads are cudaMalloc'd, so always 16-byte aligned). */
function expectedKernel(m: number, k: number, dt: WType): string {
  if (dt === 'bf16' && k > 0 && k % 8 === 0) return m <= 16 ? 'tc_m16x' : m <= 32 ? 'tc_m32x' : m <= 64 ? 'tc_m64' : 'tc_m128';
  return m <= 8 ? 'gemv' : 'tiled';
}

const gamma = (n: number, u: number) => (n * u) / (1 - n * u);

function xError(kernel: string, xBf16: boolean): number {
  if (!kernel.startsWith('tc_') || xBf16) return 0;
  return kernel.endsWith('x') ? 2 ** -16 : 2 ** -8;
}

async function makeInputs(m: number, n: number, k: number, dt: WType, xBf16: boolean, seed: string) {
  const rng = new Rng(seed);
  let x = Tensor.from(Float32Array.from({ length: m * k }, () => rng.normal()), [m, k]);
  if (xBf16) x = await ops.cast(await ops.cast(x, 'bf16'), 'f32');
  const w32 = Tensor.from(Float32Array.from({ length: n * k }, () => rng.normal()), [n, k]);
  const w = dt === 'f32' ? w32 : await ops.cast(w32, dt);
  return { x, w };
}

/** W's first min(n, 8) rows: the emulated device reads the kernel name from a benchmark call on these. */
async function firstRows(w: Tensor, dt: WType): Promise<Tensor> {
  const [n, k] = w.shape;
  if (n <= 8) return w;
  const w32 = (dt === 'f32' ? w : await ops.cast(w, 'f32')).data as Float32Array;
  const t = Tensor.from(w32.slice(0, 8 * k), [8, k]);
  return dt === 'f32' ? t : ops.cast(t, dt); // exact: the values are dt values already
}

async function check(x: Tensor, w: Tensor, dt: WType, xBf16: boolean): Promise<string> {
  const [m, k] = x.shape;
  const n = w.shape[0];
  const wBench = EMULATED ? await firstRows(w, dt) : w;
  const kernel = (await binding().benchGemmCuda(x.raw('x'), wBench.raw('weight'), 1)).kernel;
  expect(kernel).toBe(expectedKernel(m, k, dt));
  const want = (await ops.gemm(x, w)).data as Float32Array;
  const got = (await ops.gemm(x, w, { device: 'cuda' })).data as Float32Array;
  expect(got.length).toBe(m * n);
  const xd = x.data as Float32Array;
  const wf = (dt === 'f32' ? w : await ops.cast(w, 'f32')).data as Float32Array;
  const tc = kernel.startsWith('tc_');
  const rel = xError(kernel, xBf16) + gamma(k, 2 ** -24) + (tc ? gamma(2 * k + 16, 2 ** -23) : gamma(k, 2 ** -24));
  for (let i = 0; i < m; i++) {
    for (let j = 0; j < n; j++) {
      const a = want[i * n + j];
      const b = got[i * n + j];
      if (Number.isNaN(a) || Number.isNaN(b)) {
        if (Number.isNaN(a) !== Number.isNaN(b)) throw new Error(`${kernel} y[${i}, ${j}]: cpu ${a}, cuda ${b}`);
        continue;
      }
      let s = 0;
      for (let t = 0; t < k; t++) s += Math.abs(xd[i * k + t] * wf[j * k + t]);
      if (!(Math.abs(a - b) <= rel * s + 1e-30)) throw new Error(`${kernel} y[${i}, ${j}]: cpu ${a}, cuda ${b}, bound ${rel * s}`);
    }
  }
  return kernel;
}

// M over every dispatch boundary; [N, K]: N odd over 3 column tiles with a partial K-tile
// (520 = 16¼ tiles of 32), K odd (the SIMT fallback for bf16), and a longer K that the
// small-M kernels split.
/** The scaled-case tag where the emulated device cuts N. */
const EMULATED_NOTE = (n: number) => (scaled(n, Math.min(n, 128)) !== n ? EMU_TAG : '');

const MS = [1, 2, 3, 7, 8, 9, 16, 17, 32, 33, 64, 65, 128, 300];
const NK: [number, number][] = [[257, 520], [64, 77], [130, 2048], [31, 12]];
/** The main grid's shape on the emulated device (see the header). */
function emuShape(m: number, n: number, k: number): [number, number, number] {
  if (m <= 32) return [m, n, k === 2048 ? 1040 : k];
  return [m === 300 ? 136 : m, n, k === 520 ? 136 : k === 2048 || k === 1040 ? 264 : k];
}

gpuDescribe(gpuTitle('CUDA gemm vs the CPU op'), () => {
  const cases = MS.flatMap((m0) => NK.flatMap(([n0, k0]) => (['bf16', 'f16', 'f32'] as const).map((dt) => {
    const [m, n, k] = scaled([m0, n0, k0], emuShape(m0, n0, k0));
    const tag = m !== m0 || k !== k0 ? EMU_TAG : '';
    return [`${dt} m=${m} n=${n} k=${k}${tag}`, m, n, k, dt] as const;
  })));
  test.each(cases)('%s', async (name, m, n, k, dt) => {
    const { x, w } = await makeInputs(m, n, k, dt, false, name);
    await check(x, w, dt, false);
  });

  // bf16-representable x: the tensor-core kernels' only error is accumulation.
  const xCases = ([m0, n0, k0]: number[]) => {
    const [m, n, k] = scaled([m0, n0, k0], emuShape(m0, n0, k0));
    return [m, n, k, m !== m0 || k !== k0 ? EMU_TAG : ''] as const;
  };
  test.each([[1, 300, 1024], [33, 257, 520], [64, 130, 2048], [65, 257, 520], [300, 129, 1040]].map(xCases))(
    'bf16 x bf16 m=%i n=%i k=%i%s', async (m, n, k) => {
      const { x, w } = await makeInputs(m, n, k, 'bf16', true, `xbf16 ${m} ${n} ${k}`);
      await check(x, w, 'bf16', true);
    });

  // Decode shapes of the model: split-K over long K (o_proj) and a wide, short-K projection.
  const emuN = ([m, n, k]: number[]) => [m, scaled(n, Math.min(n, 128)), k, EMULATED_NOTE(n)] as const;
  test.each([[1, 5120, 16384], [8, 512, 16384], [16, 1536, 5120], [33, 384, 5120], [4, 4096, 512]].map(emuN))(
    'decode bf16 m=%i n=%i k=%i%s', async (m, n, k) => {
      const { x, w } = await makeInputs(m, n, k, 'bf16', false, `decode ${m} ${n} ${k}`);
      await check(x, w, 'bf16', false);
    });

  test('zero sizes: m = 0 and n = 0 give empty outputs, k = 0 gives zeros', async () => {
    for (const dt of ['bf16', 'f32'] as const) {
      for (const [m, n, k] of [[0, 16, 64], [5, 0, 64], [0, 0, 8], [3, 17, 0], [40, 9, 0]]) {
        const { x, w } = await makeInputs(m, n, k, dt, false, `zero ${m} ${n} ${k}`);
        const y = await ops.gemm(x, w, { device: 'cuda' });
        expect(y.shape).toEqual([m, n]);
        expect(Array.from(y.data as Float32Array)).toEqual(new Array(m * n).fill(0));
      }
    }
  });

  test.each(MS.map((m) => [m] as const))('NaN and inf propagate like the CPU op (m=%i)', async (m) => {
    for (const dt of ['bf16', 'f32'] as const) {
      for (const k of [264, 77]) {
        const n = 70;
        const rng = new Rng(`nan ${m} ${k} ${dt}`);
        const xv = Float32Array.from({ length: m * k }, () => rng.normal());
        const wv = Float32Array.from({ length: n * k }, () => rng.normal());
        xv[(m - 1) * k + 5] = NaN;            // last row of y: all NaN
        if (m > 2) xv[1 * k + 9] = Infinity;   // row 1: ±inf (or NaN where the column holds NaN)
        wv[7 * k + 3] = NaN;                   // column 7: all NaN
        wv[11 * k + (k - 1)] = -Infinity;      // column 11: ±inf, NaN against the inf row (M ≤ 32: x's
                                               // hi and lo must share its sign, else inf − inf = NaN)
        if (m > 1) xv[k - 1] = 1;              // bf16-exact x against -inf: y[0, 11] = -inf, not NaN
        const x = Tensor.from(xv, [m, k]);
        const w32 = Tensor.from(wv, [n, k]);
        const w = dt === 'f32' ? w32 : await ops.cast(w32, dt);
        const want = (await ops.gemm(x, w)).data as Float32Array;
        const got = (await ops.gemm(x, w, { device: 'cuda' })).data as Float32Array;
        for (let i = 0; i < want.length; i++) {
          const a = want[i];
          const b = got[i];
          const same = Number.isNaN(a) ? Number.isNaN(b) : !Number.isFinite(a) ? a === b : Number.isFinite(b);
          if (!same) throw new Error(`${dt} k=${k} y[${Math.floor(i / n)}, ${i % n}]: cpu ${a}, cuda ${b}`);
        }
      }
    }
  });

  test.each([[1, 5120, 16384], [16, 1536, 5120], [64, 1000, 4096], [300, 257, 520], [9, 64, 77]].map(emuN))(
    'deterministic: bit-identical twice (m=%i n=%i k=%i)%s', async (m, n, k) => {
      const { x, w } = await makeInputs(m, n, k, 'bf16', false, `det ${m} ${n} ${k}`);
      const a = (await ops.gemm(x, w, { device: 'cuda' })).data as Float32Array;
      const b = (await ops.gemm(x, w, { device: 'cuda' })).data as Float32Array;
      expect(Buffer.from(b.buffer, b.byteOffset, b.byteLength).equals(Buffer.from(a.buffer, a.byteOffset, a.byteLength))).toBe(true);
    });
});
