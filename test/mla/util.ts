/**
 * Shared helpers of the MLA tests: building a paged latent cache the FlashMLA way (poisoned
 * first, pages allocated and shuffled, junk in unused block-table slots), the stored values
 * the reference must see (computed with the reference quantizer, never read back from the
 * library), and the fp32 error bounds of attention.
 */
import { KvCache } from '../../lib/kv-cache';
import { Tensor } from '../../lib/tensor';
import { Dsv2Error } from '../../lib/errors';
import { Rng } from '../reference/rng';
import { storedValues, type CacheDType } from '../reference/kv';
import type { AttnStats, LatentSeq } from '../reference/mla';
import { caseName, U32 } from '../ops/util';

// Math aliased at module scope: global lookups are slow in jest's vm context (hot loops here).
const math = Math;

/** γ_n = n·u / (1 − n·u): the classic bound of n accumulated roundings (Higham §3.1). */
export function gamma(n: number): number {
  return (n * U32) / (1 - n * U32);
}

/** Block-table junk written past each sequence's used blocks (never read, per the spec). */
export type Junk = 'huge' | 'neg' | 'random' | 'zero';
export const HUGE = 2 ** 31 - 1;

export interface PagedSeqs {
  cache: KvCache;
  /** [b, maxBlocks] */
  blockTable: Int32Array;
  maxBlocks: number;
  /** stored values per sequence, as attention must see them */
  seqs: LatentSeq[];
  /** the f32 inputs that were appended (before bf16/fp8 rounding) */
  orig: { c: Float32Array; k: Float32Array }[];
  /** slots of each sequence's tokens */
  slots: Int32Array[];
}

export interface BuildOpts {
  dtype: CacheDType;
  dC: number;
  dR: number;
  pageSize: number;
  lens: number[];
  layers?: number;
  /** layer written with the data under test (others get different finite data) */
  layer?: number;
  /** extra free pages beyond what the sequences need */
  sparePages?: number;
  poison?: boolean;
  junk?: Junk;
  /** extra block-table columns beyond the longest sequence's */
  extraBlocks?: number;
  pow2Scales?: boolean;
  /** std of c_kv and k_pe */
  cStd?: number;
  kStd?: number;
  /** custom data per sequence/token (overrides the random draw) */
  fill?: (seq: number, t: number, c: Float32Array, k: Float32Array) => void;
  /** append in shuffled chunks (exercises arbitrary slot order) */
  shuffledAppend?: boolean;
}

export function shuffle<T>(a: T[], rng: Rng): T[] {
  for (let i = a.length - 1; i > 0; i--) {
    const j = rng.int(0, i + 1);
    [a[i], a[j]] = [a[j], a[i]];
  }
  return a;
}

/**
 * Creates a cache, optionally poisons it, allocates every needed page plus spares, shuffles
 * them across the sequences, writes each sequence's tokens into `layer` (and different data
 * into the other layers at the same slots) and returns the block table and stored values.
 */
