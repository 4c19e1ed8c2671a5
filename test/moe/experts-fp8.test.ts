/**
 * moeExperts with FP8 block-scaled routed experts (DeepSeek-V3's F8_E4M3 + weight_scale_inv):
 * gateUp [E, 2I, H] / down [E, H, I] hold e4m3 codes and gateUpScale [E, ceil(2I/128),
 * ceil(H/128)] / downScale [E, ceil(H/128), ceil(I/128)] the f32 scales of the 128×128 blocks
 * of the stacked matrices: w[e, r, c] = e4m3(code[e, r, c]) · scale[e, r/128, c/128].
 *
 * The reference decodes the codes itself from the bit pattern (1 sign, 4 exponent bits with
 * bias 7, 3 mantissa bits; exponent 0 = subnormal m·2^-9; 0x7f/0xff NaN, never drawn here),
 * multiplies by the block scale in float64 and runs the float64 SwiGLU-experts reference
 * (reference/moe.ts). Cases: H, I not multiples of 128 (a 128-row block of the stacked gateUp
 * that holds both gate and up rows: 2I = 144, 400), scales varying per block and expert, ids
 * -1 (with junk weights), T = 0, a bf16 shared expert beside the fp8 routed ones; every impl.
 *
 * Tolerance: experts.test.ts's bound with one more rounding per weight: the op forms
 * w = fl32(e4m3 · scale) (relative error ≤ u = 2^-24; e4m3 values have 4 significant bits and
 * the scale 24, so the product is not always an f32), which turns γ_H into γ_{H+1} for the
 * gate/up dot products and γ_N into γ_{N+1} for the down projection:
 *   bound = (γ_{N+1} + 17u)·absY + γ_{H+1}·dH·(1 + 2γ_{H+1}) + an f32 min-normal (FTZ).
 * And the op with impl 'reference' must equal, bit for bit, the same op run with f32 weights
 * holding fl32(e4m3 · scale) (gemm_ref's summation order does not depend on the row tiling).
 */
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import * as moe from '../reference/moe';
import { expectClose } from '../reference/compare';
import { Rng } from '../reference/rng';
import { F32_MIN_NORMAL, U32, caseName, expectRejects, f32Data, implOpts, table, withImpls, type ImplName } from '../ops/util';
import { gamma } from '../mla/util';

const math = Math; // aliased: global lookups are slow under jest's vm context
const BLOCK = 128;

/** e4m3 (OCP E4M3FN) code → value, from the definition. */
function e4m3(code: number): number {
  const sign = code & 0x80 ? -1 : 1;
  const e = (code >> 3) & 0xf;
  const m = code & 0x7;
  if (e === 0xf && m === 0x7) return NaN;
  if (e === 0) return sign * m * 2 ** -9;
  return sign * (1 + m / 8) * 2 ** (e - 7);
}

interface Fp8Case {
  T: number;
  H: number;
  I: number;
  E: number;
  k: number;
  /** bf16 shared expert intermediate size; 0: none */
  Is: number;
  pattern: 'route' | 'minus1';
}

const cases: Fp8Case[] = [
  { T: 0, H: 136, I: 72, E: 4, k: 2, Is: 0, pattern: 'route' },
  { T: 1, H: 136, I: 72, E: 4, k: 2, Is: 0, pattern: 'route' },
  { T: 7, H: 130, I: 200, E: 6, k: 3, Is: 0, pattern: 'minus1' },
  { T: 5, H: 8, I: 4, E: 3, k: 2, Is: 8, pattern: 'minus1' },
  { T: 33, H: 256, I: 128, E: 8, k: 6, Is: 64, pattern: 'route' },
  { T: 64, H: 72, I: 136, E: 16, k: 4, Is: 24, pattern: 'route' },
];

interface Fp8Matrix {
  codes: Tensor; // fp8_e4m3 [E, rows, cols]
  scale: Tensor; // f32 [E, ceil(rows/128), ceil(cols/128)]
  exact: Float64Array; // e4m3(code) · scale, float64
  f32: Float32Array; // fl32(e4m3(code) · scale)
}

/** Codes over subnormals, zeros of both signs and normals up to 2^5·1.875 (plus 448), and
 * per-block scales 2^[-2, 2] around 1/(12·sqrt(fanIn)) so activations stay O(1). */
