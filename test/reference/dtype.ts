/**
 * Reference encoders/decoders for the 16-bit float formats, written from the IEEE 754 /
 * bfloat16 definitions with DataView and Math only (never through the library).
 *
 * All encoders take a JS number, first round it to binary32 (Math.fround) because the
 * library converts f32 -> 16-bit (a direct double -> 16-bit rounding could differ by
 * double rounding), then round to nearest, ties to even.
 */

// Globals used in hot loops are aliased at module scope: under jest every global lookup
// (Math.x, Number.x) goes through the vm context's global interceptor, ~40x slower.
const { abs, floor, fround } = Math;
const isNaNNum = Number.isNaN;
const objectIs = Object.is;

const scratch = new DataView(new ArrayBuffer(4));

/** The binary32 bit pattern of x (after rounding x to f32). */
export function f32Bits(x: number): number {
  scratch.setFloat32(0, x);
  return scratch.getUint32(0);
}

/** The binary32 value of a 32-bit pattern. */
export function f32FromBits(bits: number): number {
  scratch.setUint32(0, bits >>> 0);
  return scratch.getFloat32(0);
}

// ---------------------------------------------------------------------------------------
// bfloat16: the high 16 bits of a binary32.

/** f32 -> bf16 bits, round to nearest even; NaN stays a (quiet) NaN with its sign; inf stays inf. */
export function f32ToBf16Bits(x: number): number {
  const bits = f32Bits(x);
  if (isNaNNum(x)) {
    // keep sign and the top payload bits, force the quiet bit so the result is still NaN
    return ((bits >>> 16) | 0x0040) & 0xffff;
  }
  const lower = bits & 0xffff;
  let upper = bits >>> 16;
  // round to nearest, ties to even on the dropped 16 bits
  if (lower > 0x8000 || (lower === 0x8000 && (upper & 1) === 1)) upper += 1;
  // carrying into the exponent is the correct result (largest finite rounds to inf)
  return upper & 0xffff;
}

/** bf16 bits -> value (exact: every bf16 is a binary32). */
export function bf16BitsToF32(h: number): number {
  return f32FromBits((h & 0xffff) << 16);
}

/** Round x to the nearest bf16 value (f32 first). */
export function roundBf16(x: number): number {
  return bf16BitsToF32(f32ToBf16Bits(x));
}

// ---------------------------------------------------------------------------------------
// IEEE binary16: 1 sign, 5 exponent (bias 15), 10 fraction bits.

/** Round half to even of a non-negative double v to an integer (v exact, no overflow). */
function roundHalfEven(v: number): number {
  const fl = floor(v);
  const d = v - fl; // exact: v has at most 53 significant bits and fl is its integer part
  if (d > 0.5) return fl + 1;
  if (d < 0.5) return fl;
  return fl % 2 === 0 ? fl : fl + 1;
}

/**
 * f32 -> f16 bits, round to nearest even. Overflow (|x| >= 65520, the midpoint between the
 * largest finite 65504 and 2^16, which ties to the even 2^16) gives inf; values below 2^-14
 * become subnormals (multiples of 2^-24), 2^-25 ties to even = 0. NaN stays NaN (quiet).
 */
export function f32ToF16Bits(x: number): number {
  const xf = fround(x);
  if (isNaNNum(xf)) {
    const sign = (f32Bits(xf) >>> 31) << 15;
    return sign | 0x7e00;
  }
  const sign = xf < 0 || objectIs(xf, -0) ? 0x8000 : 0;
  const a = abs(xf);
  if (a === Infinity || a >= 65520) return sign | 0x7c00;
  if (a < 2 ** -14) {
    // subnormal (or zero): units of 2^-24; a * 2^24 is exact in double
    const m = roundHalfEven(a * 2 ** 24); // 0..1024; 1024 is the smallest normal 0x0400
    return sign | m;
  }
  // normal in f16, so normal in f32: e (2^e <= a < 2^(e+1)) is the f32 exponent field
  let e = ((f32Bits(a) >>> 23) & 0xff) - 127;
  let m = roundHalfEven((a / 2 ** e - 1) * 1024); // exact scaling by powers of two
  if (m === 1024) {
    m = 0;
    e += 1;
  }
  if (e + 15 >= 31) return sign | 0x7c00;
  return sign | ((e + 15) << 10) | m;
}

/** f16 bits -> value (exact in f32 and in double). */
export function f16BitsToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const e = (h >>> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return sign * m * 2 ** -24;
  if (e === 31) return m === 0 ? sign * Infinity : NaN;
  return sign * (1 + m / 1024) * 2 ** (e - 15);
}

/** Round x to the nearest f16 value (f32 first). */
export function roundF16(x: number): number {
  return f16BitsToF32(f32ToF16Bits(x));
}

// ---------------------------------------------------------------------------------------
// Array helpers.

export type FloatDType = 'f32' | 'bf16' | 'f16';

/** Encodes values into the host storage of `dtype` (Float32Array for f32, bit patterns otherwise). */
export function encode(values: ArrayLike<number>, dtype: FloatDType): Float32Array | Uint16Array {
  if (dtype === 'f32') return Float32Array.from(values as ArrayLike<number>);
  const out = new Uint16Array(values.length);
  const enc = dtype === 'bf16' ? f32ToBf16Bits : f32ToF16Bits;
  for (let i = 0; i < values.length; i++) out[i] = enc(values[i]);
  return out;
}

/** Decodes host storage of `dtype` into exact float64 values. */
export function decode(data: Float32Array | Uint16Array, dtype: FloatDType): Float64Array {
  const out = new Float64Array(data.length);
  if (dtype === 'f32') {
    for (let i = 0; i < data.length; i++) out[i] = data[i];
  } else {
    const dec = dtype === 'bf16' ? bf16BitsToF32 : f16BitsToF32;
    for (let i = 0; i < data.length; i++) out[i] = dec(data[i]);
  }
  return out;
}
