/**
 * The byte layout of one token of the paged latent KV cache, from the dsv2 spec (which
 * follows FlashMLA's FP8 layout, 656 bytes per token at dC = 512, dR = 64):
 *  - f32:  dC f32 of c_kv, then dR f32 of k_pe (little-endian);
 *  - bf16: the same in bf16 (round to nearest even);
 *  - fp8:  dC e4m3 codes of c_kv; ceil(dC / 128) little-endian f32 scales, one per
 *          128-element tile of c_kv (the last may be shorter), scale and codes as in the
 *          fp8 group quantizer; then dR bf16 (RNE) of k_pe.
 * Pages are [layer][page][token-in-page][bytes], so a slot's bytes start at
 * ((layer · pages + page) · pageSize + offset) · bytesPerToken of the whole cache, and at
 * offset · bytesPerToken of readRawPage(layer, page).
 */
import { bf16BitsToF32, f32ToBf16Bits, roundBf16 } from './dtype';
import { dequantizeValue, groupScale, quantizeValue } from './fp8';

export type CacheDType = 'f32' | 'bf16' | 'fp8';

export const FP8_TILE = 128;

export function bytesPerToken(dtype: CacheDType, dC: number, dR: number): number {
  if (dtype === 'f32') return (dC + dR) * 4;
  if (dtype === 'bf16') return (dC + dR) * 2;
  return dC + 4 * Math.ceil(dC / FP8_TILE) + 2 * dR;
}

/** Encodes one token (f32 values) into its bytes. */
export function encodeToken(
  dtype: CacheDType,
  c: ArrayLike<number>,
  k: ArrayLike<number>,
  dC: number,
  dR: number,
  pow2Scales = false,
): Uint8Array {
  const out = new Uint8Array(bytesPerToken(dtype, dC, dR));
  const dv = new DataView(out.buffer);
  if (dtype === 'f32') {
    for (let i = 0; i < dC; i++) dv.setFloat32(4 * i, c[i], true);
    for (let i = 0; i < dR; i++) dv.setFloat32(4 * (dC + i), k[i], true);
  } else if (dtype === 'bf16') {
    for (let i = 0; i < dC; i++) dv.setUint16(2 * i, f32ToBf16Bits(c[i]), true);
    for (let i = 0; i < dR; i++) dv.setUint16(2 * (dC + i), f32ToBf16Bits(k[i]), true);
  } else {
    const tiles = Math.ceil(dC / FP8_TILE);
    for (let j = 0; j < tiles; j++) {
      const a = j * FP8_TILE;
      const b = Math.min(dC, a + FP8_TILE);
      const s = groupScale(c, a, b, pow2Scales);
      dv.setFloat32(dC + 4 * j, s, true);
      for (let i = a; i < b; i++) out[i] = quantizeValue(c[i], s);
    }
    const kOff = dC + 4 * tiles;
    for (let i = 0; i < dR; i++) dv.setUint16(kOff + 2 * i, f32ToBf16Bits(k[i]), true);
  }
  return out;
}

/** Decodes one token's bytes (at `off` of `bytes`) into the values a read returns (f32 values). */
export function decodeToken(
  dtype: CacheDType,
  bytes: Uint8Array,
  off: number,
  dC: number,
  dR: number,
): { c: Float64Array; k: Float64Array } {
  const dv = new DataView(bytes.buffer, bytes.byteOffset + off, bytesPerToken(dtype, dC, dR));
  const c = new Float64Array(dC);
  const k = new Float64Array(dR);
  if (dtype === 'f32') {
    for (let i = 0; i < dC; i++) c[i] = dv.getFloat32(4 * i, true);
    for (let i = 0; i < dR; i++) k[i] = dv.getFloat32(4 * (dC + i), true);
  } else if (dtype === 'bf16') {
    for (let i = 0; i < dC; i++) c[i] = bf16BitsToF32(dv.getUint16(2 * i, true));
    for (let i = 0; i < dR; i++) k[i] = bf16BitsToF32(dv.getUint16(2 * (dC + i), true));
  } else {
    const tiles = Math.ceil(dC / FP8_TILE);
    for (let i = 0; i < dC; i++) {
      const s = dv.getFloat32(dC + 4 * Math.floor(i / FP8_TILE), true);
      c[i] = dequantizeValue(dv.getUint8(i), s);
    }
    const kOff = dC + 4 * tiles;
    for (let i = 0; i < dR; i++) k[i] = bf16BitsToF32(dv.getUint16(kOff + 2 * i, true));
  }
  return { c, k };
}

/**
 * The values a token has once stored (what read() returns and what attention sees):
 * f32 unchanged, bf16-rounded, or fp8-quantized-dequantized c_kv with bf16 k_pe.
 */
export function storedValues(
  dtype: CacheDType,
  c: ArrayLike<number>,
  k: ArrayLike<number>,
  dC: number,
  dR: number,
  pow2Scales = false,
): { c: Float64Array; k: Float64Array } {
  if (dtype === 'f32') return { c: Float64Array.from(c, Math.fround), k: Float64Array.from(k, Math.fround) };
  if (dtype === 'bf16') return { c: Float64Array.from(c, roundBf16), k: Float64Array.from(k, roundBf16) };
  return decodeToken(dtype, encodeToken(dtype, c, k, dC, dR, pow2Scales), 0, dC, dR);
}

/** slot of token t of a sequence: blockTable[floor(t / pageSize)] · pageSize + t mod pageSize. */
export function slotOf(blockRow: ArrayLike<number>, pageSize: number, t: number): number {
  return blockRow[Math.floor(t / pageSize)] * pageSize + (t % pageSize);
}