function fp8Matrix(rng: Rng, E: number, rows: number, cols: number): Fp8Matrix {
  const n = E * rows * cols;
  const codes = new Uint8Array(n);
  for (let i = 0; i < n; i++) {
    const r = rng.next();
    if (r < 0.02) codes[i] = [0x00, 0x80, 0x01, 0x87, 0x7e, 0xfe][rng.int(0, 6)];
    else codes[i] = (rng.next() < 0.5 ? 0x80 : 0) | (rng.int(0, 13) << 3) | rng.int(0, 8);
    if ((codes[i] & 0x7f) === 0x7e && rng.next() < 0.9) codes[i] &= 0xf7; // keep 448 rare
  }
  const br = math.ceil(rows / BLOCK);
  const bc = math.ceil(cols / BLOCK);
  const scale = new Float32Array(E * br * bc);
  const base = 1 / (12 * math.sqrt(cols));
  for (let i = 0; i < scale.length; i++) scale[i] = base * 2 ** rng.uniform(-2, 2);
  const exact = new Float64Array(n);
  const f32 = new Float32Array(n);
  for (let e = 0; e < E; e++) {
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const i = (e * rows + r) * cols + c;
        exact[i] = e4m3(codes[i]) * scale[(e * br + math.floor(r / BLOCK)) * bc + math.floor(c / BLOCK)];
        f32[i] = exact[i];
      }
    }
  }
  return { codes: new Tensor('fp8_e4m3', [E, rows, cols], codes), scale: new Tensor('f32', [E, br, bc], scale), exact, f32 };
}

interface Prepared {
  x: Float32Array;
  ids: Int32Array;
  w: Float32Array;
  gateUp: Fp8Matrix;
  down: Fp8Matrix;
  shared: { gateUp: Tensor; down: Tensor } | null;
  want: Float64Array;
  bound: Float64Array;
}
const prepared = new Map<string, Prepared>();

/** bf16 bits of an f32 (round to nearest even) and back, for the shared expert. */
function bf16(values: Float32Array): { bits: Uint16Array; exact: Float64Array } {
  const u32 = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const bits = new Uint16Array(values.length);
  const exact = new Float64Array(values.length);
  const tmp = new Uint32Array(1);
  const f = new Float32Array(tmp.buffer);
  for (let i = 0; i < values.length; i++) {
    const u = u32[i];
    bits[i] = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
    tmp[0] = bits[i] << 16;
    exact[i] = f[0];
  }
  return { bits, exact };
}

function prepare(c: Fp8Case): Prepared {
  const key = caseName(c);
  const have = prepared.get(key);
  if (have) return have;
  const rng = new Rng(`fp8 ${key}`);
  const { T, H, I, E, k, Is } = c;
  const x = rng.normalF32(T * H);
  const ids = new Int32Array(T * k);
  const w = new Float32Array(T * k);
  if (c.pattern === 'route') {
    const r = moe.moeRoute(rng.normalF32(T * E, 2), T, E, { topK: k, method: 'greedy', normTopkProb: true });
    ids.set(r.ids);
    w.set(r.weights);
  } else {
    for (let i = 0; i < T * k; i++) {
      ids[i] = rng.next() < 0.3 ? -1 : rng.int(0, E);
      w[i] = ids[i] === -1 ? 9.5 : rng.uniform(0.05, 1); // junk weight on -1 slots: must be ignored
    }
  }
  const gateUp = fp8Matrix(rng, E, 2 * I, H);
  const down = fp8Matrix(rng, E, H, I);
  let shared: Prepared['shared'] = null;
  let sharedRef: { gateUp: Float64Array; down: Float64Array; I: number } | null = null;
  if (Is > 0) {
    const sg = bf16(rng.normalF32(2 * Is * H, 1 / math.sqrt(H)));
    const sd = bf16(rng.normalF32(H * Is, 1 / math.sqrt(Is)));
    shared = { gateUp: new Tensor('bf16', [2 * Is, H], sg.bits), down: new Tensor('bf16', [H, Is], sd.bits) };
    sharedRef = { gateUp: sg.exact, down: sd.exact, I: Is };
  }
  const r = moe.moeExperts(x, T, H, ids, w, k, { gateUp: gateUp.exact, down: down.exact, E, I }, sharedRef);
  const gN = gamma(k * I + Is + k + 3);
  const gH = gamma(H + 1);
  const bound = new Float64Array(T * H);
  for (let i = 0; i < T * H; i++) bound[i] = (gN + 17 * U32) * r.absY[i] + gH * r.dH[i] * (1 + 2 * gH);
  const p = { x, ids, w, gateUp, down, shared, want: r.y, bound };
  prepared.set(key, p);
  return p;
}

