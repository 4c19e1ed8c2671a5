/**
 * mlaDecode over the paged latent cache, FlashMLA-style, against the float64 latent-attention
 * reference (reference/mla.ts mlaLatent) fed with the STORED values (f32, bf16-rounded or
 * fp8-dequantized, computed by the reference quantizer — not read back from the library).
 *
 * Every case: the cache is poisoned first (unused pages and the slots past each sequence's
 * end hold NaN encodings, so reading them makes the output NaN), pages are allocated and
 * shuffled across sequences, unused block-table entries hold junk (2^31 − 1, −1, random or 0)
 * that must never be read, other layers hold different finite data at the same slots.
 * Shapes: b = 1 .. 9, h_q ∈ {1, 3, 16, 128}, s_q ∈ {1, 2, 4}, s_k ∈ {0, 1, 63, 64, 65, 1000+},
 * page sizes 1, 16, 64, 128, block tables with 0, 1 or 3 spare columns, V2 dims (dC 512,
 * dR 64) in a few cases, small dims (dC 64 / 130 with a short last fp8 tile); one test shares
 * pages between two sequences (a cached common prefix).
 *
 * 'hot' data scales q by 12 (scores of std ~30: a few keys dominate, most exp() underflow).
 * 'markers' data gives chosen keys (position 0, page boundaries, the last keys) a score
 * boost of ~25 through k_pe, so each query's output is essentially the average of the
 * marker keys it may see: a key dropped (off-by-one at a page edge or the sequence end) or a
 * key seen that the causal rule hides changes the output by O(|c|), far beyond the bound.
 *
 * Tolerance: test/mla/util.ts attnBounds — the fp32 error bound of attention built from the
 * reference's magnitudes (dot products γ_{dC+dR}, exp 8u, n online rescalings / split
 * combinations, sums γ_n); lse likewise; no key: out exactly 0 and lse exactly +inf.
 * splitTokens must not change the result beyond that bound.
 *
 * fp8 vs unquantized: decode on an fp8 cache must stay within the e4m3 format's own error of
 * the f32-cache result: fp8DecodeDeviation (δc ≤ 2^-4|c| + 2^-10·scale per element, k_pe
 * bf16 2^-8, propagated through scores and softmax) plus the fp32 bound.
 */
import * as ops from '../../lib/ops';
import { KvCache } from '../../lib/kv-cache';
import { Tensor } from '../../lib/tensor';
import * as mla from '../reference/mla';
import { groupScale, quantErrorBound } from '../reference/fp8';
import { storedValues, type CacheDType } from '../reference/kv';
import { expectClose } from '../reference/compare';
import { Rng } from '../reference/rng';
import { caseName, expectRejects, implOpts, table, type ImplName } from '../ops/util';
import { attnBounds, buildPaged, fp8DecodeDeviation, i32, type Junk, type PagedSeqs, HUGE } from './util';

const math = Math; // aliased: global lookups are slow under jest's vm context

/** V2's softmax scale: (128 + 64)^-0.5 · mscale(40, 0.707)² */
const V2_SCALE = (1 / math.sqrt(192)) * (0.1 * 0.707 * math.log(40) + 1) ** 2;

interface DecodeCase {
  dtype: CacheDType;
  dC: number;
  dR: number;
  h: number;
  sq: number;
  lens: number[];
  pageSize: number;
  junk: Junk;
  /** 'hot': q scaled ×12 — scores of std ~30, most exp() terms underflow (stability of the max subtraction) */
  data: 'normal' | 'markers' | 'hot';
  layers: number;
  layer: number;
  pow2Scales?: boolean;
  /** block-table columns beyond the longest sequence's (default 1; 0: a tight table) */
  extraBlocks?: number;
}

