/**
 * Self-tests of the float64 references: known bit patterns, hand-computed values and
 * properties, so that an ops test failure can be blamed on the library, not the reference.
 */
import {
  bf16BitsToF32,
  f16BitsToF32,
  f32Bits,
  f32FromBits,
  f32ToBf16Bits,
  f32ToF16Bits,
} from './dtype';
import { Rng } from './rng';
import * as ref from './ops';
import { checkClose, checkEqual, cosineDifference } from './compare';

describe('bf16 encoder', () => {
  test.each<[string, number, number]>([
    ['1.0', 1, 0x3f80],
    ['-2', -2, 0xc000],
    ['0', 0, 0x0000],
    ['-0', -0, 0x8000],
    ['inf', Infinity, 0x7f80],
    ['-inf', -Infinity, 0xff80],
    ['pi', Math.PI, 0x4049], // f32 pi = 0x40490fdb, dropped 0x0fdb < 0x8000 -> down
    ['1+2^-8 tie -> even (down)', 1 + 2 ** -8, 0x3f80],
    ['1+3*2^-8 tie -> even (up)', 1 + 3 * 2 ** -8, 0x3f82],
    ['1+2^-8+2^-20 above tie -> up', 1 + 2 ** -8 + 2 ** -20, 0x3f81],
    ['max f32 -> inf', f32FromBits(0x7f7fffff), 0x7f80],
    ['largest bf16 stays', f32FromBits(0x7f7f0000), 0x7f7f],
    ['smallest f32 subnormal -> 0 (tie to even)', f32FromBits(0x00000001), 0x0000],
    ['f32 subnormal 0x00018000 -> 0x0002 (tie, odd up)', f32FromBits(0x00018000), 0x0002],
  ])('%s', (_name, x, bits) => {
    expect(f32ToBf16Bits(x)).toBe(bits);
  });

  test('NaN stays NaN (both signs, quiet and signalling payloads)', () => {
    for (const b of [0x7fc00000, 0xffc00000, 0x7f800001, 0x7f810000, 0xff800001]) {
      const x = f32FromBits(b);
      // JS may canonicalise NaN payloads; whatever arrives, it must encode to a NaN
      expect(Number.isNaN(bf16BitsToF32(f32ToBf16Bits(x)))).toBe(true);
    }
  });

  test('decode known patterns', () => {
    expect(bf16BitsToF32(0x3f80)).toBe(1);
    expect(bf16BitsToF32(0x7f7f)).toBe(3.3895313892515355e38);
    expect(bf16BitsToF32(0x0001)).toBe(2 ** -133);
    expect(Object.is(bf16BitsToF32(0x8000), -0)).toBe(true);
    expect(bf16BitsToF32(0xff80)).toBe(-Infinity);
  });

  test('round trip of every non-NaN bf16 pattern', () => {
    for (let h = 0; h < 0x10000; h++) {
      const v = bf16BitsToF32(h);
      if (Number.isNaN(v)) continue;
      if (f32ToBf16Bits(v) !== h) throw new Error(`bf16 0x${h.toString(16)} -> ${v} -> 0x${f32ToBf16Bits(v).toString(16)}`);
    }
  });

  test('nearest property on random f32 values (independent of the bit trick)', () => {
    const rng = new Rng('bf16 nearest');
    for (let n = 0; n < 20000; n++) {
      const x = f32FromBits(rng.nextU32());
      if (!Number.isFinite(x)) continue;
      const h = f32ToBf16Bits(x);
      const v = bf16BitsToF32(h);
      if (!Number.isFinite(v)) continue; // overflow handled by the table above
      for (const nb of [h - 1, h + 1]) {
        const w = bf16BitsToF32(nb & 0xffff);
        if (!Number.isFinite(w) || Math.sign(w) !== Math.sign(v)) continue;
        const dv = Math.abs(x - v);
        const dw = Math.abs(x - w);
        if (dw < dv || (dw === dv && (h & 1) === 1)) throw new Error(`x=${x}: got 0x${h.toString(16)}, neighbour 0x${nb.toString(16)} nearer/even`);
      }
    }
  });
});