function run(c: Fp8Case, p: Prepared, impl: ImplName, asF32 = false): Promise<Tensor> {
  const experts = asF32
    ? { gateUp: new Tensor('f32', [c.E, 2 * c.I, c.H], p.gateUp.f32), down: new Tensor('f32', [c.E, c.H, c.I], p.down.f32) }
    : { gateUp: p.gateUp.codes, down: p.down.codes, gateUpScale: p.gateUp.scale, downScale: p.down.scale };
  return ops.moeExperts(new Tensor('f32', [c.T, c.H], p.x), new Tensor('i32', [c.T, c.k], p.ids),
    new Tensor('f32', [c.T, c.k], p.w), experts, p.shared, implOpts(impl));
}

describe('moeExperts, fp8 block-scaled experts, vs the float64 reference', () => {
  test('e4m3 decoding of the reference (spot values)', () => {
    expect([0x00, 0x80, 0x01, 0x07, 0x08, 0x38, 0x7e, 0xfe, 0x40].map(e4m3)).toEqual(
      [0, -0, 2 ** -9, 7 * 2 ** -9, 2 ** -6, 1, 448, -448, 2]);
    expect(e4m3(0x7f)).toBeNaN();
  });

  test.each(table(withImpls(cases)))('%s', async (_name, cc: Fp8Case & { impl: ImplName }) => {
    const { impl, ...c } = cc;
    const p = prepare(c);
    const y = await run(c, p, impl);
    expectClose(f32Data(y, [c.T, c.H], cc), p.want, { abs: F32_MIN_NORMAL, bound: p.bound, ctx: cc, label: 'moeExperts fp8 y' });
  });

  test.each(table(cases))('reference impl equals the f32 path on fl32(e4m3 · scale) bit for bit: %s', async (_n, c) => {
    const p = prepare(c);
    const a = (await run(c, p, 'reference')).data as Float32Array;
    const b = (await run(c, p, 'reference', true)).data as Float32Array;
    expect(Array.from(a)).toEqual(Array.from(b));
  });

  test('convention: scale rows tile the stacked [2I, H] gateUp (I = 72: block 0 = gate 0..71 + up 0..55)', async () => {
    // E = 1, H = 1, I = 72, x = 1: all codes 1.0 (0x38); gateUp block rows 0 (stacked rows
    // 0..127) and 1 (128..143 = up rows 56..71) scaled 2 and 3; down codes 1.0 scaled 1.
    // g_j = 2, u_j = 2 (j < 56) or 3 (j ≥ 56): y = Σ_j silu(2)·u_j = silu(2)·(56·2 + 16·3).
    const I = 72;
    const y = await ops.moeExperts(
      new Tensor('f32', [1, 1], Float32Array.from([1])),
      new Tensor('i32', [1, 1], Int32Array.from([0])),
      new Tensor('f32', [1, 1], Float32Array.from([1])),
      {
        gateUp: new Tensor('fp8_e4m3', [1, 2 * I, 1], new Uint8Array(2 * I).fill(0x38)),
        down: new Tensor('fp8_e4m3', [1, 1, I], new Uint8Array(I).fill(0x38)),
        gateUpScale: new Tensor('f32', [1, 2, 1], Float32Array.from([2, 3])),
        downScale: new Tensor('f32', [1, 1, 1], Float32Array.from([1])),
      },
    );
    const silu2 = 2 / (1 + math.exp(-2));
    expect((y.data as Float32Array)[0]).toBeCloseTo(silu2 * (56 * 2 + 16 * 3), 3);
  });
});