const cases: DecodeCase[] = [];
{
  // V2 dims
  cases.push({ dtype: 'bf16', dC: 512, dR: 64, h: 128, sq: 1, lens: [1030], pageSize: 64, junk: 'huge', data: 'normal', layers: 1, layer: 0 });
  cases.push({ dtype: 'fp8', dC: 512, dR: 64, h: 16, sq: 2, lens: [1100, 63], pageSize: 64, junk: 'random', data: 'normal', layers: 1, layer: 0 });
  cases.push({ dtype: 'f32', dC: 512, dR: 64, h: 128, sq: 4, lens: [65], pageSize: 64, junk: 'neg', data: 'normal', layers: 2, layer: 1 });
  cases.push({ dtype: 'bf16', dC: 512, dR: 64, h: 16, sq: 2, lens: [1, 64, 0, 1025], pageSize: 64, junk: 'huge', data: 'markers', layers: 1, layer: 0 });
  cases.push({ dtype: 'fp8', dC: 512, dR: 64, h: 3, sq: 1, lens: [130, 2], pageSize: 64, junk: 'zero', data: 'markers', layers: 2, layer: 0, pow2Scales: true });
  cases.push({ dtype: 'bf16', dC: 512, dR: 64, h: 8, sq: 2, lens: [700, 9], pageSize: 64, junk: 'huge', data: 'hot', layers: 1, layer: 0 });
  // small dims: every dtype × h × s_q, with rotating sequence sets, page sizes, junk, data
  const lensSets = [[1], [63], [64], [65], [0, 5], [1, 63, 64, 65, 0, 130, 7, 2, 200], [3, 1], [129]];
  const junks: Junk[] = ['huge', 'neg', 'random', 'zero'];
  let rot = 0;
  for (const dtype of ['f32', 'bf16', 'fp8'] as CacheDType[]) {
    for (const h of [1, 3, 16]) {
      for (const sq of [1, 2, 4]) {
        const [dC, dR] = rot % 2 === 0 ? [64, 16] : [130, 8];
        cases.push({
          dtype, dC, dR, h, sq, lens: lensSets[rot % lensSets.length], pageSize: [64, 16, 1, 128][(rot >> 1) % 4], junk: junks[rot % 4],
          extraBlocks: [1, 0, 3][rot % 3],
          data: rot % 3 === 2 ? 'markers' : rot % 9 === 4 ? 'hot' : 'normal', layers: 1 + (rot % 2), layer: rot % 2, pow2Scales: dtype === 'fp8' && rot % 4 === 1,
        });
        rot++;
      }
    }
  }
}

interface Prepared {
  paged: PagedSeqs;
  q: Float32Array;
  ref: mla.AttnOut;
  bounds: { out: Float64Array; lse: Float64Array };
  rows: number;
}

const prepared = new Map<string, Prepared>();

afterAll(() => {
  for (const p of prepared.values()) p.paged.cache.dispose();
});

/** Builds the cache, q and the reference once per case (shared by the impl/split variants). */
async function prepare(c: DecodeCase): Promise<Prepared> {
  const key = caseName(c);
  const have = prepared.get(key);
  if (have) return have;
  const rng = new Rng(c);
  const { dC, dR, h, sq } = c;
  const D = dC + dR;
  // markers: one direction v for q_pe of every row and head; a marker key's k_pe = α v/|v|²
  // adds α to q_pe·k_pe, i.e. a score boost of scale·α = 25
  const v = rng.normalF32(dR);
  let vv = 0;
  for (let i = 0; i < dR; i++) vv += v[i] * v[i];
  const alpha = 25 / V2_SCALE;
  const markerAt = (n: number, t: number) =>
    t === 0 || t === c.pageSize - 1 || t === c.pageSize || t === 2 * c.pageSize - 1 || t === n - 1 || t === n - 2 || t === n - c.sq;
  const paged = await buildPaged(rng, {
    dtype: c.dtype, dC, dR, pageSize: c.pageSize, lens: c.lens, layers: c.layers, layer: c.layer, junk: c.junk,
    pow2Scales: c.pow2Scales, shuffledAppend: true, extraBlocks: c.extraBlocks, kStd: c.data === 'markers' ? 0.3 : 1,
    fill: c.data === 'markers'
      ? (si, t, _cc, kk) => {
        if (markerAt(c.lens[si], t)) for (let i = 0; i < dR; i++) kk[i] = (alpha * v[i]) / vv;
      }
      : undefined,
  });
  const b = c.lens.length;
  const rows = b * sq;
  const q = rng.normalF32(rows * h * D, c.data === 'markers' ? 0.5 : c.data === 'hot' ? 12 : 1);
  if (c.data === 'markers') {
    for (let r = 0; r < rows * h; r++) for (let i = 0; i < dR; i++) q[r * D + dC + i] = v[i];
  }
  const { seqOf, nVis } = mla.decodeRows(c.lens, sq);
  const ref = mla.mlaLatent(q, rows, h, dC, dR, paged.seqs, seqOf, nVis, V2_SCALE);
  const bounds = attnBounds(ref.stats, ref.lse, h, dC, dC + dR, 0);
  const p: Prepared = { paged, q, ref, bounds, rows };
  prepared.set(key, p);
  return p;
}

