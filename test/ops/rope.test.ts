/**
 * ropeTable and rope against the float64 transcription of DeepseekV2YarnRotaryEmbedding and
 * apply_rotary_pos_emb (with its interleaved-pair de-interleave).
 *
 * ropeTable tolerance: the library computes in double and rounds to f32, so it may differ
 * from the float64 reference by half an f32 ulp of the value (the final rounding) plus the
 * double-precision differences of the angle p·inv_freq: inv_freq via pow vs exp/log differs
 * by a few double ulps, times p, i.e. ≲ 2^-50·p absolute in the angle, and cos/sin of it
 * ≤ 1 double ulp. We allow ½ulp32(value) + 2^-46·(1 + p)·mscale (16x margin on the angle).
 * A float32 angle computation (as the PyTorch code does) would be off by ~2^-24·p and fails.
 *
 * rope tolerance: out = a·c − b·s (or b·c + a·s) in fp32 is within γ_2(|a·c| + |b·s|) of the
 * exact value whether or not an FMA is used; we allow 3u(|a·c| + |b·s|) (γ_2 < 3u) plus an
 * f32 min-normal. The tables fed to rope are built here (reference rounded to f32), so the
 * rope tests do not depend on ropeTable.
 */
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import * as ref from '../reference/ops';
import { expectClose } from '../reference/compare';
import { Rng } from '../reference/rng';
import { F32_MIN_NORMAL, U32, f32, f32Data, ids as idTensor, implOpts, table, withImpls, type ImplName } from './util';

type Yarn = ref.YarnParams;
const V2_YARN: Yarn = { factor: 40, originalMaxPositionEmbeddings: 4096, betaFast: 32, betaSlow: 1, mscale: 0.707, mscaleAllDim: 0.707 };
const MSCALED_YARN: Yarn = { factor: 40, originalMaxPositionEmbeddings: 4096, betaFast: 32, betaSlow: 1, mscale: 1, mscaleAllDim: 0 };
const SINGULAR_YARN: Yarn = { factor: 4, originalMaxPositionEmbeddings: 2048, betaFast: 8, betaSlow: 8, mscale: 1, mscaleAllDim: 1 }; // low == high
const SMALL_FACTOR_YARN: Yarn = { factor: 0.5, originalMaxPositionEmbeddings: 64, betaFast: 32, betaSlow: 1, mscale: 2, mscaleAllDim: 0 }; // mscale 1 (factor <= 1), low clamps to 0
const WIDE_YARN: Yarn = { factor: 16, originalMaxPositionEmbeddings: 1e9, betaFast: 2, betaSlow: 0.5, mscale: 0.5, mscaleAllDim: 1 }; // high clamps to dim-1

interface TableCase {
  dim: number;
  maxPositions: number;
  theta?: number;
  yarn: Yarn | null;
  yarnName: string;
}

const tableCases: TableCase[] = [
  { dim: 2, maxPositions: 1, yarn: null, yarnName: 'none' },
  { dim: 4, maxPositions: 3, yarn: null, yarnName: 'none' },
  { dim: 64, maxPositions: 33, yarn: null, yarnName: 'none' },
  { dim: 128, maxPositions: 4096, theta: 500000, yarn: null, yarnName: 'none' },
  { dim: 6, maxPositions: 17, theta: 10, yarn: null, yarnName: 'none' },
  { dim: 64, maxPositions: 127, yarn: V2_YARN, yarnName: 'v2' },
  { dim: 64, maxPositions: 163840, yarn: V2_YARN, yarnName: 'v2' }, // V2's max_position_embeddings
  { dim: 64, maxPositions: 4099, yarn: MSCALED_YARN, yarnName: 'mscale!=all_dim' },
  { dim: 64, maxPositions: 7, yarn: SINGULAR_YARN, yarnName: 'low==high' },
  { dim: 16, maxPositions: 33, yarn: SMALL_FACTOR_YARN, yarnName: 'factor<=1, low clamped' },
  { dim: 32, maxPositions: 33, theta: 50000, yarn: WIDE_YARN, yarnName: 'high clamped' },
  { dim: 2, maxPositions: 5, yarn: MSCALED_YARN, yarnName: 'mscale!=all_dim' },
];

// Math aliased at module scope: global lookups are slow in jest's vm context (hot loops here).
const math = Math;

const f64 = new Float64Array(1);
const f64Hi = new Uint32Array(f64.buffer, 4, 1); // little-endian: high word holds sign/exponent

/** Half an f32 ulp at the binade of |v| (2^(e-24) for 2^e <= |v| < 2^(e+1)); 2^-150 below 2^-126. */
function halfUlp32(v: number): number {
  f64[0] = v;
  const e = ((f64Hi[0] >>> 20) & 0x7ff) - 1023; // exact binade of the double v
  if (e < -126) return 2 ** -150;
  return 2 ** (e - 24);
}