describe('f16 encoder', () => {
  test.each<[string, number, number]>([
    ['1.0', 1, 0x3c00],
    ['-2', -2, 0xc000],
    ['0.5', 0.5, 0x3800],
    ['0.1', 0.1, 0x2e66],
    ['1/3', 1 / 3, 0x3555],
    ['0', 0, 0x0000],
    ['-0', -0, 0x8000],
    ['65504 (max finite)', 65504, 0x7bff],
    ['65519 rounds down to max', 65519, 0x7bff],
    ['65520 (tie, to even) -> inf', 65520, 0x7c00],
    ['-65520 -> -inf', -65520, 0xfc00],
    ['1e6 -> inf', 1e6, 0x7c00],
    ['inf', Infinity, 0x7c00],
    ['-inf', -Infinity, 0xfc00],
    ['2^-14 smallest normal', 2 ** -14, 0x0400],
    ['2^-14 - 2^-24 largest subnormal', 2 ** -14 - 2 ** -24, 0x03ff],
    ['2^-24 smallest subnormal', 2 ** -24, 0x0001],
    ['2^-25 (tie) -> 0', 2 ** -25, 0x0000],
    ['-2^-25 -> -0', -(2 ** -25), 0x8000],
    ['1.5*2^-25 -> 2^-24', 1.5 * 2 ** -25, 0x0001],
    ['3*2^-25 (tie) -> 2*2^-24 (even)', 3 * 2 ** -25, 0x0002],
    ['5*2^-25 (tie) -> 2*2^-24 (even)', 5 * 2 ** -25, 0x0002],
    ['1+2^-11 (tie) -> 1', 1 + 2 ** -11, 0x3c00],
    ['1+3*2^-11 (tie) -> 1+2^-9', 1 + 3 * 2 ** -11, 0x3c02],
    ['2047.5 -> 2048 (tie, even mantissa)', 2047.5, 0x6800],
    ['2^-14 - 2^-25 (tie subnormal->normal)', 2 ** -14 - 2 ** -25, 0x0400],
    ['f32 1e-8 -> 0', 1e-8, 0x0000],
  ])('%s', (_name, x, bits) => {
    expect(f32ToF16Bits(x)).toBe(bits);
  });

  test('NaN stays NaN', () => {
    expect(Number.isNaN(f16BitsToF32(f32ToF16Bits(NaN)))).toBe(true);
    expect(Number.isNaN(f16BitsToF32(f32ToF16Bits(f32FromBits(0xffc00000))))).toBe(true);
    expect(Number.isNaN(f16BitsToF32(0x7c01))).toBe(true);
    expect(Number.isNaN(f16BitsToF32(0xfe00))).toBe(true);
  });

  test('decode known patterns', () => {
    expect(f16BitsToF32(0x3c00)).toBe(1);
    expect(f16BitsToF32(0x7bff)).toBe(65504);
    expect(f16BitsToF32(0x0001)).toBe(2 ** -24);
    expect(f16BitsToF32(0x03ff)).toBe(2 ** -14 - 2 ** -24);
    expect(f16BitsToF32(0xc000)).toBe(-2);
    expect(f16BitsToF32(0x7c00)).toBe(Infinity);
    expect(Object.is(f16BitsToF32(0x8000), -0)).toBe(true);
  });

  test('round trip of every non-NaN f16 pattern', () => {
    for (let h = 0; h < 0x10000; h++) {
      const v = f16BitsToF32(h);
      if (Number.isNaN(v)) continue;
      if (f32ToF16Bits(v) !== h) throw new Error(`f16 0x${h.toString(16)} -> ${v} -> 0x${f32ToF16Bits(v).toString(16)}`);
    }
  });

  test('nearest-even property on random f32 values in the f16 range', () => {
    const rng = new Rng('f16 nearest');
    for (let n = 0; n < 20000; n++) {
      const x = Math.fround((rng.next() < 0.5 ? -1 : 1) * 2 ** rng.uniform(-27, 16));
      const h = f32ToF16Bits(x);
      const v = f16BitsToF32(h);
      if (!Number.isFinite(v)) {
        if (Math.abs(x) < 65520) throw new Error(`x=${x} overflowed`);
        continue;
      }
      for (const nb of [h - 1, h + 1]) {
        if ((nb & 0x7fff) === 0x7fff || nb < 0) continue;
        const w = f16BitsToF32(nb & 0xffff);
        if (!Number.isFinite(w) || (w !== 0 && v !== 0 && Math.sign(w) !== Math.sign(v))) continue;
        const dv = Math.abs(x - v);
        const dw = Math.abs(x - w);
        if (dw < dv || (dw === dv && (h & 1) === 1)) throw new Error(`x=${x}: got 0x${h.toString(16)}, neighbour 0x${nb.toString(16)} nearer/even`);
      }
    }
  });

  test('encoders round to f32 first (f32 is what the library converts)', () => {
    // 1 + 2^-11 + 2^-40 is above the f16 tie in double, but rounds to 1 + 2^-11 in f32 (a tie -> 1)
    expect(f32ToF16Bits(1 + 2 ** -11 + 2 ** -40)).toBe(0x3c00);
    expect(f32Bits(1)).toBe(0x3f800000);
  });
});