async function runDecode(c: DecodeCase, p: Prepared, opts: { impl?: 'reference' | 'fast'; splitTokens?: number }) {
  const b = c.lens.length;
  const { paged } = p;
  return ops.mlaDecode(
    new Tensor('f32', [b, c.sq, c.h, c.dC + c.dR], p.q),
    paged.cache,
    c.layer,
    new Tensor('i32', [b, paged.maxBlocks], paged.blockTable.slice()),
    i32(c.lens, [b]),
    { scale: V2_SCALE, ...opts },
  );
}

function check(c: object, p: Prepared, res: { out: Tensor; lse: Tensor }, shapeOut: number[], shapeLse: number[], label: string): void {
  expect(res.out.dtype).toBe('f32');
  expect(res.out.shape).toEqual(shapeOut);
  expect(res.lse.dtype).toBe('f32');
  expect(res.lse.shape).toEqual(shapeLse);
  expectClose(res.out.data as Float32Array, p.ref.out, { bound: p.bounds.out, ctx: c, label: `${label} out` });
  expectClose(res.lse.data as Float32Array, p.ref.lse, { bound: p.bounds.lse, ctx: c, label: `${label} lse` });
}

const IMPLS3: ImplName[] = ['reference', 'fast', 'default'];

describe('mlaDecode vs the latent-attention reference', () => {
  const rows = cases.flatMap((c) => IMPLS3.map((impl) => ({ ...c, impl })));
  test.each(table(rows))('%s', async (_name, cc) => {
    const { impl, ...c } = cc;
    const p = await prepare(c);
    const res = await runDecode(c, p, implOpts(impl));
    check(cc, p, res, [c.lens.length, c.sq, c.h, c.dC], [c.lens.length, c.sq, c.h], 'mlaDecode');
  });
});

describe('mlaDecode: splitTokens does not change the result beyond fp32 rounding', () => {
  const splitCases = [cases[0], cases[1], cases[3], cases.find((c) => c.lens.length === 9)!, cases.find((c) => c.lens[0] === 129)!];
  const rows = splitCases.flatMap((c) => [1, 7, 16, 64, 100000].flatMap((splitTokens) => (['reference', 'fast'] as const).map((impl) => ({ ...c, splitTokens, impl }))));
  test.each(table(rows))('%s', async (_name, cc) => {
    const { impl, splitTokens, ...c } = cc;
    const p = await prepare(c);
    const res = await runDecode(c, p, { impl, splitTokens });
    check(cc, p, res, [c.lens.length, c.sq, c.h, c.dC], [c.lens.length, c.sq, c.h], `mlaDecode split ${splitTokens}`);
  });
});

describe('mlaDecode hand checks', () => {
  test('a query that sees no key: out 0, lse +inf; one key: out = c, lse = score', async () => {
    const c: DecodeCase = { dtype: 'f32', dC: 4, dR: 2, h: 2, sq: 2, lens: [1, 0], pageSize: 4, junk: 'huge', data: 'normal', layers: 1, layer: 0 };
    const p = await prepare(c);
    const res = await runDecode(c, p, {});
    const out = res.out.data as Float32Array;
    const lse = res.lse.data as Float32Array;
    // seq 0: query 0 sees nothing (s_k − s_q + 0 < 0), query 1 sees key 0; seq 1 sees nothing
    for (const r of [0, 2, 3]) {
      for (let hh = 0; hh < 2; hh++) {
        expect(lse[r * 2 + hh]).toBe(Infinity);
        for (let d = 0; d < 4; d++) expect(out[(r * 2 + hh) * 4 + d]).toBe(0);
      }
    }
    const c0 = p.paged.seqs[0].c;
    for (let hh = 0; hh < 2; hh++) for (let d = 0; d < 4; d++) expect(out[(2 + hh) * 4 + d]).toBe(Math.fround(c0[d]));
  });
});

