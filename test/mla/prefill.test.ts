/**
 * mlaPrefill and the absorbed decode path against naive MLA with EXPLICITLY EXPANDED keys and
 * values (reference/mla.ts mlaNaive: k^h_t = [W_UK^h c_t ; k_pe_t], v^h_t = W_UV^h c_t, as
 * DeepseekV2Attention computes them from kv_b_proj), over the stored cache values.
 *
 *  - prefill: varlen batches (cuSeqlensQ), chunked prefill (a cached prefix: n_i < seqlens[i]),
 *    sequences without queries or keys, kv_b_proj f32 or bf16, V2 dims in a few cases;
 *  - absorbed decode: q_lat = headsGemm(q_nope, W_UKᵀ [h, dC, dNope]), mlaDecode over
 *    [q_lat ; q_pe], o = headsGemm(out, W_UV [h, dV, dC]) — must equal the naive attention
 *    AND mlaPrefill run on the same queries (each sequence's last s_q tokens).
 * Caches are poisoned, pages shuffled, junk in unused block-table entries (see util.ts).
 * 'markers' data boosts chosen keys' scores by ~25 (page edges, first/last keys), so a
 * dropped or wrongly visible key changes the output by O(|v|).
 *
 * Tolerance: attnBounds (util.ts) with the nested score magnitude Σ_j (Σ_i |q_i||W_UK_ij|)|c_tj|
 * + Σ|q_pe k_pe| over dNope + dC + dR products (it bounds the expanded order q·(W c) and the
 * absorbed order (qW)·c alike, headsGemm's rounding included) and values through dC more
 * products (W_UV·c per key, or W_UV applied to the latent output). Prefill vs absorbed decode:
 * the sum of both bounds.
 */
import * as ops from '../../lib/ops';
import { KvCache } from '../../lib/kv-cache';
import { Tensor } from '../../lib/tensor';
import * as mla from '../reference/mla';
import type { CacheDType } from '../reference/kv';
import { encode, decode, type FloatDType } from '../reference/dtype';
import { expectClose } from '../reference/compare';
import { Rng } from '../reference/rng';
import { caseName, expectRejects, implOpts, table, type ImplName } from '../ops/util';
import { attnBounds, buildPaged, expectRejectsOneOf, i32, type Junk, type PagedSeqs } from './util';

const math = Math; // aliased: global lookups are slow under jest's vm context

const V2_SCALE = (1 / math.sqrt(192)) * (0.1 * 0.707 * math.log(40) + 1) ** 2;
const IMPLS3: ImplName[] = ['reference', 'fast', 'default'];

interface Dims {
  h: number;
  dNope: number;
  dR: number;
  dV: number;
  dC: number;
}

interface PrefillCase extends Dims {
  dtype: CacheDType;
  /** keys per sequence (prefix + new) */
  lens: number[];
  /** queries per sequence (the last nq[i] of its keys) */
  nq: number[];
  kvDtype: FloatDType;
  pageSize: number;
  junk: Junk;
  data: 'normal' | 'markers';
}

const SMALL: Dims = { h: 3, dNope: 16, dR: 8, dV: 24, dC: 64 };
const V2: Dims = { h: 4, dNope: 128, dR: 64, dV: 128, dC: 512 };

