/**
 * 8-bit weights with one f32 scale per 128 × 128 block (W[n, k] = value(code[n, k]) ·
 * scale[⌊n/128⌋][⌊k/128⌋]), checked against TypeScript written here from the rule:
 * - ops.quantizeWeight (i8 and fp8_e4m3) against a reference of the documented rule: block
 *   amax over the finite |w|, scale = fl32(amax / 127 | 448) (1 for amax 0), code = w / scale
 *   rounded to nearest even (i8 clamped to ±127, NaN → 0; e4m3 saturating, RNE);
 * - ops.gemm with 8-bit weights (reference impl here, the fast path under every ISA in child
 *   processes) against a float64 dot product of the decoded weights (e4m3 decoded by formula);
 * - the argument errors; and the quantisation error of random weights against its derived size.
 */
import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { Dsv2Error, Tensor, info, ops } from '../../lib';
import { bf16BitsToF32, f16BitsToF32, f32ToBf16Bits, f32ToF16Bits } from '../reference/dtype';
import { codeValue, encodeCode, i8Code, refScales, rne } from '../reference/quant';
import { Rng } from '../reference/rng';

const ROOT = path.resolve(__dirname, '../..');
const { abs, floor, fround, max, ceil, sqrt } = Math;
const B = 128;

type In = 'f32' | 'bf16' | 'f16';
type Q = 'i8' | 'fp8_e4m3';

// ---------------------------------------------------------------------------------------
// The reference of the quantisation rule.

// rne, i8Code, encodeCode, codeValue, refScales: test/reference/quant.ts

/**
 * The codes quantizeWeight must give: code = encode(fl32(w / scale)). Where w / scale lies
 * within a float rounding hair (4 ulp of f32) of a rounding tie, an implementation computing
 * the quotient slightly differently may land on the other side: both codes are accepted there.
 * Returns the first disagreement (or null) and how many elements needed that allowance.
 */
function checkCodes(w: ArrayLike<number>, n: number, k: number, to: Q, codes: Int8Array | Uint8Array, scale: Float32Array): { bad: string | null; hair: number } {
  const cb = ceil(k / B);
  const h = 2 ** -22;
  let hair = 0;
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < k; c++) {
      const i = r * k + c;
      const s = scale[floor(r / B) * cb + floor(c / B)];
      const q = w[i] / s;
      const want = encodeCode(fround(q), to);
      const got = codes[i];
      if (got === want) continue;
      const lo = encodeCode(q * (1 - h), to);
      const hi = encodeCode(q * (1 + h), to);
      if (got === lo || got === hi) {
        hair++;
        continue;
      }
      return { bad: `[${r}, ${c}]: w = ${w[i]}, scale = ${s}, w / scale = ${q}: code ${got}, expected ${want}`, hair };
    }
  }
  return { bad: null, hair };
}

/** Values (any doubles) stored as dtype `dt`; returns the tensor and the exact values it holds. */
function floatTensor(values: ArrayLike<number>, shape: number[], dt: In): { t: Tensor; exact: Float64Array } {
  const n = values.length;
  const exact = new Float64Array(n);
  if (dt === 'f32') {
    const d = Float32Array.from(values);
    exact.set(d);
    return { t: new Tensor('f32', shape, d), exact };
  }
  const bits = new Uint16Array(n);
  const enc = dt === 'bf16' ? f32ToBf16Bits : f32ToF16Bits;
  const dec = dt === 'bf16' ? bf16BitsToF32 : f16BitsToF32;
  for (let i = 0; i < n; i++) {
    bits[i] = enc(values[i]);
    exact[i] = dec(bits[i]);
  }
  return { t: new Tensor(dt, shape, bits), exact };
}

