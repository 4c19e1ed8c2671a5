/**
 * Self-tests of the e4m3fn codec, the group quantizer and the latent-cache token layout:
 * the full code table, round trips, hand-picked roundings (ties, subnormals, saturation,
 * signed zeros) and the nearest-value property against a brute-force search.
 */
import {
  E4M3_VALUES,
  e4m3Decode,
  e4m3Encode,
  fp8Dequantize,
  fp8Quantize,
  groupScale,
  isE4m3NaN,
  pow2Ceil,
  quantErrorBound,
  scalesShape,
} from './fp8';
import { bytesPerToken, decodeToken, encodeToken, storedValues } from './kv';
import { bf16BitsToF32, f32FromBits } from './dtype';
import { Rng } from './rng';

// Math aliased at module scope: global lookups are slow in jest's vm context (hot loops here).
const { abs, sign } = Math;

const hex = (c: number) => `0x${c.toString(16).padStart(2, '0')}`;

describe('e4m3fn decode', () => {
  test.each<[string, number, number]>([
    ['+0', 0x00, 0],
    ['smallest subnormal 2^-9', 0x01, 2 ** -9],
    ['largest subnormal 7·2^-9', 0x07, 7 * 2 ** -9],
    ['smallest normal 2^-6', 0x08, 2 ** -6],
    ['1.0 (e=7, m=0)', 0x38, 1],
    ['1.875', 0x3f, 1.875],
    ['2.0', 0x40, 2],
    ['0.5', 0x30, 0.5],
    ['256', 0x78, 256],
    ['416', 0x7d, 416],
    ['max 448', 0x7e, 448],
    ['-1', 0xb8, -1],
    ['-448', 0xfe, -448],
    ['-2^-9', 0x81, -(2 ** -9)],
  ])('%s', (_n, code, v) => {
    expect(e4m3Decode(code)).toBe(v);
  });

  test('-0 is 0x80; NaN exactly at 0x7F and 0xFF; no infinities', () => {
    expect(Object.is(e4m3Decode(0x80), -0)).toBe(true);
    const nanCodes: number[] = [];
    for (let c = 0; c < 256; c++) {
      const v = e4m3Decode(c);
      if (Number.isNaN(v)) nanCodes.push(c);
      expect(Math.abs(v) === Infinity).toBe(false);
      expect(isE4m3NaN(c)).toBe(Number.isNaN(v));
    }
    expect(nanCodes).toEqual([0x7f, 0xff]);
  });

  test('codes 0x00..0x7E are strictly increasing, negative codes mirror them', () => {
    for (let c = 1; c <= 0x7e; c++) expect(E4M3_VALUES[c]).toBeGreaterThan(E4M3_VALUES[c - 1]);
    for (let c = 0; c <= 0x7e; c++) expect(E4M3_VALUES[c | 0x80]).toBe(-E4M3_VALUES[c]);
    // spacing: 2^-9 in the subnormals and the first normal binade, 2^(e-10) above
    expect(E4M3_VALUES[0x09] - E4M3_VALUES[0x08]).toBe(2 ** -9);
    expect(E4M3_VALUES[0x7e] - E4M3_VALUES[0x7d]).toBe(32);
  });
});

