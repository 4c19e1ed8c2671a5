/**
 * fp8Quantize / fp8Dequantize: codes and scales bit-exact against the reference e4m3fn
 * encoder and group-scale rule, for every granularity, with and without power-of-two scales,
 * on Gaussian data of mixed magnitudes and on special values (NaN, ±inf, -0, all-zero and
 * all-NaN groups, tiny and huge values). The raw encoder is exercised through granularity
 * 'tensor' on crafted data whose amax is exactly 448 (scale 1): every e4m3 value, every
 * rounding midpoint (ties to even) and its neighbours, subnormal ties, signed zeros.
 *
 * Tolerance: none — codes, scales and dequantized values are exact functions of the inputs.
 * Saturation of finite values cannot occur inside a group (scale = amax/448 makes |x/scale|
 * ≤ 448 up to one f32 rounding); ±inf inputs saturate to ±448 (0x7E / 0xFE).
 */
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import * as fp8 from '../reference/fp8';
import { expectEqual } from '../reference/compare';
import { f32FromBits } from '../reference/dtype';
import { Rng } from '../reference/rng';
import { expectRejects, implOpts, table, withImpls, type ImplName } from '../ops/util';
import { expectRejectsOneOf } from './util';

const math = Math; // aliased: global lookups are slow under jest's vm context
const numIsNaN = Number.isNaN;

interface QCase {
  shape: number[];
  granularity: fp8.Granularity;
  tileSize?: number;
  pow2Scale: boolean;
  data: 'normal' | 'special' | 'tiny';
}

const cases: QCase[] = [];
{
  let rot = 0;
  const shapes = [[1, 128], [3, 300], [2, 3, 257], [0, 128], [5], [4, 1], [7, 512], [1, 129]];
  for (const shape of shapes) {
    for (const granularity of ['tensor', 'token', 'tile'] as const) {
      for (const pow2Scale of [false, true]) {
        const data = (['normal', 'special', 'tiny'] as const)[rot % 3];
        const tileSize = granularity === 'tile' ? [undefined, 128, 64, 32, 7][rot % 5] : undefined;
        cases.push({ shape, granularity, pow2Scale, data, ...(tileSize === undefined ? {} : { tileSize }) });
        rot++;
      }
    }
  }
  cases.push({ shape: [16, 7168], granularity: 'tile', pow2Scale: false, data: 'normal' }); // V3 activation tiles
  cases.push({ shape: [16, 7168], granularity: 'tile', pow2Scale: true, data: 'special' });
}

function makeX(c: QCase, rng: Rng): Float32Array {
  const total = c.shape.reduce((a, b) => a * b, 1);
  const n = c.shape[c.shape.length - 1];
  const x = new Float32Array(total);
  for (let i = 0; i < total; i++) {
    const row = n === 0 ? 0 : math.floor(i / n);
    x[i] = rng.normal() * 10 ** ((row % 7) - 3) * (1 + ((i % n) >> 5));
  }
  if (c.data === 'tiny') {
    // amax around 1e-35..1e-30: scales ~1e-38 (near the f32 normal limit), values hit the
    // e4m3 subnormals after scaling
    for (let i = 0; i < total; i++) x[i] = rng.normal() * 1e-33;
  } else if (c.data === 'special') {
    const sp = [NaN, Infinity, -Infinity, -0, 0, 3e38, -3e38, 1e-38, -1e-45, 448, -448, 1];
    for (let i = 0; i < total; i++) if (rng.next() < 0.15) x[i] = sp[rng.int(0, sp.length)];
    if (total >= 2 * n && n > 0) {
      x.fill(0, 0, n); // an all-zero row: scale 1
      x.fill(NaN, n, 2 * n); // an all-NaN row: scale 1, codes 0x7F
    }
  }
  return x;
}

function scaleBits(v: number): number {
  const dv = new DataView(new ArrayBuffer(4));
  dv.setFloat32(0, v);
  return dv.getUint32(0);
}