/** Random weights whose 128 × 128 blocks have different magnitudes (2^-4 .. 2^4), so a scale read from the wrong block shows. */
function blockyWeights(n: number, k: number, seed: string): Float64Array {
  const rng = new Rng(seed);
  const cb = ceil(k / B);
  const out = new Float64Array(n * k);
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < k; c++) {
      const b = floor(r / B) * cb + floor(c / B);
      out[r * k + c] = rng.normal() * 2 ** (((b * 5 + 3) % 9) - 4);
    }
  }
  return out;
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'resolved';
  } catch (e) {
    return e instanceof Dsv2Error ? `${e.code}: ${e.message}` : `not a Dsv2Error: ${String(e)}`;
  }
}

// ---------------------------------------------------------------------------------------

describe('ops.quantizeWeight against the reference rule', () => {
  const SHAPES: [number, number][] = [[1, 1], [7, 33], [129, 130], [300, 257]];
  const cases: [number, number, In, Q][] = [];
  for (const [n, k] of SHAPES) for (const dt of ['f32', 'bf16', 'f16'] as const) for (const to of ['i8', 'fp8_e4m3'] as const) cases.push([n, k, dt, to]);

  test.each(cases)('%i × %i %s weights to %s: scales bit-equal, codes equal', async (n, k, dt, to) => {
    const { t, exact } = floatTensor(blockyWeights(n, k, `qw-${n}-${k}-${dt}`), [n, k], dt);
    const { codes, scale } = await ops.quantizeWeight(t, to);
    expect(codes.dtype).toBe(to);
    expect(codes.shape).toEqual([n, k]);
    // by tag: the addon's typed arrays come from another realm than jest's sandbox
    expect(Object.prototype.toString.call(codes.data)).toBe(to === 'i8' ? '[object Int8Array]' : '[object Uint8Array]');
    expect(scale.dtype).toBe('f32');
    expect(scale.shape).toEqual([ceil(n / B), ceil(k / B)]);
    expect(Array.from(scale.data as Float32Array)).toEqual(Array.from(refScales(exact, n, k, to)));
    const r = checkCodes(exact, n, k, to, codes.data as Int8Array | Uint8Array, scale.data as Float32Array);
    expect(r.bad).toBeNull();
    // the allowance at ties is for another way of dividing, and is rare on random data
    expect(r.hair).toBeLessThanOrEqual(2);
  });

  test.each(['f32', 'bf16', 'f16'] as const)('i8 ties round to even (%s input; scale exactly 1 and 0.5)', async (dt) => {
    // Block amax 127 → scale 127/127 = 1 exactly, so w / scale = w; amax 63.5 → scale 0.5.
    const ties = [0.5, 1.5, 2.5, 3.5, -0.5, -1.5, -2.5, -3.5, 126.5, -126.5, 64.5, -65.5];
    const want1 = [0, 2, 2, 4, 0, -2, -2, -4, 126, -126, 64, -66];
    for (const [amax, sc] of [[127, 1], [63.5, 0.5]]) {
      const vals = [amax, ...ties.map((x) => x * sc)];
      const { t } = floatTensor(vals, [1, vals.length], dt);
      const { codes, scale } = await ops.quantizeWeight(t, 'i8');
      expect(Array.from(scale.data as Float32Array)).toEqual([sc]);
      expect(Array.from(codes.data as Int8Array)).toEqual([127, ...want1]);
    }
  });

  test.each(['f32', 'bf16', 'f16'] as const)('e4m3 ties round to even (%s input; scale exactly 1)', async (dt) => {
    // amax 448 → scale 1: each value below sits exactly midway between two e4m3 neighbours.
    const cases: [number, number][] = [
      [448, 0x7e],
      [1.0625, 0x38], // between 1 (m 0) and 1.125 (m 1): even → 1
      [1.1875, 0x3a], // between 1.125 and 1.25 (m 2) → 1.25
      [-1.0625, 0xb8],
      [400, 0x7c], // between 384 (m 4) and 416 (m 5) → 384
      [432, 0x7e], // between 416 and 448 (m 6) → 448
      [2 ** -10, 0x00], // between 0 and the smallest subnormal 2^-9 → 0
      [3 * 2 ** -10, 0x02], // 1.5 · 2^-9 → 2 · 2^-9
      [5 * 2 ** -10, 0x02], // 2.5 · 2^-9 → 2 · 2^-9
      [7 * 2 ** -10, 0x04], // 3.5 · 2^-9 → 4 · 2^-9
      [2 ** -6 + 2 ** -10, 0x08], // between 2^-6 (0x08) and 2^-6 + 2^-9 (0x09) → 0x08
      [15 * 2 ** -10, 0x08], // 7.5 · 2^-9 → 8 · 2^-9 = 2^-6, the smallest normal
    ];
    const { t } = floatTensor(cases.map((c) => c[0]), [1, cases.length], dt);
    const { codes, scale } = await ops.quantizeWeight(t, 'fp8_e4m3');
    expect(Array.from(scale.data as Float32Array)).toEqual([1]);
    expect(Array.from(codes.data as Uint8Array)).toEqual(cases.map((c) => c[1]));
  });

  test.each(['f32', 'bf16', 'f16'] as const)('NaN and ±inf are left out of amax; all-zero and all-non-finite blocks have scale 1 (%s input)', async (dt) => {
    // [2, 260]: block (0,0) finite values with amax 2.5 plus NaN / ±inf; block (0,1) all zero;
    // block (0,2) (columns 256..259) only NaN / ±inf.
    const k = 260;
    const v = new Float64Array(2 * k);
    const fin = [2.5, -1.25, 0.75, 1, -2, 0.3];
    fin.forEach((x, i) => { v[i] = x; });
    v[10] = NaN;
    v[11] = Infinity;
    v[k + 12] = -Infinity;
    v[256] = Infinity;
    v[257] = -Infinity;
    v[258] = NaN;
    v[k + 259] = Infinity;
    const { t, exact } = floatTensor(v, [2, k], dt);
    for (const to of ['i8', 'fp8_e4m3'] as const) {
      const { codes, scale } = await ops.quantizeWeight(t, to);
      const s = Array.from(scale.data as Float32Array);
      expect(s).toEqual([fround(2.5 / (to === 'i8' ? 127 : 448)), 1, 1]);
      const c = codes.data as Int8Array | Uint8Array;
      const r = checkCodes(exact, 2, k, to, c, scale.data as Float32Array);
      expect(r.bad).toBeNull();
      if (to === 'i8') {
        expect([c[0], c[10], c[11], c[k + 12], c[256], c[257], c[258], c[k + 259]]).toEqual([127, 0, 127, -127, 127, -127, 0, 127]);
        for (let j = 128; j < 256; j++) expect([j, c[j], c[k + j]]).toEqual([j, 0, 0]);
      } else {
        // ±inf saturate to ±448 (0x7e / 0xfe); NaN is the NaN code 0x7f
        expect([c[0], c[10], c[11], c[k + 12], c[256], c[257], c[258], c[k + 259]]).toEqual([0x7e, 0x7f, 0x7e, 0xfe, 0x7e, 0xfe, 0x7f, 0x7e]);
        for (let j = 128; j < 256; j++) expect([j, c[j], c[k + j]]).toEqual([j, 0, 0]);
      }
    }
  });

  test('all-zero matrix: scale 1 in every block, codes 0 (-0 keeps its sign in e4m3 only)', async () => {
    const v = new Float32Array(129 * 130);
    v[5] = -0;
    const t = new Tensor('f32', [129, 130], v);
    for (const to of ['i8', 'fp8_e4m3'] as const) {
      const { codes, scale } = await ops.quantizeWeight(t, to);
      expect(Array.from(scale.data as Float32Array)).toEqual([1, 1, 1, 1]);
      const c = Array.from(codes.data as Int8Array | Uint8Array);
      expect(c[5]).toBe(to === 'i8' ? 0 : 0x80);
      c[5] = 0;
      expect(c.every((x) => x === 0)).toBe(true);
    }
  });

  test('tiny (subnormal) and huge blocks keep finite, positive scales and the rule', async () => {
    for (const vals of [[1e-40, 5e-41, -3e-42, 1e-45], [3.4e38, -3e38, 1, 0.5]]) {
      const { t, exact } = floatTensor(vals, [2, 2], 'f32');
      for (const to of ['i8', 'fp8_e4m3'] as const) {
        const { codes, scale } = await ops.quantizeWeight(t, to);
        const s = scale.data as Float32Array;
        expect(Array.from(s)).toEqual(Array.from(refScales(exact, 2, 2, to)));
        expect(s[0] > 0 && Number.isFinite(s[0])).toBe(true);
        expect(checkCodes(exact, 2, 2, to, codes.data as Int8Array | Uint8Array, s).bad).toBeNull();
      }
    }
  });

  test('bad arguments are coded errors', async () => {
    const w = Tensor.from(new Float32Array(6), [2, 3]);
    expect(await code(ops.quantizeWeight(Tensor.from(new Float32Array(3), [3]), 'i8'))).toMatch(/^E_SHAPE: .*\[3\]/);
    expect(await code(ops.quantizeWeight(new Tensor('i8', [2, 3], new Int8Array(6)), 'fp8_e4m3'))).toMatch(/^E_DTYPE: .*i8/);
    expect(await code(ops.quantizeWeight(w, 'int4' as Q))).toMatch(/^E_DTYPE: .*int4/);
  });
});