const cases: PrefillCase[] = [];
{
  const shapes: [number[], number[]][] = [
    [[5], [5]], // plain prefill
    [[70], [6]], // chunked: 64 cached + 6 new
    [[1, 65, 130, 7], [1, 65, 3, 7]], // varlen, some chunked
    [[0, 9], [0, 4]], // an empty sequence
    [[5, 3], [0, 3]], // a sequence with cached keys and no queries
    [[1, 2, 3, 63, 64, 65, 10, 1, 100], [1, 2, 1, 5, 64, 1, 10, 1, 7]], // b = 9
    [[129], [129]],
    [[5, 3], [0, 0]], // no query at all: T = 0
  ];
  const dts: CacheDType[] = ['f32', 'bf16', 'fp8'];
  const junks: Junk[] = ['huge', 'neg', 'random', 'zero'];
  let rot = 0;
  for (const [lens, nq] of shapes) {
    for (const h of [1, 3, 16]) {
      cases.push({
        ...SMALL, h, dtype: dts[rot % 3], lens, nq, kvDtype: rot % 2 ? 'bf16' : 'f32', pageSize: [64, 16][(rot >> 1) % 2],
        junk: junks[rot % 4], data: rot % 3 === 1 ? 'markers' : 'normal',
      });
      rot++;
    }
  }
  // dV == dNope and dV > dNope variants
  cases.push({ h: 2, dNope: 8, dR: 4, dV: 8, dC: 32, dtype: 'bf16', lens: [33], nq: [17], kvDtype: 'bf16', pageSize: 16, junk: 'huge', data: 'normal' });
  cases.push({ h: 2, dNope: 8, dR: 4, dV: 40, dC: 130, dtype: 'fp8', lens: [20, 5], nq: [20, 2], kvDtype: 'f32', pageSize: 16, junk: 'huge', data: 'markers' });
  // V2 dims
  cases.push({ ...V2, dtype: 'bf16', lens: [80, 3], nq: [16, 3], kvDtype: 'bf16', pageSize: 64, junk: 'huge', data: 'normal' });
  cases.push({ ...V2, h: 16, dtype: 'fp8', lens: [130], nq: [2], kvDtype: 'bf16', pageSize: 64, junk: 'random', data: 'markers' });
}

interface Prepared {
  paged: PagedSeqs;
  q: Float32Array;
  kvB: { t: Tensor; exact: Float64Array };
  ref: mla.AttnOut;
  bounds: { out: Float64Array; lse: Float64Array };
  T: number;
  cu: Int32Array;
}
const prepared = new Map<string, Prepared>();
afterAll(() => {
  for (const p of prepared.values()) p.paged.cache.dispose();
});

function markerSetup(rng: Rng, dR: number) {
  const v = rng.normalF32(dR);
  let vv = 0;
  for (let i = 0; i < dR; i++) vv += v[i] * v[i];
  return { v, vv, alpha: 25 / V2_SCALE };
}

/** Splits q [rows, h, dNope + dR] into q_nope [rows, h, dNope] and q_pe [rows, h, dR]. */
function splitQ(q: Float32Array, rows: number, h: number, dNope: number, dR: number) {
  const D = dNope + dR;
  const qN = new Float64Array(rows * h * dNope);
  const qP = new Float64Array(rows * h * dR);
  for (let r = 0; r < rows * h; r++) {
    for (let i = 0; i < dNope; i++) qN[r * dNope + i] = q[r * D + i];
    for (let i = 0; i < dR; i++) qP[r * dR + i] = q[r * D + dNope + i];
  }
  return { qN, qP };
}