describe('rng', () => {
  test('deterministic per seed, different across seeds', () => {
    const a = new Rng({ op: 'x', n: 3 });
    const b = new Rng({ op: 'x', n: 3 });
    const c = new Rng({ op: 'x', n: 4 });
    const sa = Array.from({ length: 8 }, () => a.nextU32());
    expect(Array.from({ length: 8 }, () => b.nextU32())).toEqual(sa);
    expect(Array.from({ length: 8 }, () => c.nextU32())).not.toEqual(sa);
  });

  test('uniform and normal moments', () => {
    const r = new Rng(12345);
    const n = 100000;
    let su = 0;
    let sn = 0;
    let sn2 = 0;
    let outside = 0;
    for (let i = 0; i < n; i++) {
      const u = r.uniform();
      if (!(u >= 0 && u < 1)) outside++;
      su += u;
      const z = r.normal();
      sn += z;
      sn2 += z * z;
    }
    expect(outside).toBe(0);
    // 6-sigma bounds: sd(mean U) = 1/sqrt(12 n), sd(mean Z) = 1/sqrt(n), sd(mean Z^2) = sqrt(2/n)
    expect(Math.abs(su / n - 0.5)).toBeLessThan(6 / Math.sqrt(12 * n));
    expect(Math.abs(sn / n)).toBeLessThan(6 / Math.sqrt(n));
    expect(Math.abs(sn2 / n - 1)).toBeLessThan(6 * Math.sqrt(2 / n));
  });
});