describe('quantisation error of random N(0, 1) weights', () => {
  const n = 256;
  const k = 256;
  const w = new Rng('qerr').normalF32(n * k);
  const t = new Tensor('f32', [n, k], w);

  /** relative RMS error ‖deq − w‖ / ‖w‖ of codes · scale. */
  function relRms(codes: ArrayLike<number>, scale: Float32Array, to: Q): number {
    let e2 = 0;
    let w2 = 0;
    for (let r = 0; r < n; r++) {
      for (let c = 0; c < k; c++) {
        const i = r * k + c;
        const d = codeValue(codes[i], to) * scale[floor(r / B) * (k / B) + floor(c / B)] - w[i];
        e2 += d * d;
        w2 += w[i] * w[i];
      }
    }
    return sqrt(e2 / w2);
  }

  test('i8: relative RMS error ≈ (amax / 127) / √12 / RMS(w), within 10%', async () => {
    // Derivation: the step of a block is s = amax / 127 and every code is the nearest
    // multiple of s, so the error of an element is uniform on [−s/2, s/2] (w is continuous
    // and spans many steps): mean square s² / 12. Over the matrix, the expected error energy
    // is Σ_blocks count · s_b² / 12. With 65536 samples the measured mean square has a
    // relative standard deviation of √(4/5) / √65536 ≈ 0.35%, so 10% either way is ample,
    // while a scale of amax/255 (half the step) or amax/63 (double) is far outside.
    const { codes, scale } = await ops.quantizeWeight(t, 'i8');
    const s = scale.data as Float32Array;
    let pred = 0;
    let w2 = 0;
    for (let b = 0; b < s.length; b++) pred += B * B * (s[b] * s[b]) / 12;
    for (let i = 0; i < w.length; i++) w2 += w[i] * w[i];
    const predicted = sqrt(pred / w2);
    const measured = relRms(codes.data as Int8Array, s, 'i8');
    expect(measured).toBeGreaterThan(0.9 * predicted);
    expect(measured).toBeLessThan(1.1 * predicted);
    // and absolutely: amax of 16384 normals is < 5 with overwhelming probability, so the
    // relative error is below 5 / 127 / √12 ≈ 0.0114.
    expect(measured).toBeLessThan(0.0114);
  });

  test('fp8: relative RMS error within the 3-mantissa-bit band (2^-4/√12, 2^-3/√12]', async () => {
    // Derivation: e4m3 has 3 mantissa bits, so in a binade [2^e, 2^(e+1)) the spacing is
    // ulp = 2^(e-3) and the error of an element is uniform on ±ulp/2: mean square ulp² / 12,
    // with ulp / |x| in (2^-4, 2^-3]. The ratio Σ err² / Σ x² is then a mediant of per-element
    // ratios in (2^-8/12, 2^-6/12], so the relative RMS error lies in (2^-4/√12, 2^-3/√12] =
    // (0.0180, 0.0361] (values in the subnormal range, below amax·2^-6/448, are a negligible
    // share of the energy). Every element's own error is at most half an ulp: ≤ 2^-4 · |x|.
    // 10% slack either way for sampling; a 2-bit or 4-bit mantissa would fall outside.
    const { codes, scale } = await ops.quantizeWeight(t, 'fp8_e4m3');
    const measured = relRms(codes.data as Uint8Array, scale.data as Float32Array, 'fp8_e4m3');
    expect(measured).toBeGreaterThan(0.9 * (2 ** -4 / sqrt(12)));
    expect(measured).toBeLessThan(1.1 * (2 ** -3 / sqrt(12)));
    expect(measured).toBeLessThan(2 ** -4);
  });
});