export async function buildPaged(rng: Rng, o: BuildOpts): Promise<PagedSeqs> {
  const layers = o.layers ?? 1;
  const layer = o.layer ?? 0;
  const ps = o.pageSize;
  const need = o.lens.map((n) => math.ceil(n / ps));
  const total = need.reduce((a, b) => a + b, 0);
  const pages = total + (o.sparePages ?? 3);
  const cache = await KvCache.create({ layers, pages, dC: o.dC, dR: o.dR, dtype: o.dtype, pageSize: ps, pow2Scales: o.pow2Scales ?? false });
  if (o.poison ?? true) await cache.poison();
  // take every page, shuffle, give back the ones no sequence uses (so the ids in use are
  // scattered over [0, pages) rather than the lowest ones)
  const all = shuffle(Array.from(cache.allocPages(pages)), rng);
  const used = all.slice(0, total);
  cache.freePages(all.slice(total));
  const maxBlocks = math.max(1, ...need) + (o.extraBlocks ?? 1);
  const b = o.lens.length;
  const blockTable = new Int32Array(b * maxBlocks);
  const junk = o.junk ?? 'huge';
  let next = 0;
  for (let i = 0; i < b; i++) {
    for (let j = 0; j < maxBlocks; j++) {
      if (j < need[i]) blockTable[i * maxBlocks + j] = used[next++];
      else blockTable[i * maxBlocks + j] = junk === 'huge' ? HUGE : junk === 'neg' ? -1 : junk === 'zero' ? 0 : rng.int(-(2 ** 31), 2 ** 31);
    }
  }
  const seqs: LatentSeq[] = [];
  const orig: { c: Float32Array; k: Float32Array }[] = [];
  const slots: Int32Array[] = [];
  const { dC, dR } = o;
  for (let i = 0; i < b; i++) {
    const n = o.lens[i];
    const c = rng.normalF32(n * dC, o.cStd ?? 1);
    const k = rng.normalF32(n * dR, o.kStd ?? 1);
    if (o.fill) {
      for (let t = 0; t < n; t++) o.fill(i, t, c.subarray(t * dC, (t + 1) * dC), k.subarray(t * dR, (t + 1) * dR));
    }
    const sl = new Int32Array(n);
    for (let t = 0; t < n; t++) sl[t] = blockTable[i * maxBlocks + math.floor(t / ps)] * ps + (t % ps);
    const sc = new Float64Array(n * dC);
    const sk = new Float64Array(n * dR);
    for (let t = 0; t < n; t++) {
      const st = storedValues(o.dtype, c.subarray(t * dC, (t + 1) * dC), k.subarray(t * dR, (t + 1) * dR), dC, dR, o.pow2Scales ?? false);
      sc.set(st.c, t * dC);
      sk.set(st.k, t * dR);
    }
    seqs.push({ n, c: sc, k: sk });
    orig.push({ c, k });
    slots.push(sl);
    await appendTokens(cache, layer, c, k, sl, dC, dR, o.shuffledAppend ? rng : null);
    // other layers: the same slots hold different (finite) data, so reading the wrong layer
    // gives wrong numbers rather than NaN
    for (let l = 0; l < layers; l++) {
      if (l === layer) continue;
      await appendTokens(cache, l, rng.normalF32(n * dC, 3), rng.normalF32(n * dR, 3), sl, dC, dR, null);
    }
  }
  return { cache, blockTable, maxBlocks, seqs, orig, slots };
}

/** Appends tokens (optionally in shuffled chunks of random sizes). */
export async function appendTokens(
  cache: KvCache,
  layer: number,
  c: Float32Array,
  k: Float32Array,
  slots: Int32Array,
  dC: number,
  dR: number,
  rng: Rng | null,
): Promise<void> {
  const n = slots.length;
  if (n === 0) return;
  if (!rng) {
    await cache.append(layer, new Tensor('f32', [n, dC], c.slice()), new Tensor('f32', [n, dR], k.slice()), new Tensor('i32', [n], slots.slice()));
    return;
  }
  const order = shuffle(Array.from({ length: n }, (_, t) => t), rng);
  let at = 0;
  while (at < n) {
    const m = math.min(n - at, rng.int(1, 40));
    const cc = new Float32Array(m * dC);
    const kk = new Float32Array(m * dR);
    const ss = new Int32Array(m);
    for (let j = 0; j < m; j++) {
      const t = order[at + j];
      cc.set(c.subarray(t * dC, (t + 1) * dC), j * dC);
      kk.set(k.subarray(t * dR, (t + 1) * dR), j * dR);
      ss[j] = slots[t];
    }
    await cache.append(layer, new Tensor('f32', [m, dC], cc), new Tensor('f32', [m, dR], kk), new Tensor('i32', [m], ss));
    at += m;
  }
}

// ---------------------------------------------------------------------------------------
// fp32 error bounds of attention.

/**
 * Bounds of an fp32 attention against the float64 reference, per output element and per lse,
 * from the reference's magnitudes (AttnStats), u = 2^-24:
 *
 *  score:  |ŝ_t − s_t| ≤ E = (γ_dScore + 3u)·absScore + 4u·(M + ln n + 1)
 *          — the dot product(s) of dScore products in any order, nested dot products included
 *          (absScore is the nested Σ|q||W||c| for expanded or absorbed keys), 3u for the scale
 *          multiply and a log2(e) prescale (exp2 kernels); 4u·(M + ln n + 1) for the max
 *          subtraction, the lse-relative exponent of split combination (|lse| ≤ M + ln n).
 *  probabilities p̂_t = p_t·(1 + ε), |ε| ≤ ε_p = e^κ − 1, κ = 2E + (18n + 32)u:
 *          numerator and denominator each see E and, per term, exp (8u budget, as in the
 *          softmax/silu tests), up to n online-softmax rescalings or split combinations by an
 *          exp-computed factor (8u each) and a sum of n positive terms (γ_n).
 *  out_d:  (ε_p + (1 + ε_p)·γ_{n + dChain}) · absOut_d + an f32 min-normal per key for
 *          underflowed terms (FTZ); dChain = products inside each value (0 for the latent
 *          cache itself, dC when values are W_UV·c_t or W_UV is applied to the output).
 *  lse:    E + (9n + 16)u + 3u·|lse| (E; the sum's own error as above, one side; the log and
 *          ln/log2 conversions); an lse of +inf (no key) must be +inf exactly.
 */