describe('rope tables (YaRN) by hand', () => {
  // DeepSeek-V2's rope_scaling: factor 40, original 4096, beta_fast 32, beta_slow 1, on 64 rotary dims
  const yarn = { factor: 40, originalMaxPositionEmbeddings: 4096, betaFast: 32, betaSlow: 1, mscale: 0.707, mscaleAllDim: 0.707 };

  test('correction range: dim(32 rot) = 64 ln(4096/(64 pi)) / (2 ln 1e4) = 10.47 -> 10; dim(1 rot) = 22.51 -> 23', () => {
    expect(ref.yarnFindCorrectionDim(32, 64, 10000, 4096)).toBeCloseTo((64 * Math.log(4096 / (64 * Math.PI))) / (2 * Math.log(10000)), 12);
    expect(ref.yarnFindCorrectionDim(32, 64, 10000, 4096)).toBeCloseTo(10.4722, 3);
    expect(ref.yarnFindCorrectionDim(1, 64, 10000, 4096)).toBeCloseTo(22.513, 2);
    expect(ref.yarnFindCorrectionRange(32, 1, 64, 10000, 4096)).toEqual([10, 23]);
    // clamping: tiny original context -> negative low clamps to 0; huge -> high clamps to dim-1
    expect(ref.yarnFindCorrectionRange(32, 1, 64, 10000, 16)[0]).toBe(0);
    expect(ref.yarnFindCorrectionRange(32, 1, 64, 10000, 1e12)[1]).toBe(63);
  });

  test('mscale: 0.1 m ln(s) + 1, 1 when s <= 1', () => {
    expect(ref.yarnGetMscale(40, 1)).toBeCloseTo(1 + 0.1 * Math.log(40), 15);
    expect(ref.yarnGetMscale(40, 0)).toBe(1);
    expect(ref.yarnGetMscale(1, 5)).toBe(1);
    expect(ref.yarnGetMscale(0.5, 5)).toBe(1);
    expect(ref.ropeMscale(yarn)).toBe(1); // V2: mscale == mscale_all_dim
    expect(ref.ropeMscale({ ...yarn, mscale: 1, mscaleAllDim: 0 })).toBeCloseTo(1.3688879454113936, 14);
    expect(ref.ropeMscale(null)).toBe(1);
  });

  test('ramp mask: clamp((i-low)/(high-low)), singular range nudged by 0.001', () => {
    const r = ref.yarnLinearRampMask(10, 23, 32);
    expect(r[0]).toBe(0);
    expect(r[10]).toBe(0);
    expect(r[16]).toBeCloseTo(6 / 13, 15);
    expect(r[23]).toBe(1);
    expect(r[31]).toBe(1);
    const s = ref.yarnLinearRampMask(5, 5, 8);
    expect(s[4]).toBe(0);
    expect(s[5]).toBe(0);
    expect(s[6]).toBe(1);
  });

  test('inv_freq: extra below low, inter above high, blend between', () => {
    const f = ref.ropeInvFreq(64, 10000, yarn);
    expect(f[0]).toBe(1); // extrapolation: 10000^0
    expect(f[10]).toBeCloseTo(10000 ** (-20 / 64), 15);
    // i = 16: extra = 10000^-0.5 = 0.01, ramp 6/13: 0.01 (7/13 + 6/13/40) = 0.01 * 286/520 = 0.0055
    expect(f[16]).toBeCloseTo(0.0055, 15);
    expect(f[31] / (10000 ** (-62 / 64) / 40)).toBeCloseTo(1, 14);
    const plain = ref.ropeInvFreq(4, 10000, null);
    expect(plain[0]).toBe(1);
    expect(plain[1]).toBeCloseTo(0.01, 16);
  });

  test('table values at known points', () => {
    const t = ref.ropeTable({ dim: 64, maxPositions: 101, theta: 10000, yarn: { ...yarn, mscale: 1, mscaleAllDim: 0 } });
    const ms = 1 + 0.1 * Math.log(40);
    expect(t.cos[0 * 32 + 5]).toBeCloseTo(ms, 14); // position 0: cos 0 = 1, times mscale
    expect(t.sin[0 * 32 + 5]).toBe(0);
    expect(t.cos[1 * 32 + 0]).toBeCloseTo(Math.cos(1) * ms, 14);
    expect(t.sin[7 * 32 + 0]).toBeCloseTo(Math.sin(7) * ms, 14);
    expect(t.cos[100 * 32 + 16]).toBeCloseTo(Math.cos(0.55) * ms, 14);
    expect(t.sin[100 * 32 + 16]).toBeCloseTo(Math.sin(0.55) * ms, 14);
    const p = ref.ropeTable({ dim: 4, maxPositions: 3 });
    expect(Array.from(p.cos.slice(4, 6))).toEqual([Math.cos(2), Math.cos(2 * (1 / 10000 ** 0.5))]);
  });
});

describe('rope reference', () => {
  test('HF transcription equals the spec formula (interleaved and half-split)', () => {
    const rng = new Rng('rope ref');
    const T = 3;
    const H = 2;
    const d = 8;
    const table = ref.ropeTable({ dim: d, maxPositions: 10 });
    const x = Array.from({ length: T * H * d }, () => rng.normal());
    const pos = [0, 9, 4];
    for (const interleaved of [true, false]) {
      const out = ref.rope(x, T, H, d, pos, table, interleaved);
      for (let t = 0; t < T; t++) {
        for (let h = 0; h < H; h++) {
          const b = (t * H + h) * d;
          for (let i = 0; i < d / 2; i++) {
            const c = table.cos[pos[t] * (d / 2) + i];
            const s = table.sin[pos[t] * (d / 2) + i];
            const a0 = interleaved ? x[b + 2 * i] : x[b + i];
            const b0 = interleaved ? x[b + 2 * i + 1] : x[b + i + d / 2];
            expect(out[b + i]).toBeCloseTo(a0 * c - b0 * s, 14);
            expect(out[b + i + d / 2]).toBeCloseTo(b0 * c + a0 * s, 14);
          }
        }
      }
    }
  });

  test('position 0 with mscale 1 only de-interleaves', () => {
    const table = ref.ropeTable({ dim: 6, maxPositions: 1 });
    expect(Array.from(ref.rope([0, 1, 2, 3, 4, 5], 1, 1, 6, [0], table, true))).toEqual([0, 2, 4, 1, 3, 5]);
    expect(Array.from(ref.rope([0, 1, 2, 3, 4, 5], 1, 1, 6, [0], table, false))).toEqual([0, 1, 2, 3, 4, 5]);
  });
});