// ---------------------------------------------------------------------------------------
// gemm with 8-bit weights.

const MS = [1, 2, 3, 5, 9];
const NS = [1, 7, 8, 9, 130];
const KS = [1, 15, 16, 33, 128, 129, 300];
interface GCase { m: number; n: number; k: number; dtype: Q }
const GEMM_CASES: GCase[] = [];
for (const dtype of ['i8', 'fp8_e4m3'] as const) {
  for (const m of MS) for (const n of NS) for (const k of KS) GEMM_CASES.push({ m, n, k, dtype });
  // more row and column blocks, with tails (3 × 4 blocks; 8-row groups ending mid-block)
  for (const [m, n, k] of [[1, 260, 385], [3, 257, 200], [1, 136, 1000], [1, 255, 127]]) GEMM_CASES.push({ m, n, k, dtype });
}

/**
 * Shared by the in-process reference check and the ISA children (plain JS, no imports):
 * seeded data for a case — x uniform in [-0.5, 0.5); codes over their whole range (i8 -128..127
 * including -128, which the quantiser never makes but gemm accepts; every finite e4m3 code,
 * subnormals and -0 included); scales 2^[-6, 6) · [0.5, 1) per block — and the float64 result
 * with Σ|x·w| per output.
 */
const CASE_DATA = `
function caseData(c) {
  let s = (c.m * 1000003 + c.n * 1009 + c.k * 7 + (c.dtype === 'i8' ? 1 : 2)) >>> 0;
  const r = () => { s = (Math.imul(s, 1664525) + 1013904223) >>> 0; return s / 2 ** 32; };
  const x = Float32Array.from({ length: c.m * c.k }, () => r() - 0.5);
  const codes = c.dtype === 'i8' ? new Int8Array(c.n * c.k) : new Uint8Array(c.n * c.k);
  for (let i = 0; i < codes.length; i++) {
    if (c.dtype === 'i8') codes[i] = Math.floor(r() * 256) - 128;
    else { let v; do v = Math.floor(r() * 256); while ((v & 0x7f) === 0x7f); codes[i] = v; }
  }
  const rb = Math.ceil(c.n / 128), cb = Math.ceil(c.k / 128);
  const scale = Float32Array.from({ length: rb * cb }, () => 2 ** (Math.floor(r() * 12) - 6) * (0.5 + 0.5 * r()));
  const e4m3 = (b) => {
    const sign = b & 0x80 ? -1 : 1, e = (b >>> 3) & 15, m = b & 7;
    if (e === 15 && m === 7) return NaN;
    return e === 0 ? sign * m * 2 ** -9 : sign * (1 + m / 8) * 2 ** (e - 7);
  };
  const W = new Float64Array(c.n * c.k);
  for (let j = 0; j < c.n; j++) for (let k = 0; k < c.k; k++) {
    const v = c.dtype === 'i8' ? codes[j * c.k + k] : e4m3(codes[j * c.k + k]);
    W[j * c.k + k] = v * scale[Math.floor(j / 128) * cb + Math.floor(k / 128)];
  }
  const y = new Float64Array(c.m * c.n), mag = new Float64Array(c.m * c.n);
  for (let i = 0; i < c.m; i++) for (let j = 0; j < c.n; j++) {
    let acc = 0, sa = 0;
    for (let k = 0; k < c.k; k++) { const p = x[i * c.k + k] * W[j * c.k + k]; acc += p; sa += Math.abs(p); }
    y[i * c.n + j] = acc; mag[i * c.n + j] = sa;
  }
  return { x, codes, scale, y, mag };
}
`;
// The same source runs here and in the children (so both check the same data).
const caseData = new Function(`${CASE_DATA}; return caseData;`)() as (c: GCase) => {
  x: Float32Array; codes: Int8Array | Uint8Array; scale: Float32Array; y: Float64Array; mag: Float64Array;
};