describe('e4m3fn encode (RNE, saturating)', () => {
  test('round trip of every non-NaN code (including -0)', () => {
    for (let c = 0; c < 256; c++) {
      if (isE4m3NaN(c)) continue;
      const got = e4m3Encode(E4M3_VALUES[c]);
      if (got !== c) throw new Error(`${hex(c)} -> ${E4M3_VALUES[c]} -> ${hex(got)}`);
    }
  });

  test.each<[string, number, number]>([
    ['448', 448, 0x7e],
    ['449 saturates', 449, 0x7e],
    ['463.9 saturates (not 480)', 463.9, 0x7e],
    ['464 (midpoint to a would-be 480) saturates', 464, 0x7e],
    ['1e30 saturates', 1e30, 0x7e],
    ['+inf -> 448', Infinity, 0x7e],
    ['-inf -> -448', -Infinity, 0xfe],
    ['-1000 -> -448', -1000, 0xfe],
    ['f32 max -> 448', f32FromBits(0x7f7fffff), 0x7e],
    ['NaN -> 0x7F', NaN, 0x7f],
    ['+0', 0, 0x00],
    ['-0 keeps its sign', -0, 0x80],
    ['tiny negative rounds to -0', -1e-10, 0x80],
    ['tiny positive rounds to +0', 1e-10, 0x00],
    ['2^-10 is a tie between 0 and 2^-9 -> even (0)', 2 ** -10, 0x00],
    ['-2^-10 -> -0', -(2 ** -10), 0x80],
    ['just above 2^-10 -> 2^-9', 2 ** -10 + 2 ** -30, 0x01],
    ['3·2^-10 tie between 1 and 2 (·2^-9) -> even 2', 3 * 2 ** -10, 0x02],
    ['5·2^-10 tie between 2 and 3 -> even 2', 5 * 2 ** -10, 0x02],
    ['15·2^-10 tie between 7·2^-9 and 2^-6 -> even 0x08', 15 * 2 ** -10, 0x08],
    ['1 + 1/16 tie -> even 1.0', 1 + 1 / 16, 0x38],
    ['1 + 3/16 tie -> even 1.25', 1 + 3 / 16, 0x3a],
    ['1 + 1/16 + 2^-20 -> 1.125', 1 + 1 / 16 + 2 ** -20, 0x39],
    ['1.9375 tie between 1.875 and 2 -> even 2', 1.9375, 0x40],
    ['424 -> 416', 424, 0x7d],
    ['432 tie between 416 and 448 -> even 448', 432, 0x7e],
    ['431.9 -> 416', 431.9, 0x7d],
    ['-432 -> -448', -432, 0xfe],
  ])('%s', (_n, v, code) => {
    expect(hex(e4m3Encode(v))).toBe(hex(code));
  });

  test('nearest value, ties to the even code, on random f32 values (brute force)', () => {
    const rng = new Rng('e4m3 nearest');
    const finite: number[] = [];
    for (let c = 0; c < 256; c++) if (!isE4m3NaN(c)) finite.push(c);
    for (let n = 0; n < 20000; n++) {
      // magnitudes spanning the subnormals to beyond the max: 2^[-14, 10)
      const v = Math.fround((rng.next() < 0.5 ? -1 : 1) * 2 ** rng.uniform(-14, 10));
      const got = e4m3Encode(v);
      let best = -1;
      let bestD = Infinity;
      for (const c of finite) {
        const val = E4M3_VALUES[c];
        if (val !== 0 && sign(val) !== sign(v)) continue;
        if (val === 0 && (c === 0x80) !== v < 0) continue; // the zero of v's sign
        const d = abs(v - val);
        if (d < bestD || (d === bestD && (c & 1) === 0)) {
          best = c;
          bestD = d;
        }
      }
      if (got !== best) throw new Error(`v=${v}: got ${hex(got)} (${E4M3_VALUES[got]}), nearest ${hex(best)} (${E4M3_VALUES[best]})`);
    }
  });
});

describe('scales', () => {
  test('pow2Ceil', () => {
    expect(pow2Ceil(1)).toBe(1);
    expect(pow2Ceil(0.75)).toBe(1);
    expect(pow2Ceil(1.0000001)).toBe(2);
    expect(pow2Ceil(2 ** -130)).toBe(2 ** -130);
    expect(pow2Ceil(3 * 2 ** -140)).toBe(2 ** -138);
    expect(pow2Ceil(2 ** 100 + 2 ** 60)).toBe(2 ** 101);
  });

  test('groupScale: amax over finite values / 448 (f32), 1 for no finite or zero amax, pow2 rounds up', () => {
    expect(groupScale([448], 0, 1, false)).toBe(1);
    expect(groupScale([0, -0], 0, 2, false)).toBe(1);
    expect(groupScale([], 0, 0, false)).toBe(1);
    expect(groupScale([NaN, Infinity, -Infinity], 0, 3, false)).toBe(1);
    expect(groupScale([1, -896, NaN, Infinity], 0, 4, false)).toBe(2);
    expect(groupScale([300], 0, 1, false)).toBe(Math.fround(300 / 448));
    expect(groupScale([300], 0, 1, true)).toBe(1);
    expect(groupScale([449], 0, 1, true)).toBe(2);
    expect(groupScale([56], 0, 1, true)).toBe(0.125); // 56/448 = 2^-3 exactly: stays
    expect(groupScale([-1e-3, 5e-4], 0, 2, false)).toBe(Math.fround(Math.fround(1e-3) / 448));
  });

  test('scalesShape', () => {
    expect(scalesShape([3, 300], 'tensor')).toEqual([1]);
    expect(scalesShape([3, 300], 'token')).toEqual([3]);
    expect(scalesShape([2, 3, 300], 'tile')).toEqual([6, 3]);
    expect(scalesShape([2, 3, 300], 'tile', 64)).toEqual([6, 5]);
    expect(scalesShape([128], 'tile')).toEqual([1, 1]);
  });
});