describe('other op references', () => {
  test('rmsNorm by hand', () => {
    // x = [3, 4]: mean square 12.5, eps 0 -> y = x / sqrt(12.5) * w
    const y = ref.rmsNorm([3, 4], 2, [1, 2], 0);
    expect(y[0]).toBeCloseTo(3 / Math.sqrt(12.5), 15);
    expect(y[1]).toBeCloseTo((4 / Math.sqrt(12.5)) * 2, 15);
    expect(Array.from(ref.rmsNorm([0, 0], 2, [1, 1], 1e-6))).toEqual([0, 0]);
  });

  test('softmax by hand', () => {
    const y = ref.softmax([0, Math.log(3), -Infinity], 3);
    expect(y[0]).toBeCloseTo(0.25, 15);
    expect(y[1]).toBeCloseTo(0.75, 15);
    expect(y[2]).toBe(0);
    expect(Array.from(ref.softmax([-Infinity, -Infinity], 2)).every(Number.isNaN)).toBe(true);
    expect(Array.from(ref.softmax([1, NaN], 2)).every(Number.isNaN)).toBe(true);
    const z = ref.softmax([1000, 999], 2, 0.5); // stable with large values
    expect(z[0]).toBeCloseTo(1 / (1 + Math.exp(-0.5)), 15);
  });

  test('silu by hand', () => {
    expect(ref.silu(0)).toBe(0);
    expect(ref.silu(1)).toBeCloseTo(1 / (1 + Math.exp(-1)), 15);
    expect(ref.silu(-1000)).toBeCloseTo(0, 300);
    expect(ref.silu(1000)).toBe(1000);
    expect(Array.from(ref.siluMulPacked([1, 2, 3, 4], 1, 2))).toEqual([ref.silu(1) * 3, ref.silu(2) * 4]);
  });

  test('gemm by hand', () => {
    // x [2,3], w [2,3]
    const { y, absDot } = ref.gemm([1, 2, 3, 4, 5, 6], 2, 3, [1, 0, -1, 2, 2, 2], 2);
    expect(Array.from(y)).toEqual([-2, 12, -2, 30]);
    expect(Array.from(absDot)).toEqual([4, 12, 10, 30]);
  });

  test('embedding by hand and range', () => {
    expect(Array.from(ref.embedding([2, 0], [1, 2, 3, 4, 5, 6], 3, 2))).toEqual([5, 6, 1, 2]);
    expect(() => ref.embedding([3], [1, 2, 3, 4, 5, 6], 3, 2)).toThrow(ref.RefError);
  });
});