export function attnBounds(
  st: AttnStats,
  lse: Float64Array,
  h: number,
  dOut: number,
  dScore: number,
  dChain: number,
): { out: Float64Array; lse: Float64Array } {
  const rows = st.nVis.length;
  const out = new Float64Array(rows * h * dOut);
  const lseB = new Float64Array(rows * h);
  for (let r = 0; r < rows; r++) {
    const n = st.nVis[r];
    for (let hh = 0; hh < h; hh++) {
      const ro = r * h + hh;
      if (n === 0) continue; // exact: out 0, lse +inf
      const E = (gamma(dScore) + 3 * U32) * st.absScore[ro] + 4 * U32 * (st.maxScore[ro] + math.log(n) + 1);
      const kappa = 2 * E + (18 * n + 32) * U32;
      const ep = math.expm1(kappa);
      const g = gamma(n + dChain);
      for (let d = 0; d < dOut; d++) {
        out[ro * dOut + d] = (ep + (1 + ep) * g) * st.absOut[ro * dOut + d] + n * 2 ** -126;
      }
      lseB[ro] = E + (9 * n + 16) * U32 + 3 * U32 * math.abs(lse[ro]);
    }
  }
  return { out, lse: lseB };
}

// ---------------------------------------------------------------------------------------
// Errors from synchronous methods.

/** `fn()` must throw (synchronously) a Dsv2Error of `code` mentioning each of `mentions`. */
export function expectThrowsCode(fn: () => unknown, code: string, mentions: readonly (string | RegExp)[] = [], ctx?: unknown): Dsv2Error {
  const where = ctx === undefined ? '' : `; case ${caseName(ctx as object)}`;
  let err: unknown = null;
  let threw = false;
  try {
    fn();
  } catch (e) {
    threw = true;
    err = e;
  }
  if (!threw) throw new Error(`did not throw, expected ${code}${where}`);
  if (!(err instanceof Dsv2Error)) throw new Error(`threw a non-Dsv2Error ${String(err)}${where}`);
  if (err.code !== code) throw new Error(`threw ${err.code} (${err.message}), expected ${code}${where}`);
  for (const m of mentions) {
    const ok = typeof m === 'string' ? err.message.includes(m) : m.test(err.message);
    if (!ok) throw new Error(`error message ${JSON.stringify(err.message)} does not mention ${String(m)}${where}`);
  }
  return err;
}

/** Like expectRejects, for the few checks where the spec allows either of two codes. */
export async function expectRejectsOneOf(fn: () => Promise<unknown>, codes: readonly string[], ctx?: unknown): Promise<Dsv2Error> {
  const where = ctx === undefined ? '' : `; case ${caseName(ctx as object)}`;
  let p: Promise<unknown>;
  try {
    p = fn();
  } catch (e) {
    throw new Error(`threw synchronously instead of returning a rejected promise: ${String(e)}${where}`);
  }
  const outcome = await p.then(
    (v: unknown) => ({ resolved: true as const, v }),
    (e: unknown) => ({ resolved: false as const, e }),
  );
  if (outcome.resolved) throw new Error(`resolved, expected a rejection with one of ${codes.join(', ')}${where}`);
  const err = outcome.e;
  if (!(err instanceof Dsv2Error)) throw new Error(`rejected with a non-Dsv2Error ${String(err)}${where}`);
  if (!codes.includes(err.code)) throw new Error(`rejected with ${err.code} (${err.message}), expected one of ${codes.join(', ')}${where}`);
  return err;
}

export const i32 = (values: ArrayLike<number>, shape: readonly number[]) => new Tensor('i32', shape, Int32Array.from(values));

// ---------------------------------------------------------------------------------------
// fp8 cache vs the unquantized values: the format's own error, propagated.