async function preparePrefill(c: PrefillCase): Promise<Prepared> {
  const key = caseName(c);
  const have = prepared.get(key);
  if (have) return have;
  const rng = new Rng(c);
  const { h, dNope, dR, dV, dC } = c;
  const mk = markerSetup(rng, dR);
  const markerAt = (n: number, t: number) => t === 0 || t === c.pageSize - 1 || t === c.pageSize || t === n - 1 || t === n - 2;
  const paged = await buildPaged(rng, {
    dtype: c.dtype, dC, dR, pageSize: c.pageSize, lens: c.lens, junk: c.junk, shuffledAppend: true, layers: 2, layer: 1,
    kStd: c.data === 'markers' ? 0.3 : 1,
    fill: c.data === 'markers' ? (si, t, _cc, kk) => { if (markerAt(c.lens[si], t)) for (let i = 0; i < dR; i++) kk[i] = (mk.alpha * mk.v[i]) / mk.vv; } : undefined,
  });
  const cu = new Int32Array(c.lens.length + 1);
  for (let i = 0; i < c.lens.length; i++) cu[i + 1] = cu[i] + c.nq[i];
  const T = cu[c.lens.length];
  const D = dNope + dR;
  const q = rng.normalF32(T * h * D, c.data === 'markers' ? 0.5 : 1);
  if (c.data === 'markers') for (let r = 0; r < T * h; r++) for (let i = 0; i < dR; i++) q[r * D + dNope + i] = mk.v[i];
  // kv_b_proj ~ N(0, 1/sqrt(dC)) so k_nope and v are O(1)
  const data = encode(rng.normalF32(h * (dNope + dV) * dC, 1 / math.sqrt(dC)), c.kvDtype);
  const kvB = { t: new Tensor(c.kvDtype, [h * (dNope + dV), dC], data), exact: decode(data, c.kvDtype) };
  const { seqOf, nVis } = mla.prefillRows(c.lens, cu);
  const { qN, qP } = splitQ(q, T, h, dNope, dR);
  const ref = mla.mlaNaive(qN, qP, T, h, dNope, dR, dV, dC, kvB.exact, paged.seqs, seqOf, nVis, V2_SCALE);
  const bounds = attnBounds(ref.stats, ref.lse, h, dV, dNope + dC + dR, dC);
  const p = { paged, q, kvB, ref, bounds, T, cu };
  prepared.set(key, p);
  return p;
}

function runPrefill(c: PrefillCase, p: Prepared, opts: { impl?: 'reference' | 'fast' }): Promise<Tensor> {
  const b = c.lens.length;
  return ops.mlaPrefill(
    new Tensor('f32', [p.T, c.h, c.dNope + c.dR], p.q),
    p.paged.cache,
    1,
    new Tensor('i32', [b, p.paged.maxBlocks], p.paged.blockTable.slice()),
    i32(c.lens, [b]),
    new Tensor('i32', [b + 1], p.cu.slice()),
    p.kvB.t,
    { scale: V2_SCALE, dNope: c.dNope, dV: c.dV, ...opts },
  );
}

describe('mlaPrefill vs naive expanded MLA', () => {
  const rows = cases.flatMap((c) => IMPLS3.map((impl) => ({ ...c, impl })));
  test.each(table(rows))('%s', async (_name, cc) => {
    const { impl, ...c } = cc;
    const p = await preparePrefill(c);
    const y = await runPrefill(c, p, implOpts(impl));
    expect(y.dtype).toBe('f32');
    expect(y.shape).toEqual([p.T, c.h, c.dV]);
    expectClose(y.data as Float32Array, p.ref.out, { bound: p.bounds.out, ctx: cc, label: 'mlaPrefill out' });
  });
});

// ---------------------------------------------------------------------------------------
// Absorbed decode == naive == prefill.

interface AbsorbCase extends Dims {
  dtype: CacheDType;
  lens: number[];
  sq: number;
  kvDtype: FloatDType;
  pageSize: number;
  data: 'normal' | 'markers';
}

const absorbCases: AbsorbCase[] = [
  { ...SMALL, dtype: 'f32', lens: [1], sq: 1, kvDtype: 'f32', pageSize: 64, data: 'normal' },
  { ...SMALL, h: 16, dtype: 'bf16', lens: [64, 65, 2], sq: 2, kvDtype: 'bf16', pageSize: 16, data: 'markers' },
  { ...SMALL, h: 1, dtype: 'fp8', lens: [130, 4, 63], sq: 4, kvDtype: 'f32', pageSize: 64, data: 'normal' },
  { ...SMALL, dtype: 'bf16', lens: [9, 1, 2, 3, 64, 65, 7, 8, 100], sq: 1, kvDtype: 'bf16', pageSize: 16, data: 'normal' },
  { ...V2, dtype: 'bf16', lens: [70], sq: 2, kvDtype: 'bf16', pageSize: 64, data: 'normal' },
  { ...V2, h: 16, dtype: 'fp8', lens: [66, 5], sq: 1, kvDtype: 'bf16', pageSize: 64, data: 'markers' },
  { ...V2, h: 2, dtype: 'f32', lens: [1030], sq: 1, kvDtype: 'f32', pageSize: 64, data: 'markers' },
];