/** max over outputs of |y − y64| / bound (≤ 1 passes). */
function worstRatio(y: Float32Array, d: ReturnType<typeof caseData>, bound: (mag: number) => number): number {
  let worst = 0;
  for (let i = 0; i < y.length; i++) worst = max(worst, abs(y[i] - d.y[i]) / bound(d.mag[i]));
  return worst;
}

describe('ops.gemm with 8-bit weights and block scales', () => {
  test('impl reference: within 2 roundings of the float64 dot product (every M, N, K)', async () => {
    // The reference decodes each weight to f32 (fl32(value · scale): relative error ≤ 2^-24),
    // accumulates in double (negligible) and rounds the sum once: |err| ≤ 2 · 2^-24 · Σ|x·w|.
    const bad: string[] = [];
    for (const c of GEMM_CASES) {
      const d = caseData(c);
      const y = await ops.gemm(Tensor.from(d.x, [c.m, c.k]), new Tensor(c.dtype, [c.n, c.k], d.codes),
        { scale: Tensor.from(d.scale, [ceil(c.n / B), ceil(c.k / B)]), impl: 'reference' });
      expect(y.shape).toEqual([c.m, c.n]);
      const w = worstRatio(y.data as Float32Array, d, (mag) => 2 * 2 ** -24 * mag + 1e-30);
      if (!(w <= 1)) bad.push(`${c.dtype} m=${c.m} n=${c.n} k=${c.k}: worst error / bound ${w}`);
    }
    expect(bad).toEqual([]);
  });

  test('x of rank 3 and batched rows: the result is [..., N]', async () => {
    const c: GCase = { m: 6, n: 9, k: 33, dtype: 'i8' };
    const d = caseData(c);
    const y = await ops.gemm(Tensor.from(d.x, [2, 3, c.k]), new Tensor('i8', [c.n, c.k], d.codes as Int8Array), { scale: Tensor.from(d.scale, [1, 1]) });
    expect(y.shape).toEqual([2, 3, c.n]);
    expect(worstRatio(y.data as Float32Array, d, (mag) => (c.k + 4) * 2 ** -24 * mag + 1e-30)).toBeLessThanOrEqual(1);
  });

  test('argument errors are Dsv2Errors with their codes, naming the problem', async () => {
    const x = Tensor.from(new Float32Array(2 * 130).fill(0.5), [2, 130]);
    const w8 = new Tensor('i8', [3, 130], new Int8Array(3 * 130).fill(3));
    const s = Tensor.from(new Float32Array([0.5, 0.25]), [1, 2]);
    // wrong scale shapes: the message names the given and the expected [ceil(N/128), ceil(K/128)]
    expect(await code(ops.gemm(x, w8, { scale: Tensor.from(new Float32Array(1), [1, 1]) }))).toMatch(/^E_SHAPE: scale: shape \[1, 1\].*\[3, 130\].*\[1, 2\]/);
    expect(await code(ops.gemm(x, w8, { scale: Tensor.from(new Float32Array(2), [2]) }))).toMatch(/^E_SHAPE: scale: shape \[2\]/);
    expect(await code(ops.gemm(x, w8, { scale: Tensor.from(new Float32Array(4), [2, 2]) }))).toMatch(/^E_SHAPE: scale: shape \[2, 2\]/);
    // a scale that is not finite and > 0: E_RANGE naming the (flat) index
    for (const [bad, idx] of [[0, 1], [NaN, 0], [-1, 1], [Infinity, 0]] as const) {
      const v = new Float32Array([0.5, 0.25]);
      v[idx] = bad;
      expect(await code(ops.gemm(x, w8, { scale: Tensor.from(v, [1, 2]) }))).toMatch(new RegExp(`^E_RANGE: scale\\[${idx}\\] = `));
    }
    // 8-bit weights without a scale, float weights with one, a scale that is not f32
    expect(await code(ops.gemm(x, w8))).toMatch(/^E_DTYPE: weight: dtype i8/);
    expect(await code(ops.gemm(x, new Tensor('fp8_e4m3', [3, 130], new Uint8Array(390))))).toMatch(/^E_DTYPE: weight: dtype fp8_e4m3/);
    const wb = await ops.cast(Tensor.from(new Float32Array(390), [3, 130]), 'bf16');
    expect(await code(ops.gemm(x, wb, { scale: s }))).toMatch(/^E_DTYPE: weight: dtype bf16/);
    expect(await code(ops.gemm(x, w8, { scale: await ops.cast(s, 'bf16') }))).toMatch(/^E_DTYPE: scale/);
    // K mismatch is still E_SHAPE
    expect(await code(ops.gemm(Tensor.from(new Float32Array(129), [1, 129]), w8, { scale: s }))).toMatch(/^E_SHAPE/);
    // device 'cuda' runs the 8-bit CUDA kernels (test/gpu/gemm-quant.test.ts); where CUDA is not
    // usable it is E_UNSUPPORTED (a rejected promise, not a crash)
    if (!(await info()).cuda.usable) {
      expect(await code(ops.gemm(x, w8, { scale: s, device: 'cuda' }))).toMatch(/^E_UNSUPPORTED: /);
      expect(await code(ops.gemm(x, new Tensor('fp8_e4m3', [3, 130], new Uint8Array(390)), { scale: s, device: 'cuda' }))).toMatch(/^E_UNSUPPORTED: /);
    } else {
      expect((await ops.gemm(x, w8, { scale: s, device: 'cuda' })).shape).toEqual([2, 3]);
    }
  });
});