describe('ropeTable', () => {
  test.each(table(tableCases))('%s', async (_name, c) => {
    const lib = await ops.ropeTable({ dim: c.dim, maxPositions: c.maxPositions, ...(c.theta === undefined ? {} : { theta: c.theta }), yarn: c.yarn });
    const want = ref.ropeTable({ dim: c.dim, maxPositions: c.maxPositions, theta: c.theta ?? 10000, yarn: c.yarn });
    const ms = ref.ropeMscale(c.yarn);
    const half = c.dim / 2;
    const bound = new Float64Array(want.cos.length);
    for (const [name, t, w] of [['cos', lib.cos, want.cos], ['sin', lib.sin, want.sin]] as const) {
      const got = f32Data(t, [c.maxPositions, half], c);
      for (let p = 0, i = 0; p < c.maxPositions; p++) {
        const angleSlack = 2 ** -46 * (1 + p) * ms;
        for (let j = 0; j < half; j++, i++) bound[i] = halfUlp32(w[i]) + angleSlack;
      }
      expectClose(got, w, { bound, ctx: c, label: `ropeTable ${name}` });
    }
  });

  test('yarn absent equals yarn null', async () => {
    const a = await ops.ropeTable({ dim: 8, maxPositions: 9 });
    const b = await ops.ropeTable({ dim: 8, maxPositions: 9, yarn: null });
    expect(a.cos.data).toEqual(b.cos.data);
    expect(a.sin.data).toEqual(b.sin.data);
  });

  test('V2 table: known points (inv_freq[16] = 0.0055, position 100 -> angle 0.55)', async () => {
    const t = await ops.ropeTable({ dim: 64, maxPositions: 101, yarn: MSCALED_YARN });
    const ms = 1 + 0.1 * Math.log(40);
    const cos = t.cos.data as Float32Array;
    const sin = t.sin.data as Float32Array;
    // the f32 rounding of the hand value, up to the table tolerance (top of file)
    const near = (got: number, v: number, p: number) => expect(Math.abs(got - v)).toBeLessThanOrEqual(halfUlp32(v) + 2 ** -46 * (1 + p) * ms);
    near(cos[100 * 32 + 16], Math.cos(0.55) * ms, 100);
    near(sin[100 * 32 + 16], Math.sin(0.55) * ms, 100);
    near(cos[5], ms, 0);
    expect(sin[5]).toBe(0);
    near(sin[1 * 32 + 0], Math.sin(1) * ms, 1);
  });
});

interface RopeCase {
  T: number;
  /** null: x is [T, d] */
  H: number | null;
  d: number;
  rows: number;
  posDtype: 'i32' | 'i64';
  /** undefined: default (true) */
  interleaved?: boolean;
  yarnName: 'none' | 'v2' | 'mscale!=all_dim';
}

const ropeCases: RopeCase[] = [];
let rot = 0;
for (const T of [0, 1, 3, 17]) {
  for (const H of [null, 1, 3, 16]) {
    for (const d of [2, 6, 64]) {
      const interleaved = [undefined, true, false][rot % 3];
      const posDtype = rot % 2 === 0 ? 'i32' : 'i64';
      const yarnName = (['none', 'v2', 'mscale!=all_dim'] as const)[rot % 3];
      const rows = [1, 33, 4096][rot % 3];
      rot++;
      ropeCases.push({ T, H, d, rows, posDtype, interleaved, yarnName });
    }
  }
}
for (const interleaved of [undefined, true, false]) {
  ropeCases.push({ T: 5, H: 128, d: 64, rows: 163840, posDtype: 'i64', interleaved, yarnName: 'v2' }); // V2 q_pe shape
  ropeCases.push({ T: 127, H: null, d: 64, rows: 4096, posDtype: 'i32', interleaved, yarnName: 'v2' }); // V2 k_pe shape
}

const YARNS: Record<RopeCase['yarnName'], Yarn | null> = { none: null, v2: V2_YARN, 'mscale!=all_dim': MSCALED_YARN };
const tableCache = new Map<string, { ref: ref.RefRopeTable; cos: Tensor; sin: Tensor }>();

/** The reference table rounded to f32, as tensors, and the f32 values for the reference rope. */
function f32Table(d: number, rows: number, yarnName: RopeCase['yarnName']) {
  const key = `${d}/${rows}/${yarnName}`;
  let t = tableCache.get(key);
  if (!t) {
    const r = ref.ropeTable({ dim: d, maxPositions: rows, yarn: YARNS[yarnName] });
    const cos = Float32Array.from(r.cos);
    const sin = Float32Array.from(r.sin);
    t = {
      ref: { half: r.half, rows, cos: Float64Array.from(cos), sin: Float64Array.from(sin) },
      cos: f32(cos, [rows, d / 2]),
      sin: f32(sin, [rows, d / 2]),
    };
    tableCache.set(key, t);
  }
  return t;
}