describe('absorbed decode (headsGemm · mlaDecode · headsGemm) == naive expanded MLA == mlaPrefill', () => {
  const rows = absorbCases.flatMap((c) => (['reference', 'fast'] as const).map((impl) => ({ ...c, impl })));
  test.each(table(rows))('%s', async (_name, cc) => {
    const { impl, ...c } = cc;
    const o = implOpts(impl);
    const { h, dNope, dR, dV, dC, sq } = c;
    const b = c.lens.length;
    // the same problem as a prefill case whose queries are each sequence's last s_q tokens
    const pc: PrefillCase = { h, dNope, dR, dV, dC, dtype: c.dtype, lens: c.lens, nq: c.lens.map(() => sq), kvDtype: c.kvDtype, pageSize: c.pageSize, junk: 'huge', data: c.data };
    const p = await preparePrefill(pc);
    const T = b * sq;
    const { qN } = splitQ(p.q, T, h, dNope, dR);
    // W_UKᵀ [h, dC, dNope] and W_UV [h, dV, dC] in kv_b_proj's dtype (a transposition is exact)
    const wuk = mla.wUkT(p.kvB.exact, h, dNope, dV, dC);
    const wuv = mla.wUv(p.kvB.exact, h, dNope, dV, dC);
    const asTensor = (vals: Float64Array, shape: number[]) => new Tensor(c.kvDtype, shape, encode(vals, c.kvDtype));
    const qLat = await ops.headsGemm(new Tensor('f32', [T, h, dNope], Float32Array.from(qN)), asTensor(wuk, [h, dC, dNope]), o);
    expect(qLat.shape).toEqual([T, h, dC]);
    const D = dC + dR;
    const qd = new Float32Array(T * h * D);
    const ql = qLat.data as Float32Array;
    for (let r = 0; r < T * h; r++) {
      qd.set(ql.subarray(r * dC, (r + 1) * dC), r * D);
      qd.set(p.q.subarray(r * (dNope + dR) + dNope, (r + 1) * (dNope + dR)), r * D + dC);
    }
    const dec = await ops.mlaDecode(new Tensor('f32', [b, sq, h, D], qd), p.paged.cache, 1, new Tensor('i32', [b, p.paged.maxBlocks], p.paged.blockTable.slice()), i32(c.lens, [b]), { scale: V2_SCALE, ...o });
    const oAbs = await ops.headsGemm(new Tensor('f32', [T, h, dC], dec.out.data as Float32Array), asTensor(wuv, [h, dV, dC]), o);
    expect(oAbs.shape).toEqual([T, h, dV]);
    const absorbed = oAbs.data as Float32Array;
    expectClose(absorbed, p.ref.out, { bound: p.bounds.out, ctx: cc, label: 'absorbed decode vs naive' });
    expectClose(dec.lse.data as Float32Array, p.ref.lse, { bound: p.bounds.lse, ctx: cc, label: 'absorbed decode lse vs naive' });
    const pre = await runPrefill(pc, p, o);
    const prefill = pre.data as Float32Array;
    expectClose(prefill, p.ref.out, { bound: p.bounds.out, ctx: cc, label: 'prefill vs naive' });
    expectClose(prefill, absorbed, { bound: p.bounds.out.map((x) => 2 * x), ctx: cc, label: 'prefill vs absorbed decode' });
  });
});