describe('mlaDecode with pages shared between sequences (a cached common prefix)', () => {
  test.each(table((['f32', 'fp8'] as CacheDType[]).flatMap((dtype) => (['reference', 'fast', 'default'] as ImplName[]).map((impl) => ({ dtype, impl })))))('%s', async (_n, c) => {
    const rng = new Rng(c);
    const dC = 64;
    const dR = 16;
    const h = 3;
    const sq = 2;
    const ps = 16;
    const cache = await KvCache.create({ layers: 1, pages: 6, dC, dR, dtype: c.dtype, pageSize: ps });
    try {
      await cache.poison();
      const pg = Array.from(cache.allocPages(6)).sort(() => rng.next() - 0.5);
      // A: 40 tokens on pages pg[0..2]; B: A's first 32 tokens (pages pg[0], pg[1] shared) + 10 own on pg[3]
      const lens = [40, 42];
      const maxBlocks = 4;
      const bt = Int32Array.from([pg[0], pg[1], pg[2], HUGE, pg[0], pg[1], pg[3], HUGE]);
      const cA = rng.normalF32(40 * dC);
      const kA = rng.normalF32(40 * dR);
      const cB = rng.normalF32(10 * dC);
      const kB = rng.normalF32(10 * dR);
      const slotsA = Int32Array.from({ length: 40 }, (_, t) => bt[t >> 4] * ps + (t % ps));
      const slotsB = Int32Array.from({ length: 10 }, (_, t) => pg[3] * ps + t);
      await cache.append(0, new Tensor('f32', [40, dC], cA), new Tensor('f32', [40, dR], kA), new Tensor('i32', [40], slotsA));
      await cache.append(0, new Tensor('f32', [10, dC], cB), new Tensor('f32', [10, dR], kB), new Tensor('i32', [10], slotsB));
      const stored = (cc: Float32Array, kk: Float32Array, n: number) => {
        const sc = new Float64Array(n * dC);
        const sk = new Float64Array(n * dR);
        for (let t = 0; t < n; t++) {
          const st = storedValues(c.dtype, cc.subarray(t * dC, (t + 1) * dC), kk.subarray(t * dR, (t + 1) * dR), dC, dR);
          sc.set(st.c, t * dC);
          sk.set(st.k, t * dR);
        }
        return { sc, sk };
      };
      const a = stored(cA, kA, 40);
      const bOwn = stored(cB, kB, 10);
      const seqA: mla.LatentSeq = { n: 40, c: a.sc, k: a.sk };
      const cBfull = new Float64Array(42 * dC);
      cBfull.set(a.sc.subarray(0, 32 * dC));
      cBfull.set(bOwn.sc, 32 * dC);
      const kBfull = new Float64Array(42 * dR);
      kBfull.set(a.sk.subarray(0, 32 * dR));
      kBfull.set(bOwn.sk, 32 * dR);
      const seqB: mla.LatentSeq = { n: 42, c: cBfull, k: kBfull };
      const q = rng.normalF32(2 * sq * h * (dC + dR));
      const res = await ops.mlaDecode(new Tensor('f32', [2, sq, h, dC + dR], q), cache, 0, new Tensor('i32', [2, maxBlocks], bt), i32(lens, [2]), { scale: V2_SCALE, ...implOpts(c.impl) });
      const { seqOf, nVis } = mla.decodeRows(lens, sq);
      const ref = mla.mlaLatent(q, 2 * sq, h, dC, dR, [seqA, seqB], seqOf, nVis, V2_SCALE);
      const bounds = attnBounds(ref.stats, ref.lse, h, dC, dC + dR, 0);
      expectClose(res.out.data as Float32Array, ref.out, { bound: bounds.out, ctx: c, label: 'shared-prefix out' });
      expectClose(res.lse.data as Float32Array, ref.lse, { bound: bounds.lse, ctx: c, label: 'shared-prefix lse' });
    } finally {
      cache.dispose();
    }
  });
});