async function runCase(c: QCase & { impl: ImplName }): Promise<void> {
  const rng = new Rng(c);
  const x = makeX(c, rng);
  const opts = { granularity: c.granularity, pow2Scale: c.pow2Scale, ...(c.tileSize ? { tileSize: c.tileSize } : {}) };
  const q = await ops.fp8Quantize(new Tensor('f32', c.shape, x), { ...opts, ...implOpts(c.impl) });
  const want = fp8.fp8Quantize(x, c.shape, opts);
  expect(q.codes.dtype).toBe('fp8_e4m3');
  expect(q.codes.shape).toEqual(c.shape);
  expect(q.scales.dtype).toBe('f32');
  expect(q.scales.shape).toEqual(want.scalesShape);
  expectEqual(Array.from(q.scales.data as Float32Array, scaleBits), Array.from(want.scales, scaleBits), { ctx: c, label: 'scales (f32 bits)', hex: true });
  expectEqual(q.codes.data as Uint8Array, want.codes, { ctx: c, label: 'codes', hex: true });
  // dequantize the library's codes with the library's scales: exact
  const d = await ops.fp8Dequantize(q.codes, q.scales, { granularity: c.granularity, ...(c.tileSize ? { tileSize: c.tileSize } : {}), ...implOpts(c.impl) });
  expect(d.dtype).toBe('f32');
  expect(d.shape).toEqual(c.shape);
  const wantD = fp8.fp8Dequantize(want.codes, c.shape, want.scales, { granularity: c.granularity, tileSize: c.tileSize });
  const got = d.data as Float32Array;
  for (let i = 0; i < wantD.length; i++) {
    const ok = numIsNaN(wantD[i]) ? numIsNaN(got[i]) : Object.is(got[i], wantD[i]);
    if (!ok) throw new Error(`dequantized [${i}]: got ${got[i]}, expected ${wantD[i]}; case ${JSON.stringify(c)}`);
  }
}

describe('fp8Quantize / fp8Dequantize vs the reference quantizer (bit-exact)', () => {
  test.each(table(withImpls(cases)))('%s', async (_name, c) => {
    await runCase(c);
  });
});

describe('the e4m3 encoder through granularity tensor (scale exactly 1)', () => {
  /** Values whose encoding is the encoder itself: amax = 448 makes the scale 448/448 = 1. */
  function crafted(): Float32Array {
    const v: number[] = [448];
    for (let c = 0; c < 256; c++) {
      if (fp8.isE4m3NaN(c)) continue;
      const a = fp8.E4M3_VALUES[c];
      v.push(a);
      // the midpoint to the next code up (same sign direction) and its f32 neighbours
      const nextCode = c === 0x7e || c === 0xfe ? -1 : c === 0x80 ? 0x81 : c + 1;
      if (nextCode >= 0 && !fp8.isE4m3NaN(nextCode)) {
        const mid = (a + fp8.E4M3_VALUES[nextCode]) / 2; // exact in f32 (5 significant bits)
        v.push(mid, math.fround(mid * (1 + 2 ** -20)), math.fround(mid * (1 - 2 ** -20)));
      }
    }
    v.push(NaN, Infinity, -Infinity, -0, 0, 2 ** -10, -(2 ** -10), 2 ** -11, -(2 ** -30), f32FromBits(1), -f32FromBits(1));
    v.push(447.99, 432, 431.99, 440, -440, 1e-7, 15 * 2 ** -10, -15 * 2 ** -10);
    return Float32Array.from(v);
  }

  test.each(table([{ impl: 'reference' as ImplName }, { impl: 'fast' as ImplName }, { impl: 'default' as ImplName }]))('%s', async (_name, c) => {
    const x = crafted();
    const q = await ops.fp8Quantize(new Tensor('f32', [x.length], x), { granularity: 'tensor', ...implOpts(c.impl) });
    expect(Array.from(q.scales.data as Float32Array)).toEqual([1]);
    const want = Array.from(x, (v) => fp8.e4m3Encode(v));
    expectEqual(q.codes.data as Uint8Array, want, { ctx: c, label: 'e4m3 codes', hex: true });
    // spot checks of the rules themselves
    const code = (v: number) => (q.codes.data as Uint8Array)[Array.from(x).findIndex((y) => Object.is(y, v))];
    expect(code(Infinity)).toBe(0x7e);
    expect(code(-Infinity)).toBe(0xfe);
    expect(code(-0)).toBe(0x80);
    expect(code(-(2 ** -30))).toBe(0x80);
    expect(code(432)).toBe(0x7e);
  });

  test.each(table([{ impl: 'reference' as ImplName }, { impl: 'fast' as ImplName }]))('amax in the f32 subnormal range: scale = fl32(amax / 448) is itself subnormal (no flush to zero) %s', async (_n, c) => {
    // amax = 1e-39 (a subnormal f32): the scale 1e-39/448 ≈ 2.2e-42 is subnormal too; the
    // spec's f32 division keeps it, so codes are still meaningful (amax -> 448)
    const x = Float32Array.from([1e-39, -5e-40, 2e-40, 0]);
    const q = await ops.fp8Quantize(new Tensor('f32', [4], x), { granularity: 'tensor', ...implOpts(c.impl) });
    const want = fp8.fp8Quantize(x, [4], { granularity: 'tensor' });
    expect(Array.from(q.scales.data as Float32Array)).toEqual(Array.from(want.scales));
    expectEqual(q.codes.data as Uint8Array, want.codes, { ctx: c, label: 'codes', hex: true });
  });

  test('a negative-NaN input encodes to a NaN code', async () => {
    const x = new Float32Array([1, 2, 3]);
    new Uint32Array(x.buffer)[1] = 0xffc00000; // -NaN
    const q = await ops.fp8Quantize(new Tensor('f32', [3], x), { granularity: 'tensor' });
    expect(fp8.isE4m3NaN((q.codes.data as Uint8Array)[1])).toBe(true);
  });

  test('pow2Scale rounds the scale up to a power of two (FlashMLA ue8m0-style); values stay within ±448', async () => {
    // amax 449 -> 449/448 -> 2; amax 56 -> 2^-3 exactly; amax 300 -> 0.669.. -> 1
    const x = Float32Array.from([449, -1, 56, 3, 300, -299]);
    const q = await ops.fp8Quantize(new Tensor('f32', [3, 2], x), { granularity: 'token', pow2Scale: true });
    expect(Array.from(q.scales.data as Float32Array)).toEqual([2, 0.125, 1]);
    expect(Array.from(q.codes.data as Uint8Array)).toEqual(Array.from([224.5, -0.5, 448, 24, 300, -299], (v) => fp8.e4m3Encode(v)));
  });
});