// ---- the fast path under every ISA (DSV2_CPU_ISA is read once per process) --------------

const CHILD = `
const b = require('node-gyp-build')(${JSON.stringify(ROOT)});
${CASE_DATA}
const cases = JSON.parse(process.argv[1]);
(async () => {
  const out = [];
  for (const c of cases) {
    const d = caseData(c);
    const y = (await b.gemm({ dtype: 'f32', shape: [c.m, c.k], data: d.x }, { dtype: c.dtype, shape: [c.n, c.k], data: d.codes }, 'fast', 'cpu',
      { dtype: 'f32', shape: [Math.ceil(c.n / 128), Math.ceil(c.k / 128)], data: d.scale })).data;
    let worst = 0;
    for (let i = 0; i < y.length; i++) {
      // fp32 accumulation over K terms: |error| <= K * 2^-24 * sum|x_k w_k| (the forward
      // bound of gemm-isa.test.ts), plus 4 more roundings: the decode of a weight to f32
      // (or the block partial sum times its scale) and the scalar tail's products.
      const bound = (c.k + 4) * 2 ** -24 * d.mag[i] + 1e-30;
      worst = Math.max(worst, Math.abs(y[i] - d.y[i]) / bound);
    }
    out.push({ ...c, worst });
  }
  // e4m3 NaN codes (0x7f, 0xff) inside the vector part of a row (K = 64) and in the scalar
  // tail (K = 35, column 33): the weight is NaN, so its outputs must be NaN, batch 1 and 3.
  const nan = [];
  for (const [m, k, col] of [[1, 64, 5], [3, 64, 5], [1, 35, 33], [3, 35, 33]]) {
    const codes = new Uint8Array(2 * k).fill(0x38);
    codes[col] = 0x7f; codes[k + col] = 0xff;
    const y = (await b.gemm({ dtype: 'f32', shape: [m, k], data: new Float32Array(m * k).fill(1) }, { dtype: 'fp8_e4m3', shape: [2, k], data: codes },
      'fast', 'cpu', { dtype: 'f32', shape: [1, 1], data: new Float32Array([1]) })).data;
    nan.push({ m, k, col, y: Array.from(y, (v) => (Number.isNaN(v) ? 'NaN' : v)) });
  }
  console.log(JSON.stringify({ isa: b.buildInfo().cpuIsa, out, nan }));
})().catch((e) => { console.error(e); process.exit(1); });
`;