describe('mlaDecode on an fp8 cache stays within the e4m3 error of the unquantized result', () => {
  interface BoundCase {
    dC: number;
    dR: number;
    h: number;
    sq: number;
    lens: number[];
    data: 'positive' | 'gaussian';
    pow2Scales: boolean;
  }
  const bcases: BoundCase[] = [
    { dC: 512, dR: 64, h: 16, sq: 1, lens: [300, 65], data: 'positive', pow2Scales: false },
    { dC: 512, dR: 64, h: 4, sq: 2, lens: [1025], data: 'positive', pow2Scales: true },
    { dC: 130, dR: 8, h: 3, sq: 4, lens: [64, 1, 0, 200], data: 'positive', pow2Scales: false },
    { dC: 512, dR: 64, h: 8, sq: 1, lens: [129], data: 'gaussian', pow2Scales: false },
  ];
  test.each(table(bcases))('%s', async (_name, c) => {
    const rng = new Rng(c);
    const { dC, dR, h, sq } = c;
    // 'positive': c_kv in [0.5, 1.5) times a per-tile magnitude (1, 4, 0.25, 2, ...), so a
    // wrong or misplaced tile scale shows as a factor, and outputs do not average to ~0;
    // q_nope-side small (std 0.002) so the scores come mostly from the exactly-stored-ish rope part
    const tileMag = [1, 4, 0.25, 2, 0.5];
    const paged = await buildPaged(rng, {
      dtype: 'fp8', dC, dR, pageSize: 64, lens: c.lens, pow2Scales: c.pow2Scales, junk: 'huge',
      fill: c.data === 'positive' ? (_s, _t, cc) => { for (let i = 0; i < dC; i++) cc[i] = rng.uniform(0.5, 1.5) * tileMag[(i >> 7) % 5]; } : undefined,
    });
    try {
      const b = c.lens.length;
      const rows = b * sq;
      const D = dC + dR;
      const q = rng.normalF32(rows * h * D);
      if (c.data === 'positive') for (let r = 0; r < rows * h; r++) for (let j = 0; j < dC; j++) q[r * D + j] *= 0.002;
      const { seqOf, nVis } = mla.decodeRows(c.lens, sq);
      const res = await ops.mlaDecode(new Tensor('f32', [b, sq, h, D], q), paged.cache, 0, new Tensor('i32', [b, paged.maxBlocks], paged.blockTable), i32(c.lens, [b]), { scale: V2_SCALE });
      // reference on the ORIGINAL (unquantized) values
      const origSeqs = paged.orig.map((o, i) => ({ n: c.lens[i], c: Float64Array.from(o.c), k: Float64Array.from(o.k) }));
      const exact = mla.mlaLatent(q, rows, h, dC, dR, origSeqs, seqOf, nVis, V2_SCALE);
      // fp32 bound of the library's own arithmetic, from the reference on the stored values
      const stored = mla.mlaLatent(q, rows, h, dC, dR, paged.seqs, seqOf, nVis, V2_SCALE);
      const f32b = attnBounds(stored.stats, stored.lse, h, dC, D, 0);
      const dev = fp8DecodeDeviation(q, rows, h, dC, dR, paged.orig, seqOf, nVis, V2_SCALE, c.pow2Scales, quantErrorBound, groupScale);
      const boundOut = dev.out.map((x, i) => x + f32b.out[i]);
      const boundLse = dev.lse.map((x, i) => x + f32b.lse[i]);
      expectClose(res.out.data as Float32Array, exact.out, { bound: boundOut, ctx: c, label: 'fp8 decode out vs unquantized' });
      expectClose(res.lse.data as Float32Array, exact.lse, { bound: boundLse, ctx: c, label: 'fp8 decode lse vs unquantized' });
      // and the bound is not vacuous: on 'positive' data it is well below the output itself
      if (c.data === 'positive') {
        let worst = 0;
        for (let i = 0; i < exact.out.length; i++) if (exact.out[i] !== 0) worst = math.max(worst, boundOut[i] / math.abs(exact.out[i]));
        expect(worst).toBeLessThan(0.2);
      }
    } finally {
      paged.cache.dispose();
    }
  });
});