describe('group quantization', () => {
  test.each(['tensor', 'token', 'tile'] as const)('%s: round trip within the e4m3 bound; the amax element codes ±448', (g) => {
    const rng = new Rng(`fp8 roundtrip ${g}`);
    const rows = 5;
    const n = 300;
    const x = new Float32Array(rows * n);
    // rows of very different magnitudes (and the tiles of a row too)
    for (let r = 0; r < rows; r++) {
      for (let i = 0; i < n; i++) x[r * n + i] = rng.normal() * 10 ** (r - 2) * (1 + Math.floor(i / 128));
    }
    for (const pow2 of [false, true]) {
      const q = fp8Quantize(x, [rows, n], { granularity: g, pow2Scale: pow2 });
      const deq = fp8Dequantize(q.codes, [rows, n], q.scales, { granularity: g });
      for (let i = 0; i < x.length; i++) {
        const r = Math.floor(i / n);
        const s = g === 'tensor' ? q.scales[0] : g === 'token' ? q.scales[r] : q.scales[r * 3 + Math.floor((i % n) / 128)];
        const err = Math.abs(deq[i] - x[i]);
        if (!(err <= quantErrorBound(x[i], s))) throw new Error(`[${i}] x=${x[i]} deq=${deq[i]} scale=${s} err=${err}`);
      }
      if (!pow2) {
        // the element of largest |x| in each group maps to ±448 exactly
        let amax = 0;
        let at = 0;
        for (let i = 0; i < x.length; i++) if (Math.abs(x[i]) > amax) [amax, at] = [Math.abs(x[i]), i];
        if (g === 'tensor') expect(q.codes[at] & 0x7f).toBe(0x7e);
      }
    }
  });

  test('tile: last tile shorter, scales [rows, ceil(n/tile)], NaN/inf/-0 handling', () => {
    const x = new Float32Array([1, -2, NaN, Infinity, -Infinity, -0, 0, 3.5]);
    const q = fp8Quantize(x, [2, 4], { granularity: 'tile', tileSize: 3 });
    expect(q.scalesShape).toEqual([2, 2]);
    // row 0 tiles: [1, -2, NaN] amax 2; [inf] no finite -> 1. row 1: [-inf, -0, 0] -> 1; [3.5]
    expect(Array.from(q.scales)).toEqual([Math.fround(2 / 448), 1, 1, Math.fround(3.5 / 448)]);
    expect(q.codes[1]).toBe(0xfe); // -2 / (2/448) = -448
    expect(q.codes[2]).toBe(0x7f); // NaN
    expect(q.codes[3]).toBe(0x7e); // +inf saturates
    expect(q.codes[4]).toBe(0xfe); // -inf saturates
    expect(q.codes[5]).toBe(0x80); // -0
    expect(q.codes[6]).toBe(0x00);
    expect(q.codes[7]).toBe(0x7e);
  });
});

describe('latent cache token layout', () => {
  test('bytes per token: 656 for fp8 at dC=512, dR=64 (FlashMLA), f32/bf16 plain', () => {
    expect(bytesPerToken('fp8', 512, 64)).toBe(656);
    expect(bytesPerToken('fp8', 130, 6)).toBe(130 + 8 + 12);
    expect(bytesPerToken('f32', 512, 64)).toBe(2304);
    expect(bytesPerToken('bf16', 512, 64)).toBe(1152);
  });

  test('fp8 token: codes, little-endian f32 scales, bf16 k_pe', () => {
    const dC = 130;
    const dR = 2;
    const c = new Float32Array(dC).fill(0.5);
    c[0] = 448 * 0.25; // tile 0 amax 112 -> scale 0.25
    c[129] = -3; // tile 1 = [128, 130): amax 3
    const b = encodeToken('fp8', c, [1.5, -0.1], dC, dR);
    expect(b.length).toBe(130 + 8 + 4);
    expect(b[0]).toBe(0x7e);
    expect(b[1]).toBe(e4m3Encode(0.5 / 0.25));
    expect(b[129]).toBe(0xfe);
    // scale 0.25 = 0x3e800000 little-endian
    expect(Array.from(b.subarray(130, 134))).toEqual([0x00, 0x00, 0x80, 0x3e]);
    // k_pe 1.5 = bf16 0x3fc0 little-endian
    expect(Array.from(b.subarray(138, 140))).toEqual([0xc0, 0x3f]);
    const d = decodeToken('fp8', b, 0, dC, dR);
    expect(d.c[0]).toBe(112);
    expect(d.c[1]).toBe(0.5);
    expect(d.k[0]).toBe(1.5);
    expect(d.k[1]).toBe(bf16BitsToF32(0xbdcd)); // -0.1 in bf16
  });

  test('f32 and bf16 tokens decode back to the stored values', () => {
    const rng = new Rng('token layout');
    const c = rng.normalF32(20);
    const k = rng.normalF32(4);
    for (const dt of ['f32', 'bf16', 'fp8'] as const) {
      const st = storedValues(dt, c, k, 20, 4);
      const d = decodeToken(dt, encodeToken(dt, c, k, 20, 4), 0, 20, 4);
      expect(Array.from(d.c)).toEqual(Array.from(st.c));
      expect(Array.from(d.k)).toEqual(Array.from(st.k));
    }
  });
});