/**
 * Bound on |attention over the fp8-stored cache − attention over the original f32 values|
 * (exact arithmetic on both sides; add the fp32 bound of the library separately), for latent
 * decode rows of q [rows, h, dC + dR]:
 *  - per stored element: |ĉ − c| ≤ δc = 2^-4|c| + 2^-10·scale_tile (+ 2u terms): e4m3 keeps 3
 *    fraction bits, so RNE is off by ≤ 2^-4 relative in the normal range and by ≤ 2^-10 of the
 *    scale in the subnormal range (fp8.quantErrorBound); k_pe in bf16: |k̂ − k| ≤ 2^-8|k|;
 *  - score: |ŝ_t − s_t| ≤ Δ_t = |scale|·(Σ_j |q_j| δc_tj + Σ_r |q_r| δk_tr);
 *  - probabilities: p̂_t / p_t = e^(ŝ_t − s_t) / Σ_u p_u e^(ŝ_u − s_u) ∈ [e^-(Δ_t + Δ), e^(Δ_t + Δ)],
 *    Δ = max_t Δ_t;
 *  - out_d: |Σ p̂ ĉ − Σ p c| ≤ Σ_t p_t [(e^(Δ_t + Δ) − 1)(|c_td| + δc_td) + δc_td];
 *  - lse: |l̂se − lse| ≤ Δ.
 */
export function fp8DecodeDeviation(
  q: ArrayLike<number>,
  rows: number,
  h: number,
  dC: number,
  dR: number,
  orig: readonly { c: Float32Array; k: Float32Array }[],
  seqOf: ArrayLike<number>,
  nVis: ArrayLike<number>,
  scale: number,
  pow2Scales: boolean,
  quantErrorBound: (x: number, s: number) => number,
  groupScale: (v: ArrayLike<number>, a: number, b: number, pow2: boolean) => number,
): { out: Float64Array; lse: Float64Array } {
  const D = dC + dR;
  const out = new Float64Array(rows * h * dC);
  const lse = new Float64Array(rows * h);
  const dcCache = new Map<number, Float64Array>();
  const dcOf = (si: number): Float64Array => {
    let dc = dcCache.get(si);
    if (dc) return dc;
    const { c } = orig[si];
    const n = c.length / dC;
    dc = new Float64Array(n * dC);
    for (let t = 0; t < n; t++) {
      for (let a = 0; a < dC; a += 128) {
        const b = math.min(dC, a + 128);
        const s = groupScale(c, t * dC + a, t * dC + b, pow2Scales);
        for (let j = a; j < b; j++) dc[t * dC + j] = quantErrorBound(c[t * dC + j], s);
      }
    }
    dcCache.set(si, dc);
    return dc;
  };
  for (let r = 0; r < rows; r++) {
    const si = seqOf[r];
    const n = nVis[r];
    if (n === 0) continue;
    const { c, k } = orig[si];
    const dc = dcOf(si);
    for (let hh = 0; hh < h; hh++) {
      const qo = (r * h + hh) * D;
      const s = new Float64Array(n);
      const del = new Float64Array(n);
      let m = -Infinity;
      let dMax = 0;
      for (let t = 0; t < n; t++) {
        let dot = 0;
        let dl = 0;
        for (let j = 0; j < dC; j++) {
          dot += q[qo + j] * c[t * dC + j];
          dl += math.abs(q[qo + j]) * dc[t * dC + j];
        }
        for (let i = 0; i < dR; i++) {
          dot += q[qo + dC + i] * k[t * dR + i];
          dl += math.abs(q[qo + dC + i]) * math.abs(k[t * dR + i]) * 2 ** -8;
        }
        s[t] = scale * dot;
        del[t] = math.abs(scale) * dl;
        if (s[t] > m) m = s[t];
        if (del[t] > dMax) dMax = del[t];
      }
      let z = 0;
      for (let t = 0; t < n; t++) z += math.exp(s[t] - m);
      const oo = (r * h + hh) * dC;
      for (let t = 0; t < n; t++) {
        const p = math.exp(s[t] - m) / z;
        const f = math.expm1(del[t] + dMax);
        for (let d = 0; d < dC; d++) out[oo + d] += p * (f * (math.abs(c[t * dC + d]) + dc[t * dC + d]) + dc[t * dC + d]);
      }
      lse[r * h + hh] = dMax;
    }
  }
  return { out, lse };
}