describe('mlaDecode bad inputs', () => {
  const dC = 8;
  const dR = 4;
  let paged: PagedSeqs;
  beforeAll(async () => {
    paged = await buildPaged(new Rng('decode bad inputs'), { dtype: 'bf16', dC, dR, pageSize: 4, lens: [5, 3], layers: 2, sparePages: 2, junk: 'huge' });
  });
  afterAll(() => paged.cache.dispose());
  const q = (b = 2, sq = 1, h = 2, d = dC + dR) => new Tensor('f32', [b, sq, h, d], new Float32Array(b * sq * h * d));
  const bt = () => new Tensor('i32', [2, paged.maxBlocks], paged.blockTable.slice());
  const sl = (v = [5, 3]) => i32(v, [v.length]);
  interface Bad {
    name: string;
    code: string;
    mentions?: (string | RegExp)[];
    call: (o: { scale: number; impl?: 'reference' | 'fast' }) => Promise<unknown>;
    perImpl?: boolean;
  }
  const bad: Bad[] = [
    { name: 'layer == layers', code: 'E_RANGE', mentions: ['layer'], call: (o) => ops.mlaDecode(q(), paged.cache, 2, bt(), sl(), o) },
    { name: 'layer -1', code: 'E_RANGE', mentions: ['layer'], call: (o) => ops.mlaDecode(q(), paged.cache, -1, bt(), sl(), o) },
    { name: 'q last dim != dC + dR', code: 'E_SHAPE', mentions: [/\bq\b/], call: (o) => ops.mlaDecode(q(2, 1, 2, dC + dR + 1), paged.cache, 0, bt(), sl(), o) },
    { name: 'q rank 3', code: 'E_SHAPE', mentions: [/\bq\b/], call: (o) => ops.mlaDecode(new Tensor('f32', [2, 2, dC + dR], new Float32Array(4 * (dC + dR))), paged.cache, 0, bt(), sl(), o) },
    { name: 'blockTable rows != b', code: 'E_SHAPE', mentions: ['blockTable'], call: (o) => ops.mlaDecode(q(3), paged.cache, 0, bt(), sl([5, 3, 1]), o) },
    { name: 'seqlens length != b', code: 'E_SHAPE', mentions: ['seqlens'], call: (o) => ops.mlaDecode(q(), paged.cache, 0, bt(), sl([5]), o) },
    { name: 'q bf16', code: 'E_DTYPE', mentions: [/\bq\b/], call: (o) => ops.mlaDecode(new Tensor('bf16', [2, 1, 2, dC + dR], new Uint16Array(4 * (dC + dR))), paged.cache, 0, bt(), sl(), o) },
    { name: 'blockTable f32', code: 'E_DTYPE', mentions: ['blockTable'], call: (o) => ops.mlaDecode(q(), paged.cache, 0, new Tensor('f32', [2, paged.maxBlocks], new Float32Array(2 * paged.maxBlocks)), sl(), o) },
    { name: 'seqlens > maxBlocks · pageSize', code: 'E_RANGE', mentions: ['seqlens'], call: (o) => ops.mlaDecode(q(), paged.cache, 0, bt(), sl([5, paged.maxBlocks * 4 + 1]), o) },
    { name: 'negative seqlen', code: 'E_RANGE', mentions: ['seqlens'], call: (o) => ops.mlaDecode(q(), paged.cache, 0, bt(), sl([5, -1]), o) },
    {
      name: 'block-table entry in use == pages', code: 'E_RANGE', mentions: [/blockTable|block_table/], perImpl: true, call: (o) => {
        const t = paged.blockTable.slice();
        t[1] = paged.cache.pages; // sequence 0's second block (tokens 4..4 in use)
        return ops.mlaDecode(q(), paged.cache, 0, new Tensor('i32', [2, paged.maxBlocks], t), sl(), o);
      },
    },
    {
      name: 'block-table entry in use is -1', code: 'E_RANGE', mentions: [/blockTable|block_table/], perImpl: true, call: (o) => {
        const t = paged.blockTable.slice();
        t[paged.maxBlocks] = -1; // sequence 1's first block
        return ops.mlaDecode(q(), paged.cache, 0, new Tensor('i32', [2, paged.maxBlocks], t), sl(), o);
      },
    },
    {
      name: 'block-table entry in use is 2^31-1', code: 'E_RANGE', mentions: [/blockTable|block_table/], perImpl: true, call: (o) => {
        const t = paged.blockTable.slice();
        t[0] = HUGE;
        return ops.mlaDecode(q(), paged.cache, 0, new Tensor('i32', [2, paged.maxBlocks], t), sl(), o);
      },
    },
    {
      name: 'disposed cache', code: 'E_DISPOSED', call: async (o) => {
        const p2 = await buildPaged(new Rng('disposed'), { dtype: 'f32', dC, dR, pageSize: 4, lens: [1] });
        p2.cache.dispose();
        return ops.mlaDecode(q(1), p2.cache, 0, new Tensor('i32', [1, p2.maxBlocks], p2.blockTable), sl([1]), o);
      },
    },
  ];
  const rows: [string, Bad & { impl: ImplName }][] = [];
  for (const bcase of bad) for (const impl of bcase.perImpl ? IMPLS3 : (['default'] as ImplName[])) rows.push([`${bcase.code} ${bcase.name} [impl ${impl}]`, { ...bcase, impl }]);
  test.each(rows)('%s', async (_n, bcase) => {
    await expectRejects(() => bcase.call({ scale: 0.1, ...implOpts(bcase.impl) }), bcase.code, bcase.mentions ?? [], { name: bcase.name, impl: bcase.impl });
  });
});