interface ChildOut { isa: string; out: (GCase & { worst: number })[]; nan: { m: number; k: number; col: number; y: (number | string)[] }[] }

/** Runs the cases in a child with DSV2_CPU_ISA = isa (at collection: the NaN test's marker depends on the ISA that ran). */
function runChild(isa: string): ChildOut | string {
  const r = spawnSync(process.execPath, ['-e', CHILD, JSON.stringify(GEMM_CASES)], {
    encoding: 'utf8',
    env: { ...process.env, DSV2_CPU_ISA: isa },
    maxBuffer: 64 << 20,
  });
  if (r.status !== 0 || r.stderr !== '') return `child failed (status ${r.status}): ${r.stderr}`;
  return JSON.parse(r.stdout) as ChildOut;
}

describe.each(['avx512', 'avx2', 'scalar'])('8-bit gemm fast path with DSV2_CPU_ISA=%s', (isa) => {
  const res = runChild(isa);
  const parsed = typeof res === 'string' ? null : res;

  test('the child ran the variant', () => {
    expect(res).toEqual(expect.objectContaining({ out: expect.any(Array) }));
    // (a CPU without AVX-512 runs avx2 in place of avx512)
    if (isa !== 'avx512') expect(parsed!.isa).toBe(isa);
    expect(parsed!.out).toHaveLength(GEMM_CASES.length);
  });

  test('matches a float64 dot product of the decoded weights within the fp32 accumulation bound', () => {
    expect(parsed).not.toBeNull();
    const bad = parsed!.out.filter((c) => !(c.worst <= 1)).map((c) => `${c.dtype} m=${c.m} n=${c.n} k=${c.k}: worst error / bound ${c.worst}`);
    expect(bad).toEqual([]);
  });

  const nanCase = (inTail: boolean) => () => {
    expect(parsed).not.toBeNull();
    const rows = parsed!.nan.filter((r) => (r.col >= Math.floor(r.k / 16) * 16) === inTail);
    expect(rows).toHaveLength(2);
    for (const r of rows) expect({ ...r, y: r.y.map(String) }).toEqual({ ...r, y: r.y.map(() => 'NaN') });
  };
  test('e4m3 NaN codes in the scalar K tail give NaN outputs', nanCase(true));
  // The SIMD kernels widen e4m3 through f16 bits (sign << 8 | (code & 0x7f) << 7), which alone
  // would turn the NaN codes 0x7f / 0xff into the finite ±480 (× scale); they set the f16
  // exponent to all ones for those codes (found by this case; it failed before the fix).
  test('e4m3 NaN codes in the vector part of a row give NaN outputs', nanCase(false));
});