describe('chunked prefill in two steps: prefill chunk 1, append chunk 2, prefill chunk 2', () => {
  const steps = [
    { dtype: 'bf16' as CacheDType, kvDtype: 'bf16' as FloatDType, lens1: [40, 3], lens2: [70, 9], pageSize: 16 },
    { dtype: 'fp8' as CacheDType, kvDtype: 'f32' as FloatDType, lens1: [64, 1, 0], lens2: [65, 64, 5], pageSize: 64 },
  ];
  test.each(table(steps.flatMap((c) => (['reference', 'fast'] as const).map((impl) => ({ ...c, impl })))))('%s', async (_name, cc) => {
    const { impl, ...c } = cc;
    const o = implOpts(impl);
    const rng = new Rng(cc);
    const d = SMALL;
    const b = c.lens1.length;
    // the full sequences, built (and poisoned, shuffled) up front; then the cache is reset to
    // hold only chunk 1: a second cache gets chunk 1 now and chunk 2 after the first prefill
    const full = await buildPaged(rng, { dtype: c.dtype, dC: d.dC, dR: d.dR, pageSize: c.pageSize, lens: c.lens2, junk: 'huge' });
    full.cache.dispose();
    const cache = await KvCache.create({ layers: 1, pages: full.cache.pages, dC: d.dC, dR: d.dR, dtype: c.dtype, pageSize: c.pageSize });
    try {
      await cache.poison();
      const appendRange = async (from: number[], to: number[]) => {
        for (let i = 0; i < b; i++) {
          const n = to[i] - from[i];
          if (n <= 0) continue;
          await cache.append(0,
            new Tensor('f32', [n, d.dC], full.orig[i].c.slice(from[i] * d.dC, to[i] * d.dC)),
            new Tensor('f32', [n, d.dR], full.orig[i].k.slice(from[i] * d.dR, to[i] * d.dR)),
            new Tensor('i32', [n], full.slots[i].slice(from[i], to[i])));
        }
      };
      const data = encode(rng.normalF32(d.h * (d.dNope + d.dV) * d.dC, 1 / math.sqrt(d.dC)), c.kvDtype);
      const kvB = { t: new Tensor(c.kvDtype, [d.h * (d.dNope + d.dV), d.dC], data), exact: decode(data, c.kvDtype) };
      const run = async (lens: number[], nq: number[]) => {
        const cu = new Int32Array(b + 1);
        for (let i = 0; i < b; i++) cu[i + 1] = cu[i] + nq[i];
        const T = cu[b];
        const q = rng.normalF32(T * d.h * (d.dNope + d.dR));
        const y = await ops.mlaPrefill(new Tensor('f32', [T, d.h, d.dNope + d.dR], q), cache, 0, new Tensor('i32', [b, full.maxBlocks], full.blockTable.slice()),
          i32(lens, [b]), new Tensor('i32', [b + 1], cu), kvB.t, { scale: V2_SCALE, dNope: d.dNope, dV: d.dV, ...o });
        const { seqOf, nVis } = mla.prefillRows(lens, cu);
        const { qN, qP } = splitQ(q, T, d.h, d.dNope, d.dR);
        const ref = mla.mlaNaive(qN, qP, T, d.h, d.dNope, d.dR, d.dV, d.dC, kvB.exact, full.seqs, seqOf, nVis, V2_SCALE);
        const bounds = attnBounds(ref.stats, ref.lse, d.h, d.dV, d.dNope + d.dC + d.dR, d.dC);
        expectClose(y.data as Float32Array, ref.out, { bound: bounds.out, ctx: { ...cc, lens }, label: 'two-step prefill' });
      };
      await appendRange(c.lens1.map(() => 0), c.lens1);
      await run(c.lens1, c.lens1); // chunk 1: every token of the prefix is a query
      await appendRange(c.lens1, c.lens2);
      await run(c.lens2, c.lens2.map((n, i) => n - c.lens1[i])); // chunk 2: the new tokens, over prefix + new
    } finally {
      cache.dispose();
    }
  });
});