describe('sampling reference', () => {
  test('splitmix64 matches the published SplitMix64 sequence for seed 0', () => {
    // SplitMix64 (Vigna) seeded with 0: outputs of mixing gamma, 2 gamma, 3 gamma
    expect(ref.splitmix64(ref.GOLDEN_GAMMA)).toBe(0xe220a8397b1dcdafn);
    expect(ref.splitmix64(2n * ref.GOLDEN_GAMMA)).toBe(0x6e789e6aa1b965f4n);
    expect(ref.splitmix64((3n * ref.GOLDEN_GAMMA) & ((1n << 64n) - 1n))).toBe(0x06c45d188009454fn);
    expect(ref.rowUniform(0n, 0)).toBe(Number(0xe220a8397b1dcdafn >> 11n) / 2 ** 53);
  });

  test('greedy: argmax, lowest id on ties', () => {
    expect(ref.sampleRow([1, 3, 3, -Infinity], 0, {})).toBe(1);
    expect(ref.sampleRow([-Infinity, -Infinity, 0], 0, {})).toBe(2);
  });

  test('draw by hand: [0, 0] at T=1, seed 0, row 0: u = 0.8833 -> id 1', () => {
    const u = ref.rowUniform(0n, 0);
    expect(u).toBeCloseTo(0.88331, 4);
    expect(ref.sampleRow([0, 0], 0, { temperature: 1 })).toBe(1);
    // the same with weights [3, 1] (logits ln3, 0): target 0.883*4 = 3.53 > 3 -> id 1; [7,1]: 7.07 < 7? no -> 1; [9,1] -> 0
    expect(ref.sampleRow([Math.log(3), 0], 0, { temperature: 1 })).toBe(1);
    expect(ref.sampleRow([Math.log(9), 0], 0, { temperature: 1 })).toBe(0);
  });

  test('top-k keeps the k highest (lower id on ties); top-p the shortest prefix', () => {
    const l = [1, 5, 5, 2, 4];
    const { kept } = ref.sampleCandidates(l, { temperature: 1, topK: 2 });
    expect(kept).toEqual([1, 2]);
    const k3 = ref.sampleCandidates(l, { temperature: 1, topK: 3 }).kept;
    expect(k3).toEqual([1, 2, 4]);
    // weights e^(l-5): [e^-4, 1, 1, e^-3, e^-1]; total 2.4364; p = 0.8 -> 1.949: 1, 2 (=2 >= 1.949)
    expect(ref.sampleCandidates(l, { temperature: 1, topP: 0.8 }).kept).toEqual([1, 2]);
    expect(ref.sampleCandidates(l, { temperature: 1, topP: 0.85 }).kept).toEqual([1, 2, 4]);
    expect(ref.sampleCandidates(l, { temperature: 1, topP: 1e-9 }).kept).toEqual([1]);
    // top-k then top-p over the remaining ones
    expect(ref.sampleCandidates(l, { temperature: 1, topK: 3, topP: 0.99 }).kept).toEqual([1, 2, 4]);
  });

  test('rejects NaN, +inf and all -inf rows', () => {
    expect(() => ref.sampleRow([0, NaN], 0, {})).toThrow(ref.RefError);
    expect(() => ref.sampleRow([0, Infinity], 0, { temperature: 1 })).toThrow(ref.RefError);
    expect(() => ref.sampleRow([-Infinity, -Infinity], 0, { temperature: 1 })).toThrow(ref.RefError);
  });
});

describe('comparators', () => {
  test('NaN and inf positions are checked before numbers', () => {
    expect(checkClose([1, NaN], [1, 2], { abs: 10 })).toMatch(/special-value mismatch at \[1\]/);
    expect(checkClose([1, 2], [1, NaN], { abs: 10 })).toMatch(/special-value mismatch at \[1\]/);
    expect(checkClose([Infinity], [-Infinity], { abs: 10 })).toMatch(/special-value/);
    expect(checkClose([1e30], [Infinity], { rel: 1 })).toMatch(/special-value/);
    expect(checkClose([NaN, Infinity], [NaN, Infinity])).toBeNull();
  });

  test('reports the worst index and the case', () => {
    const msg = checkClose([1, 2.5, 3.1], [1, 2, 3], { abs: 0.01, ctx: { M: 3 } });
    expect(msg).toMatch(/2 of 3/);
    expect(msg).toMatch(/worst at \[1\]/);
    expect(msg).toMatch(/"M":3/);
    expect(checkClose([1, 2.001], [1, 2], { rel: 1e-3 })).toBeNull();
    expect(checkClose([1, 2.01], [1, 2], { bound: [0, 0.02] })).toBeNull();
  });

  test('exact equality with NaN classes', () => {
    const isNaN16 = (b: number) => (b & 0x7c00) === 0x7c00 && (b & 0x3ff) !== 0;
    expect(checkEqual([0x7e00, 1], [0x7c01, 1], { isNaNBits: isNaN16 })).toBeNull();
    expect(checkEqual([0x7c00, 1], [0x7c01, 1], { isNaNBits: isNaN16 })).toMatch(/first at \[0\]/);
  });

  test('cosine difference', () => {
    expect(cosineDifference([1, 0], [1, 0])).toBe(0);
    expect(cosineDifference([0, 1], [1, 0])).toBe(1);
    expect(cosineDifference([0, 0], [0, 0])).toBe(0);
  });
});
