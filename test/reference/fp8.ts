/**
 * OCP FP8 E4M3FN ("e4m3fn") reference codec and the fp8 group quantizer of the dsv2 spec,
 * written from the OCP 8-bit Floating Point Specification (OFP8, rev. 1.0) and the dsv2
 * spec, in double with Math only (never through the library).
 *
 * E4M3FN: 1 sign, 4 exponent (bias 7), 3 mantissa bits.
 *   - exponent field 0: subnormals m · 2^-9 (m = 1..7), and ±0;
 *   - exponent fields 1..15: (1 + m/8) · 2^(e-7), except S.1111.111 (0x7F / 0xFF) = NaN;
 *   - no infinities; largest finite 0x7E = 1.75 · 2^8 = 448; smallest normal 2^-6.
 * Encoder: round to nearest, ties to even, SATURATING: finite |v| ≥ 448 and ±inf give ±448,
 * NaN gives 0x7F, the sign of zero (and of tiny values that round to zero) is kept.
 *
 * Group quantization (dsv2 spec, the same rule as the fp8 latent cache): a group's scale is
 * fl32(amax / 448) over the group's finite |values| (rounded up to a power of two when
 * pow2), or 1 when amax is 0 or the group has no finite value; code = e4m3(fl32(x / scale));
 * dequantized value = fl32(decode(code) · scale).
 */

// Globals used in hot loops are aliased at module scope: under jest every global lookup
// (Math.x, Number.x) goes through the vm context's global interceptor, ~40x slower.
const { abs, floor, fround } = Math;
const objectIs = Object.is;

export const E4M3_MAX = 448;
/** The canonical NaN code the encoder produces. */
export const E4M3_NAN = 0x7f;
/** Largest finite code (448). */
export const E4M3_MAX_CODE = 0x7e;

/** True for the two NaN codes 0x7F and 0xFF. */
export function isE4m3NaN(code: number): boolean {
  return (code & 0x7f) === 0x7f;
}

/** Code -> exact value (double; every e4m3 value is exact in f32 as well). -0 for 0x80. */
export function e4m3Decode(code: number): number {
  const sign = code & 0x80 ? -1 : 1;
  const e = (code >>> 3) & 0xf;
  const m = code & 7;
  if (e === 15 && m === 7) return NaN;
  if (e === 0) return sign * m * 2 ** -9; // sign * 0 is -0 for 0x80
  return sign * (1 + m / 8) * 2 ** (e - 7);
}

/** All 256 decoded values, indexed by code. */
export const E4M3_VALUES: Float64Array = (() => {
  const t = new Float64Array(256);
  for (let c = 0; c < 256; c++) t[c] = e4m3Decode(c);
  return t;
})();

/** Round half to even of a non-negative double v (v exact) to an integer. */
function roundHalfEven(v: number): number {
  const fl = floor(v);
  const d = v - fl;
  if (d > 0.5) return fl + 1;
  if (d < 0.5) return fl;
  return fl % 2 === 0 ? fl : fl + 1;
}

/**
 * Value -> code, one rounding (RNE) of the exact value v, saturating. The library feeds it
 * an f32 quotient; any double works (one rounding from the exact double).
 */
export function e4m3Encode(v: number): number {
  if (v !== v) return E4M3_NAN;
  const sign = v < 0 || objectIs(v, -0) ? 0x80 : 0;
  const a = abs(v);
  if (a >= E4M3_MAX) return sign | E4M3_MAX_CODE; // saturate (also ±inf)
  if (a < 2 ** -6) {
    // subnormal range: multiples of 2^-9, a * 2^9 exact; m = 8 is the smallest normal 0x08
    return sign | roundHalfEven(a * 512);
  }
  // 2^e <= a < 2^(e+1), e in [-6, 8]
  let e = -6;
  while (e < 8 && a >= 2 ** (e + 1)) e++;
  let m = roundHalfEven((a / 2 ** e - 1) * 8); // exact scaling by a power of two
  if (m === 8) {
    m = 0;
    e += 1;
  }
  // a < 448 rounds to at most 448 (e = 8, m = 6): never the NaN pattern, never beyond
  return sign | ((e + 7) << 3) | m;
}

// ---------------------------------------------------------------------------------------
// Scales and group quantization.

/** The smallest power of two >= s (s > 0, finite), i.e. 2^ceil(log2 s), exact. */
export function pow2Ceil(s: number): number {
  let p = 2 ** floor(Math.log2(s));
  while (p > s) p /= 2; // log2 may be off by an ulp near powers of two: fix up exactly
  while (p * 2 <= s) p *= 2;
  return p < s ? p * 2 : p;
}

/**
 * Scale of values[start, end): fl32(amax / 448) over the finite |values| (f32 inputs;
 * double division then f32 rounding equals the correctly rounded f32 division, binary64
 * having more than 2·24 + 2 bits), rounded up to a power of two when pow2; 1 when amax is 0
 * or no value is finite.
 */