describe('mlaPrefill bad inputs', () => {
  const d: Dims = { h: 2, dNope: 4, dR: 2, dV: 3, dC: 8 };
  let paged: PagedSeqs;
  beforeAll(async () => {
    paged = await buildPaged(new Rng('prefill bad'), { dtype: 'bf16', dC: d.dC, dR: d.dR, pageSize: 4, lens: [5, 3], layers: 2, junk: 'huge' });
  });
  afterAll(() => paged.cache.dispose());
  const q = (T: number, D = d.dNope + d.dR, h = d.h) => new Tensor('f32', [T, h, D], new Float32Array(T * h * D));
  const kvB = (rows = d.h * (d.dNope + d.dV), cols = d.dC) => new Tensor('f32', [rows, cols], new Float32Array(rows * cols));
  const bt = () => new Tensor('i32', [2, paged.maxBlocks], paged.blockTable.slice());
  type O = { impl?: 'reference' | 'fast' };
  const call = (o: O, args: { q?: Tensor; layer?: number; seqlens?: number[]; cu?: number[]; kvB?: Tensor; dNope?: number; dV?: number }) =>
    ops.mlaPrefill(args.q ?? q(4), paged.cache, args.layer ?? 0, bt(), i32(args.seqlens ?? [5, 3], [(args.seqlens ?? [5, 3]).length]),
      i32(args.cu ?? [0, 2, 4], [(args.cu ?? [0, 2, 4]).length]), args.kvB ?? kvB(), { scale: 0.1, dNope: args.dNope ?? d.dNope, dV: args.dV ?? d.dV, ...o });
  const bad: { name: string; codes: string[]; mentions?: (string | RegExp)[]; call: (o: O) => Promise<unknown> }[] = [
    { name: 'n_i > seqlens[i]', codes: ['E_RANGE'], call: (o) => call(o, { q: q(5), cu: [0, 1, 5] }) },
    { name: 'layer == layers', codes: ['E_RANGE'], mentions: ['layer'], call: (o) => call(o, { layer: 2 }) },
    { name: 'q last dim != dNope + dR', codes: ['E_SHAPE'], call: (o) => call(o, { q: q(4, d.dNope + d.dR + 1) }) },
    { name: 'kvB rows != h·(dNope + dV)', codes: ['E_SHAPE'], mentions: ['kvB'], call: (o) => call(o, { kvB: kvB(d.h * (d.dNope + d.dV) + 1) }) },
    { name: 'kvB cols != dC', codes: ['E_SHAPE'], mentions: ['kvB'], call: (o) => call(o, { kvB: kvB(d.h * (d.dNope + d.dV), d.dC + 1) }) },
    { name: 'q heads != kvB heads', codes: ['E_SHAPE'], call: (o) => call(o, { q: q(4, d.dNope + d.dR, 3) }) },
    { name: 'cuSeqlensQ[b] != T', codes: ['E_RANGE', 'E_SHAPE'], call: (o) => call(o, { cu: [0, 2, 3] }) },
    { name: 'cuSeqlensQ decreasing', codes: ['E_RANGE', 'E_SHAPE'], call: (o) => call(o, { cu: [0, 3, 2] }) },
    { name: 'cuSeqlensQ[0] != 0', codes: ['E_RANGE', 'E_SHAPE'], call: (o) => call(o, { cu: [1, 2, 4] }) },
    { name: 'cuSeqlensQ length != b + 1', codes: ['E_SHAPE'], call: (o) => call(o, { cu: [0, 4] }) },
    { name: 'kvB i32', codes: ['E_DTYPE'], mentions: ['kvB'], call: (o) => call(o, { kvB: new Tensor('i32', [10, 8], new Int32Array(80)) }) },
  ];
  const rows: [string, (typeof bad)[number] & { impl: ImplName }][] = [];
  for (const bc of bad) for (const impl of IMPLS3) rows.push([`${bc.codes.join('|')} ${bc.name} [impl ${impl}]`, { ...bc, impl }]);
  test.each(rows)('%s', async (_n, bc) => {
    const o = implOpts(bc.impl);
    if (bc.codes.length === 1) await expectRejects(() => bc.call(o), bc.codes[0], bc.mentions ?? [], { name: bc.name, impl: bc.impl });
    else await expectRejectsOneOf(() => bc.call(o), bc.codes, { name: bc.name, impl: bc.impl });
  });
});
