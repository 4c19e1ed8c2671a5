/**
 * cast among f32, bf16 and f16: round to nearest even, NaN stays NaN, f16 overflow gives
 * inf, subnormals kept. Conversions are exactly specified, so the tolerance is 0: the result
 * bits must equal the reference encoder's, except that any NaN encoding matches a NaN.
 * Widening (bf16/f16 → f32) and bf16 ↔ f16 are checked exhaustively over all 65536 inputs.
 */
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import { expectEqual } from '../reference/compare';
import { decode, encode, f32FromBits, type FloatDType } from '../reference/dtype';
import * as ref from '../reference/ops';
import { Rng } from '../reference/rng';
import { expectShape, implOpts, table, withImpls, type ImplName } from './util';

const isNaNBits: Record<FloatDType, (b: number) => boolean> = {
  f32: (b) => ((b >>> 23) & 0xff) === 0xff && (b & 0x7fffff) !== 0,
  bf16: (b) => ((b >>> 7) & 0xff) === 0xff && (b & 0x7f) !== 0,
  f16: (b) => ((b >>> 10) & 0x1f) === 0x1f && (b & 0x3ff) !== 0,
};

/** Bit patterns of a float tensor's data (f32 as uint32). */
function bitsOf(t: Tensor): Uint32Array | Uint16Array {
  const d = t.data;
  if (d instanceof Uint16Array || Object.prototype.toString.call(d) === '[object Uint16Array]') return d as Uint16Array;
  const f = d as Float32Array;
  return new Uint32Array(f.buffer, f.byteOffset, f.length);
}

/** Interesting f32 inputs: zeros, infs, NaNs, f16/bf16 boundaries and ties, f32 extremes. */
const SPECIALS: number[] = [
  0, -0, Infinity, -Infinity, NaN, f32FromBits(0xffc00000), f32FromBits(0x7f800001), 1, -1, 0.1, 1 / 3,
  65504, 65519, 65520, -65520, 65536, 1e6, 2 ** -14, 2 ** -14 - 2 ** -24, 2 ** -24, -(2 ** -24), 2 ** -25, 1.5 * 2 ** -25,
  3 * 2 ** -25, 2 ** -26, 1 + 2 ** -11, 1 + 3 * 2 ** -11, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20,
  f32FromBits(0x7f7fffff), f32FromBits(0xff7fffff), f32FromBits(0x7f7f8000), f32FromBits(0x7f7f7fff), f32FromBits(0x00000001),
  f32FromBits(0x00800000), f32FromBits(0x00018000), 2047.5, 3.140625, -123456.789,
];

interface CastCase {
  from: FloatDType;
  to: FloatDType;
  n: number;
  shape: 'flat' | '2d' | '3d';
  data: 'specials+random' | 'exhaustive';
}

const cases: CastCase[] = [];
for (const to of ['bf16', 'f16', 'f32'] as const) {
  for (const n of [0, 1, 3, 7, 17, 33, 127, 4099]) {
    cases.push({ from: 'f32', to, n, shape: n % 3 === 0 && n > 0 ? '2d' : 'flat', data: 'specials+random' });
  }
  cases.push({ from: 'f32', to, n: 3 * 4 * 5, shape: '3d', data: 'specials+random' });
}
for (const from of ['bf16', 'f16'] as const) {
  for (const to of ['f32', 'bf16', 'f16'] as const) cases.push({ from, to, n: 65536, shape: 'flat', data: 'exhaustive' });
  for (const to of ['f32', 'bf16', 'f16'] as const) cases.push({ from, to, n: 7, shape: 'flat', data: 'exhaustive' });
}

function shapeOf(c: CastCase): number[] {
  if (c.shape === '2d') return [3, c.n / 3];
  if (c.shape === '3d') return [3, 4, c.n / 12];
  return [c.n];
}

/** Input tensor and its exact values. */
function makeInput(c: CastCase): { t: Tensor; values: Float64Array } {
  const shape = shapeOf(c);
  if (c.from === 'f32') {
    const rng = new Rng(c);
    const v = new Float32Array(c.n);
    for (let i = 0; i < c.n; i++) {
      if (i < SPECIALS.length) v[i] = SPECIALS[i];
      else if (i % 2 === 0) v[i] = f32FromBits(rng.nextU32()); // any bit pattern (all exponents, NaNs)
      else v[i] = (rng.next() < 0.5 ? -1 : 1) * 2 ** rng.uniform(-28, 17); // the f16 range and around it
    }
    return { t: new Tensor('f32', shape, v), values: Float64Array.from(v) };
  }
  // every bit pattern (n = 65536) or a rotating window of them (n small)
  const bits = new Uint16Array(c.n);
  for (let i = 0; i < c.n; i++) bits[i] = c.n === 65536 ? i : (0x7bfd + i * 0x0101) & 0xffff;
  return { t: new Tensor(c.from, shape, bits), values: decode(bits, c.from) };
}

type Case = CastCase & { impl: ImplName };

describe('cast', () => {
  test.each(table(withImpls(cases)))('%s', async (_name, c: Case) => {
    const { t, values } = makeInput(c);
    const out = await ops.cast(t, c.to, implOpts(c.impl));
    expect(out.dtype).toBe(c.to);
    expectShape(out, shapeOf(c), c);
    const want = ref.cast(values, c.to);
    const wantBits = want instanceof Float32Array ? new Uint32Array(want.buffer) : want;
    expectEqual(bitsOf(out), wantBits, { ctx: c, label: `cast ${c.from}->${c.to} bits`, isNaNBits: isNaNBits[c.to], hex: true });
  });

  test('the reference encoder and the library agree on a round trip f32 -> 16-bit -> f32', async () => {
    const rng = new Rng('cast round trip');
    const v = rng.normalF32(1000, 100);
    for (const mid of ['bf16', 'f16'] as const) {
      const narrowed = await ops.cast(new Tensor('f32', [1000], v), mid);
      const back = await ops.cast(narrowed, 'f32');
      const want = decode(encode(v, mid), mid);
      expect(Array.from(back.data as Float32Array)).toEqual(Array.from(want));
    }
  });

  test('input tensor unchanged and output is a new tensor', async () => {
    const v = Float32Array.from([1.5, -2.25, 3]);
    const t = new Tensor('f32', [3], v);
    const out = await ops.cast(t, 'f32');
    expect(out).not.toBe(t);
    expect(Array.from(v)).toEqual([1.5, -2.25, 3]);
  });
});