/** Per-element scale |a·c| + |b·s| of the rotation (same pairing as the reference). */
function ropeAbsScale(x: Float32Array, T: number, H: number, d: number, pos: number[], tb: ref.RefRopeTable, interleaved: boolean): Float64Array {
  const half = d / 2;
  const out = new Float64Array(T * H * d);
  for (let t = 0; t < T; t++) {
    for (let h = 0; h < H; h++) {
      const base = (t * H + h) * d;
      for (let i = 0; i < half; i++) {
        const a = interleaved ? x[base + 2 * i] : x[base + i];
        const b = interleaved ? x[base + 2 * i + 1] : x[base + i + half];
        const c = math.abs(tb.cos[pos[t] * half + i]);
        const s = math.abs(tb.sin[pos[t] * half + i]);
        out[base + i] = math.abs(a) * c + math.abs(b) * s;
        out[base + i + half] = math.abs(b) * c + math.abs(a) * s;
      }
    }
  }
  return out;
}

type RCase = RopeCase & { impl: ImplName };

describe('rope', () => {
  test.each(table(withImpls(ropeCases)))('%s', async (_name, c: RCase) => {
    const rng = new Rng(c);
    const H = c.H ?? 1;
    const shape = c.H === null ? [c.T, c.d] : [c.T, c.H, c.d];
    const x = rng.normalF32(c.T * H * c.d, 2);
    const pos = rng.ints(c.T, 0, c.rows);
    if (c.T >= 2) {
      pos[0] = c.rows - 1;
      pos[1] = 0;
    }
    const tb = f32Table(c.d, c.rows, c.yarnName);
    const opts = { ...implOpts(c.impl), ...(c.interleaved === undefined ? {} : { interleaved: c.interleaved }) };
    const y = await ops.rope(f32(x, shape), idTensor(pos, [c.T], c.posDtype), { cos: tb.cos, sin: tb.sin }, opts);
    const got = f32Data(y, shape, c);
    const interleaved = c.interleaved ?? true;
    const want = ref.rope(x, c.T, H, c.d, pos, tb.ref, interleaved);
    const bound = ropeAbsScale(x, c.T, H, c.d, pos, tb.ref, interleaved).map((v) => 3 * U32 * v);
    expectClose(got, want, { abs: F32_MIN_NORMAL, bound, ctx: c, label: 'rope' });
  });

  test('rope with the library table equals rope with the reference table (within the table tolerance)', async () => {
    const lib = await ops.ropeTable({ dim: 64, maxPositions: 4096, yarn: V2_YARN });
    const rng = new Rng('rope lib table');
    const x = rng.normalF32(7 * 2 * 64);
    const pos = [0, 1, 2, 4095, 100, 2048, 7];
    const y = f32Data(await ops.rope(f32(x, [7, 2, 64]), idTensor(pos, [7], 'i32'), lib), [7, 2, 64]);
    const tb = ref.ropeTable({ dim: 64, maxPositions: 4096, yarn: V2_YARN });
    const want = ref.rope(x, 7, 2, 64, pos, tb, true);
    // library table entries are within ½ulp32 (≤ u·|entry|) + 2^-46(1+p)·mscale of the double
    // table (see top); propagated through a·c − b·s that is u(|a c| + |b s|) + slack·(|a| + |b|),
    // plus rope's own 3u(|a c| + |b s|): 4u·scale + slack·(|a| + |b|)
    const scale = ropeAbsScale(x, 7, 2, 64, pos, tb, true);
    const bound = new Float64Array(scale.length);
    for (let t = 0; t < 7; t++) {
      const slack = 2 ** -46 * (1 + pos[t]);
      for (let h = 0; h < 2; h++) {
        for (let i = 0; i < 32; i++) {
          const b0 = (t * 2 + h) * 64;
          const ab = Math.abs(x[b0 + 2 * i]) + Math.abs(x[b0 + 2 * i + 1]);
          bound[b0 + i] = 4 * U32 * scale[b0 + i] + slack * ab;
          bound[b0 + i + 32] = 4 * U32 * scale[b0 + i + 32] + slack * ab;
        }
      }
    }
    expectClose(y, want, { abs: F32_MIN_NORMAL, bound, label: 'rope with library table' });
  });

  test('a table with more rows than needed and a position at the last row', async () => {
    const tb = f32Table(6, 33, 'none');
    const x = Float32Array.from([1, 2, 3, 4, 5, 6]);
    const y = f32Data(await ops.rope(f32(x, [1, 6]), idTensor([32], [1], 'i64'), { cos: tb.cos, sin: tb.sin }), [1, 6]);
    const want = ref.rope(x, 1, 1, 6, [32], tb.ref, true);
    const bound = ropeAbsScale(x, 1, 1, 6, [32], tb.ref, true).map((v) => 3 * U32 * v);
    expectClose(y, want, { abs: F32_MIN_NORMAL, bound, label: 'rope last row' });
  });
});