describe('fp8 bad inputs', () => {
  const x = () => new Tensor('f32', [2, 8], new Float32Array(16));
  const codes = () => new Tensor('fp8_e4m3', [2, 8], new Uint8Array(16));
  const bad: { name: string; code: string; call: () => Promise<unknown> }[] = [
    { name: 'quantize: x bf16', code: 'E_DTYPE', call: () => ops.fp8Quantize(new Tensor('bf16', [2, 8], new Uint16Array(16)), { granularity: 'tile' }) },
    { name: 'quantize: tileSize 0', code: 'E_RANGE', call: () => ops.fp8Quantize(x(), { granularity: 'tile', tileSize: 0 }) },
    { name: 'quantize: granularity bogus', code: 'E_ARG', call: () => ops.fp8Quantize(x(), { granularity: 'row' as 'tile' }) },
    { name: 'dequantize: codes f32', code: 'E_DTYPE', call: () => ops.fp8Dequantize(x(), new Tensor('f32', [1], new Float32Array(1)), { granularity: 'tensor' }) },
    { name: 'dequantize: token scales [3] for 2 rows', code: 'E_SHAPE', call: () => ops.fp8Dequantize(codes(), new Tensor('f32', [3], new Float32Array(3)), { granularity: 'token' }) },
    { name: 'dequantize: tile scales [2, 2] for tile 128 of n 8', code: 'E_SHAPE', call: () => ops.fp8Dequantize(codes(), new Tensor('f32', [2, 2], new Float32Array(4)), { granularity: 'tile' }) },
    { name: 'dequantize: tensor scales [2]', code: 'E_SHAPE', call: () => ops.fp8Dequantize(codes(), new Tensor('f32', [2], new Float32Array(2)), { granularity: 'tensor' }) },
    { name: 'dequantize: scales bf16', code: 'E_DTYPE', call: () => ops.fp8Dequantize(codes(), new Tensor('bf16', [1], new Uint16Array(1)), { granularity: 'tensor' }) },
  ];
  test.each(bad.map((b) => [`${b.code} ${b.name}`, b] as [string, (typeof bad)[number]]))('%s', async (_n, b) => {
    if (b.code === 'E_ARG') {
      // a bad option string: E_ARG, or E_RANGE as a bad value; both name it
      const e = await expectRejectsOneOf(b.call, ['E_ARG', 'E_RANGE'], { name: b.name });
      expect(e.message).toMatch(/granularity/);
      return;
    }
    await expectRejects(b.call, b.code, [], { name: b.name });
  });
});
