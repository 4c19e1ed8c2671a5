/**
 * Every CPU gemm kernel variant (AVX-512, AVX2, scalar) against a float64 dot product. The
 * ISA is fixed per process (DSV2_CPU_ISA lowers it), so each variant runs in a child.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';

const ROOT = path.resolve(__dirname, '../..');

// Child: for each case, random x/W (seeded LCG), gemm via the raw binding, compare with a
// double-precision dot product of the same (bf16/f16-rounded where applicable) values.
const CHILD = `
const b = require('node-gyp-build')(${JSON.stringify(ROOT)});
const cases = JSON.parse(process.argv[1]);
function rng(seed) { let s = seed >>> 0; return () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 2 ** 32 - 0.5; }; }
(async () => {
  const out = [];
  for (const c of cases) {
    const r = rng(c.m * 1000003 + c.n * 1009 + c.k);
    const x = Float32Array.from({ length: c.m * c.k }, r);
    const w32 = Float32Array.from({ length: c.n * c.k }, r);
    let w = { dtype: 'f32', shape: [c.n, c.k], data: w32 };
    if (c.dtype !== 'f32') w = await b.cast(w, c.dtype, 'reference');
    const wf = c.dtype === 'f32' ? w32 : (await b.cast(w, 'f32', 'reference')).data;
    const y = (await b.gemm({ dtype: 'f32', shape: [c.m, c.k], data: x }, w, 'fast')).data;
    let worst = 0;
    for (let i = 0; i < c.m; i++) for (let j = 0; j < c.n; j++) {
      let acc = 0, mag = 0;
      for (let k = 0; k < c.k; k++) { acc += x[i * c.k + k] * wf[j * c.k + k]; mag += Math.abs(x[i * c.k + k] * wf[j * c.k + k]); }
      // fp32 accumulation over K terms: |error| <= K * 2^-24 * sum|x_k w_k| (a standard
      // forward bound, with some slack for the blocked summation order).
      const bound = c.k * 2 ** -24 * mag + 1e-30;
      worst = Math.max(worst, Math.abs(y[i * c.n + j] - acc) / bound);
    }
    out.push({ ...c, worst });
  }
  console.log(JSON.stringify({ isa: b.buildInfo().cpuIsa, out }));
})().catch((e) => { console.error(e); process.exit(1); });
`;

const CASES: { m: number; n: number; k: number; dtype: 'f32' | 'bf16' | 'f16' }[] = [];
for (const dtype of ['f32', 'bf16', 'f16'] as const) {
  for (const [m, n, k] of [[1, 1, 1], [1, 5, 31], [2, 7, 32], [3, 4, 33], [5, 9, 64], [4, 3, 95], [7, 13, 257], [64, 6, 100], [9, 17, 2049]]) {
    CASES.push({ m, n, k, dtype });
  }
  // Batch 1 (M = 1) runs the gemv kernels (8 rows per call, 32-element AVX-512 / 16-element
  // AVX2 steps, scalar K tails): N not a multiple of 8 (a short last group) and exactly 8 / 16,
  // K below one step, K % 32 and K % 16 ≠ 0, K = 1, and one long row.
  for (const [n, k] of [[1, 1], [7, 1], [9, 5], [8, 15], [13, 16], [17, 17], [15, 31], [9, 32], [23, 33], [31, 48],
    [16, 63], [3, 100], [25, 129], [10, 257], [9, 2049]]) {
    CASES.push({ m: 1, n, k, dtype });
  }
}

describe.each(['avx512', 'avx2', 'scalar'])('gemm fast path with DSV2_CPU_ISA=%s', (isa) => {
  test('matches a float64 dot product within the fp32 accumulation bound', () => {
    const r = spawnSync(process.execPath, ['-e', CHILD, JSON.stringify(CASES)], {
      encoding: 'utf8',
      env: { ...process.env, DSV2_CPU_ISA: isa },
    });
    expect(r.stderr).toBe('');
    const parsed = JSON.parse(r.stdout) as { isa: string; out: (typeof CASES[number] & { worst: number })[] };
    // The variant really ran (a CPU without AVX-512 runs avx2 in place of avx512).
    if (isa !== 'avx512') expect(parsed.isa).toBe(isa);
    const results = parsed.out;
    expect(results).toHaveLength(CASES.length);
    for (const c of results) {
      // worst = max |error| / bound; must be ≤ 1 (printed with the case on failure).
      expect({ case: `${c.dtype} m=${c.m} n=${c.n} k=${c.k}`, ok: c.worst <= 1 }).toEqual({ case: `${c.dtype} m=${c.m} n=${c.n} k=${c.k}`, ok: true });
    }
  });
});