export function groupScale(values: ArrayLike<number>, start: number, end: number, pow2: boolean): number {
  let amax = 0;
  for (let i = start; i < end; i++) {
    const a = abs(fround(values[i])); // the f32 value the library sees
    if (a > amax && a !== Infinity) amax = a; // NaN fails the comparison
  }
  if (amax === 0) return 1;
  const s = fround(amax / E4M3_MAX);
  return pow2 ? pow2Ceil(s) : s;
}

/** code of one value under a scale: e4m3(fl32(x / scale)), x taken as f32. */
export function quantizeValue(x: number, scale: number): number {
  return e4m3Encode(fround(fround(x) / scale));
}

/** fl32(decode(code) · scale); NaN for the NaN codes. */
export function dequantizeValue(code: number, scale: number): number {
  return fround(E4M3_VALUES[code & 0xff] * scale);
}

export type Granularity = 'tensor' | 'token' | 'tile';

export interface Fp8Quantized {
  codes: Uint8Array;
  /** f32 values */
  scales: Float32Array;
  scalesShape: number[];
}

/** Shape of the scales tensor of fp8Quantize for x of `shape`. */
export function scalesShape(shape: readonly number[], granularity: Granularity, tileSize = 128): number[] {
  const n = shape.length === 0 ? 1 : shape[shape.length - 1];
  const rows = shape.slice(0, -1).reduce((a, b) => a * b, 1);
  if (granularity === 'tensor') return [1];
  if (granularity === 'token') return [rows];
  return [rows, Math.ceil(n / tileSize)];
}

/** Group quantization of x [..., n] (f32 values). */
export function fp8Quantize(
  x: ArrayLike<number>,
  shape: readonly number[],
  opts: { granularity: Granularity; tileSize?: number; pow2Scale?: boolean },
): Fp8Quantized {
  const tileSize = opts.tileSize ?? 128;
  const pow2 = opts.pow2Scale ?? false;
  const n = shape.length === 0 ? 1 : shape[shape.length - 1];
  const total = x.length;
  const rows = n === 0 ? 0 : total / n;
  const codes = new Uint8Array(total);
  const sShape = scalesShape(shape, opts.granularity, tileSize);
  const scales = new Float32Array(sShape.reduce((a, b) => a * b, 1));
  const quantRange = (start: number, end: number, s: number) => {
    for (let i = start; i < end; i++) codes[i] = quantizeValue(x[i], s);
  };
  if (opts.granularity === 'tensor') {
    const s = groupScale(x, 0, total, pow2);
    scales[0] = s;
    quantRange(0, total, s);
  } else if (opts.granularity === 'token') {
    for (let r = 0; r < rows; r++) {
      const s = groupScale(x, r * n, (r + 1) * n, pow2);
      scales[r] = s;
      quantRange(r * n, (r + 1) * n, s);
    }
  } else {
    const tiles = sShape[1];
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < tiles; j++) {
        const a = r * n + j * tileSize;
        const b = r * n + Math.min(n, (j + 1) * tileSize);
        const s = groupScale(x, a, b, pow2);
        scales[r * tiles + j] = s;
        quantRange(a, b, s);
      }
    }
  }
  return { codes, scales, scalesShape: sShape };
}

/** Dequantization of codes [..., n] with the scales of `granularity` -> f32 values (as doubles). */
export function fp8Dequantize(
  codes: ArrayLike<number>,
  shape: readonly number[],
  scales: ArrayLike<number>,
  opts: { granularity: Granularity; tileSize?: number },
): Float64Array {
  const tileSize = opts.tileSize ?? 128;
  const n = shape.length === 0 ? 1 : shape[shape.length - 1];
  const out = new Float64Array(codes.length);
  const tiles = Math.ceil(n / tileSize);
  for (let i = 0; i < codes.length; i++) {
    const r = floor(i / n);
    const col = i - r * n;
    const s =
      opts.granularity === 'tensor' ? scales[0] : opts.granularity === 'token' ? scales[r] : scales[r * tiles + floor(col / tileSize)];
    out[i] = dequantizeValue(codes[i], s);
  }
  return out;
}

/**
 * Worst-case |dequantized − x| of one value quantized with `scale` (x finite, |x| ≤ 448·scale
 * as within its own group): RNE to 3 mantissa bits is off by at most half a unit in the last
 * place, 2^-4 relative in the normal range (|x/s| ≥ 2^-6), 2^-10 absolute in the subnormal
 * range (units 2^-9); times the scale; plus the f32 roundings of x/s and of decode·s (u each,
 * relative).
 */
export function quantErrorBound(x: number, scale: number): number {
  const u = 2 ** -24;
  return (abs(x) * 2 ** -4 + 2 ** -10 * scale) * (1 + 2 * u) + 2 * u * abs(x);
}
