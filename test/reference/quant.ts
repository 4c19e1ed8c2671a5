/**
 * The 8-bit weight format of `Model.load(dir, {weights})` and `ops.quantizeWeight`, written from
 * its definition (independent of the library): one f32 scale per 128 × 128 block, scale =
 * fl32(amax / 127 | 448) over the block's finite |w| (1 when amax is 0), code = w / scale
 * rounded to nearest even — i8 clamped to ±127 (±inf → ±127, NaN → 0), e4m3 saturating.
 */
import { e4m3Decode, e4m3Encode } from './fp8';

const { abs, ceil, floor, fround, max, min } = Math;

/** The side of a scale block. */
export const QBLOCK = 128;

export type QuantTarget = 'i8' | 'fp8_e4m3';

/** Round half to even of a double (any sign); NaN stays NaN, ±inf stays. */
export function rne(v: number): number {
  if (!Number.isFinite(v)) return v;
  const f = floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** i8 code of a quotient q: RNE, clamped to ±127 (±inf → ±127), NaN → 0. */
export function i8Code(q: number): number {
  if (q !== q) return 0;
  return max(-127, min(127, rne(q)));
}

/** The code of quotient q for the target dtype. */
export function encodeCode(q: number, to: QuantTarget): number {
  return to === 'i8' ? i8Code(q) : e4m3Encode(q);
}

/** The value of a code (e4m3 by formula), as a double; NaN for the e4m3 NaN codes. */
export function codeValue(c: number, to: QuantTarget): number {
  return to === 'i8' ? c : e4m3Decode(c);
}

/** Block scales of W [n, k] (exact f32 values): fl32(amax / 127 | 448) over the finite |w|, 1 for amax 0. */
export function refScales(w: ArrayLike<number>, n: number, k: number, to: QuantTarget): Float32Array {
  const rb = ceil(n / QBLOCK);
  const cb = ceil(k / QBLOCK);
  const amax = new Float64Array(rb * cb);
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < k; c++) {
      const a = abs(w[r * k + c]);
      const b = floor(r / QBLOCK) * cb + floor(c / QBLOCK);
      if (a !== Infinity && a > amax[b]) amax[b] = a; // NaN fails the comparison
    }
  }
  // fl32(amax / d): binary64 division then one rounding to binary32 is the correctly rounded
  // binary32 quotient (53 ≥ 2·24 + 2 bits).
  return Float32Array.from(amax, (a) => (a === 0 ? 1 : fround(a / (to === 'i8' ? 127 : 448))));
}

/** W [n, k] (exact values) → the dequantised values code · scale, per 128 × 128 block. */
export function quantDequant(w: ArrayLike<number>, n: number, k: number, to: QuantTarget): Float64Array {
  const scale = refScales(w, n, k, to);
  const cb = ceil(k / QBLOCK);
  const out = new Float64Array(n * k);
  for (let r = 0; r < n; r++) {
    for (let c = 0; c < k; c++) {
      const s = scale[floor(r / QBLOCK) * cb + floor(c / QBLOCK)];
      out[r * k + c] = codeValue(encodeCode(fround(w[r * k + c] / s), to), to) * s;
    }
  }
  return out;
}