describe('moeExperts fp8 bad inputs', () => {
  const T = 2;
  const H = 130; // 2 column blocks
  const I = 3;
  const E = 2;
  const x = () => new Tensor('f32', [T, H], new Float32Array(T * H));
  const ids = () => new Tensor('i32', [T, 2], Int32Array.from([0, 1, 1, 0]));
  const w = () => new Tensor('f32', [T, 2], new Float32Array(T * 2));
  const f32 = (shape: number[], v = 1) => new Tensor('f32', shape, new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(v));
  const codes = (shape: number[]) => new Tensor('fp8_e4m3', shape, new Uint8Array(shape.reduce((a, b) => a * b, 1)));
  const gus = () => f32([E, 1, 2]);
  const dns = () => f32([E, 2, 1]);
  const fp8 = (o: { gateUpScale?: Tensor | null; downScale?: Tensor | null } = {}) => ({
    gateUp: codes([E, 2 * I, H]), down: codes([E, H, I]),
    gateUpScale: o.gateUpScale === undefined ? gus() : o.gateUpScale, downScale: o.downScale === undefined ? dns() : o.downScale,
  });
  const withValue = (shape: number[], at: number, v: number) => {
    const t = f32(shape);
    (t.data as Float32Array)[at] = v;
    return t;
  };
  const call = (ex: Parameters<typeof ops.moeExperts>[3]) => ops.moeExperts(x(), ids(), w(), ex, null);
  const bad: { name: string; code: string; mentions: string[]; call: () => Promise<unknown> }[] = [
    { name: 'fp8 without scales', code: 'E_ARG', mentions: ['experts.gateUpScale', 'required'], call: () => call({ gateUp: codes([E, 2 * I, H]), down: codes([E, H, I]) }) },
    { name: 'fp8 without downScale', code: 'E_ARG', mentions: ['experts.downScale'], call: () => call(fp8({ downScale: null })) },
    { name: 'fp8 without gateUpScale', code: 'E_ARG', mentions: ['experts.gateUpScale'], call: () => call(fp8({ gateUpScale: null })) },
    { name: 'scales with f32 weights', code: 'E_ARG', mentions: ['experts.gateUpScale', 'fp8_e4m3'], call: () => call({ gateUp: f32([E, 2 * I, H]), down: f32([E, H, I]), gateUpScale: gus(), downScale: dns() }) },
    { name: 'downScale with bf16 weights', code: 'E_ARG', mentions: ['experts.downScale'], call: () => call({ gateUp: new Tensor('bf16', [E, 2 * I, H], new Uint16Array(E * 2 * I * H)), down: new Tensor('bf16', [E, H, I], new Uint16Array(E * H * I)), downScale: dns() }) },
    { name: 'down bf16 beside fp8 gateUp', code: 'E_DTYPE', mentions: ['experts.down'], call: () => call({ ...fp8(), down: new Tensor('bf16', [E, H, I], new Uint16Array(E * H * I)) }) },
    { name: 'gateUpScale bf16', code: 'E_DTYPE', mentions: ['experts.gateUpScale'], call: () => call(fp8({ gateUpScale: new Tensor('bf16', [E, 1, 2], new Uint16Array(E * 2)) })) },
    { name: 'gateUpScale [E, 1, 1]', code: 'E_SHAPE', mentions: ['experts.gateUpScale', '[2, 1, 2]'], call: () => call(fp8({ gateUpScale: f32([E, 1, 1]) })) },
    { name: 'downScale [E + 1, 2, 1]', code: 'E_SHAPE', mentions: ['experts.downScale', '[2, 2, 1]'], call: () => call(fp8({ downScale: f32([E + 1, 2, 1]) })) },
    { name: 'downScale rank 2', code: 'E_SHAPE', mentions: ['experts.downScale'], call: () => call(fp8({ downScale: f32([E, 2]) })) },
    { name: 'gateUpScale 0', code: 'E_RANGE', mentions: ['experts.gateUpScale[1, 0, 1]', '> 0'], call: () => call(fp8({ gateUpScale: withValue([E, 1, 2], 3, 0) })) },
    { name: 'gateUpScale negative', code: 'E_RANGE', mentions: ['experts.gateUpScale[0, 0, 0]'], call: () => call(fp8({ gateUpScale: withValue([E, 1, 2], 0, -1) })) },
    { name: 'downScale NaN', code: 'E_RANGE', mentions: ['experts.downScale[1, 1, 0]'], call: () => call(fp8({ downScale: withValue([E, 2, 1], 3, NaN) })) },
    { name: 'downScale +inf', code: 'E_RANGE', mentions: ['experts.downScale[0, 1, 0]'], call: () => call(fp8({ downScale: withValue([E, 2, 1], 1, Infinity) })) },
  ];
  test.each(bad.map((b) => [`${b.code} ${b.name}`, b] as const))('%s', async (_n, b) => {
    await expectRejects(b.call, b.code, b.mentions, { name: b.name });
  });

  test('valid fp8 inputs of the same shapes run (the bad cases differ in one thing)', async () => {
    const y = await call(fp8());
    expect(y.shape).toEqual([T, H]);
  });
});
