/**
 * Float64 references of Multi-head Latent Attention (DeepSeek-V2, arXiv 2405.04434 §2.1;
 * DeepseekV2Attention of modeling_deepseek.py; FlashMLA's decode reference), independent of
 * the library.
 *
 * Notation (per head h): the cache holds c_t (the compressed latent, dC = kv_lora_rank, after
 * kv_a_layernorm) and k_pe_t (the rotary key, dR, shared by all heads). kv_b_proj.weight is
 * [h · (dNope + dV), dC]; viewed as [h, dNope + dV, dC], its rows [0, dNope) of head h are
 * W_UK^h ([dNope, dC]) and rows [dNope, dNope + dV) are W_UV^h ([dV, dC]), as the modeling
 * code's kv_b_proj(...).view(.., num_heads, qk_nope_head_dim + v_head_dim) split does.
 *
 *  - mlaNaive: the modeling code's attention with K/V EXPANDED explicitly:
 *      k^h_t = [W_UK^h c_t ; k_pe_t], v^h_t = W_UV^h c_t, q^h = [q_nope^h ; q_pe^h],
 *      o^h = softmax_t(scale · q^h · k^h_t) · v^h_t (causal/visibility as given).
 *    The reference of both mlaPrefill and the absorbed decode path.
 *  - mlaLatent: attention over the latent cache itself (FlashMLA's decode kernel, "MQA" with
 *    one 576-wide key head and the first dC of it as value):
 *      score_t = scale · (q[:dC] · c_t + q[dC:] · k_pe_t), out = Σ softmax · c_t,
 *      lse = ln Σ exp(score_t); a query with no visible key gives out 0 and lse = +inf.
 *    The reference of mlaDecode.
 *  - mlaAbsorbed: the absorbed decode in double (q_lat = W_UK^hᵀ q_nope, mlaLatent, then
 *    o = W_UV^h out) — only to self-test that absorption is exact algebra.
 *
 * Each also returns the magnitudes the fp32 error bounds are built from (see test/mla/tol.ts).
 */

// Globals used in hot loops are aliased at module scope: under jest every global lookup
// (Math.x, Number.x) goes through the vm context's global interceptor, ~40x slower.
const math = Math;
const { abs, exp, log } = Math;
const INF = Infinity;

/** One sequence's cached tokens as attention sees them (stored values). */
export interface LatentSeq {
  /** number of cached tokens s_k */
  n: number;
  /** [n, dC] */
  c: Float64Array;
  /** [n, dR] */
  k: Float64Array;
}

/** Per-query-row statistics for the fp32 error bounds. */
export interface AttnStats {
  /** [rows]: keys visible to the row */
  nVis: Int32Array;
  /** [rows · h]: max over visible t of scale · (Σ |q_i||k_ti|), nested for expanded keys */
  absScore: Float64Array;
  /** [rows · h]: max over visible t of |score_t| */
  maxScore: Float64Array;
  /** [rows · h · dOut]: Σ_t p_t |v_td| (nested |W| |c| for expanded values) */
  absOut: Float64Array;
}

export interface AttnOut {
  out: Float64Array;
  lse: Float64Array;
  stats: AttnStats;
}

/**
 * softmax attention of one query over n keys given their scores s[0..n): fills p (the
 * probabilities) and returns lse; n = 0 returns +inf (no key: out stays 0).
 */
function softmaxInto(s: Float64Array, n: number, p: Float64Array): number {
  if (n === 0) return INF;
  let m = -INF;
  for (let t = 0; t < n; t++) if (s[t] > m) m = s[t];
  let z = 0;
  for (let t = 0; t < n; t++) {
    const e = exp(s[t] - m);
    p[t] = e;
    z += e;
  }
  for (let t = 0; t < n; t++) p[t] /= z;
  return m + log(z);
}

/**
 * Latent attention (the mlaDecode definition) for query rows of [rows, h, dC + dR], each row
 * attending the first nVis[r] tokens of seqs[seqOf[r]].
 */
export function mlaLatent(
  q: ArrayLike<number>,
  rows: number,
  h: number,
  dC: number,
  dR: number,
  seqs: readonly LatentSeq[],
  seqOf: ArrayLike<number>,
  nVis: ArrayLike<number>,
  scale: number,
): AttnOut {
  const D = dC + dR;
  const out = new Float64Array(rows * h * dC);
  const lse = new Float64Array(rows * h);
  const stats: AttnStats = {
    nVis: Int32Array.from(nVis),
    absScore: new Float64Array(rows * h),
    maxScore: new Float64Array(rows * h),
    absOut: new Float64Array(rows * h * dC),
  };
  let maxN = 0;
  for (let r = 0; r < rows; r++) maxN = math.max(maxN, nVis[r]);
  const s = new Float64Array(maxN);
  const p = new Float64Array(maxN);
  for (let r = 0; r < rows; r++) {
    const seq = seqs[seqOf[r]];
    const n = nVis[r];
    if (n > seq.n) throw new Error(`row ${r} sees ${n} keys but the sequence has ${seq.n}`);
    const { c, k } = seq;
    for (let hh = 0; hh < h; hh++) {
      const qo = (r * h + hh) * D;
      const ro = r * h + hh;
      let aMax = 0;
      let sMax = 0;
      for (let t = 0; t < n; t++) {
        let dot = 0;
        let ad = 0;
        const co = t * dC;
        for (let i = 0; i < dC; i++) {
          const pr = q[qo + i] * c[co + i];
          dot += pr;
          ad += abs(pr);
        }
        const ko = t * dR;
        for (let i = 0; i < dR; i++) {
          const pr = q[qo + dC + i] * k[ko + i];
          dot += pr;
          ad += abs(pr);
        }
        s[t] = scale * dot;
        const as = abs(scale) * ad;
        if (as > aMax) aMax = as;
        if (abs(s[t]) > sMax) sMax = abs(s[t]);
      }
      lse[ro] = softmaxInto(s, n, p);
      stats.absScore[ro] = aMax;
      stats.maxScore[ro] = sMax;
      const oo = ro * dC;
      for (let t = 0; t < n; t++) {
        const pt = p[t];
        const co = t * dC;
        for (let d = 0; d < dC; d++) {
          out[oo + d] += pt * c[co + d];
          stats.absOut[oo + d] += pt * abs(c[co + d]);
        }
      }
    }
  }
  return { out, lse, stats };
}

/** Per-head blocks of kv_b_proj [h · (dNope + dV), dC]: row offset of W_UK^h and W_UV^h. */
function ukRow(hh: number, i: number, dNope: number, dV: number): number {
  return hh * (dNope + dV) + i;
}
function uvRow(hh: number, d: number, dNope: number, dV: number): number {
  return hh * (dNope + dV) + dNope + d;
}

/**
 * Naive MLA with explicitly expanded keys and values, for query rows q_nope [rows, h, dNope]
 * and q_pe [rows, h, dR]; row r attends the first nVis[r] tokens of seqs[seqOf[r]].
 * kvB: kv_b_proj.weight [h · (dNope + dV), dC] (exact values). Returns out [rows, h, dV].
 *
 * Bound magnitudes (order-independent, so they cover the expanded and the absorbed
 * evaluation orders alike):
 *   absScore = scale · max_t (Σ_j (Σ_i |q_i||W_UK_ij|) |c_tj| + Σ_r |q_pe_r||k_pe_tr|)
 *   absOut_d = Σ_j |W_UV_dj| Σ_t p_t |c_tj|
 */
export function mlaNaive(
  qNope: ArrayLike<number>,
  qPe: ArrayLike<number>,
  rows: number,
  h: number,
  dNope: number,
  dR: number,
  dV: number,
  dC: number,
  kvB: ArrayLike<number>,
  seqs: readonly LatentSeq[],
  seqOf: ArrayLike<number>,
  nVis: ArrayLike<number>,
  scale: number,
): AttnOut {
  const out = new Float64Array(rows * h * dV);
  const lse = new Float64Array(rows * h);
  const stats: AttnStats = {
    nVis: Int32Array.from(nVis),
    absScore: new Float64Array(rows * h),
    maxScore: new Float64Array(rows * h),
    absOut: new Float64Array(rows * h * dV),
  };
  // rows grouped by sequence so each sequence's keys/values are expanded once per head
  const bySeq = new Map<number, number[]>();
  for (let r = 0; r < rows; r++) {
    const si = seqOf[r];
    if (!bySeq.has(si)) bySeq.set(si, []);
    bySeq.get(si)!.push(r);
  }
  for (const [si, rs] of bySeq) {
    const seq = seqs[si];
    let n = 0;
    for (const r of rs) {
      if (nVis[r] > seq.n) throw new Error(`row ${r} sees ${nVis[r]} keys but the sequence has ${seq.n}`);
      n = math.max(n, nVis[r]);
    }
    const { c, k } = seq;
    const kN = new Float64Array(n * dNope);
    const v = new Float64Array(n * dV);
    const absC = new Float64Array(n * dC);
    for (let i = 0; i < n * dC; i++) absC[i] = abs(c[i]);
    const s = new Float64Array(n);
    const p = new Float64Array(n);
    const qw = new Float64Array(dC);
    const pc = new Float64Array(dC);
    for (let hh = 0; hh < h; hh++) {
      // expand: k_nope_t = W_UK^h c_t, v_t = W_UV^h c_t
      for (let t = 0; t < n; t++) {
        const co = t * dC;
        for (let i = 0; i < dNope; i++) {
          const wo = ukRow(hh, i, dNope, dV) * dC;
          let acc = 0;
          for (let j = 0; j < dC; j++) acc += kvB[wo + j] * c[co + j];
          kN[t * dNope + i] = acc;
        }
        for (let d = 0; d < dV; d++) {
          const wo = uvRow(hh, d, dNope, dV) * dC;
          let acc = 0;
          for (let j = 0; j < dC; j++) acc += kvB[wo + j] * c[co + j];
          v[t * dV + d] = acc;
        }
      }
      for (const r of rs) {
        const nv = nVis[r];
        const ro = r * h + hh;
        const qn = ro * dNope;
        const qp = ro * dR;
        // qw_j = Σ_i |q_i||W_UK_ij| for the nested score magnitude
        qw.fill(0);
        for (let i = 0; i < dNope; i++) {
          const aq = abs(qNope[qn + i]);
          const wo = ukRow(hh, i, dNope, dV) * dC;
          for (let j = 0; j < dC; j++) qw[j] += aq * abs(kvB[wo + j]);
        }
        let aMax = 0;
        let sMax = 0;
        for (let t = 0; t < nv; t++) {
          let dot = 0;
          for (let i = 0; i < dNope; i++) dot += qNope[qn + i] * kN[t * dNope + i];
          let ad = 0;
          for (let i = 0; i < dR; i++) {
            const pr = qPe[qp + i] * k[t * dR + i];
            dot += pr;
            ad += abs(pr);
          }
          const co = t * dC;
          for (let j = 0; j < dC; j++) ad += qw[j] * absC[co + j];
          s[t] = scale * dot;
          const as = abs(scale) * ad;
          if (as > aMax) aMax = as;
          if (abs(s[t]) > sMax) sMax = abs(s[t]);
        }
        lse[ro] = softmaxInto(s, nv, p);
        stats.absScore[ro] = aMax;
        stats.maxScore[ro] = sMax;
        const oo = ro * dV;
        pc.fill(0);
        for (let t = 0; t < nv; t++) {
          const pt = p[t];
          for (let d = 0; d < dV; d++) out[oo + d] += pt * v[t * dV + d];
          const co = t * dC;
          for (let j = 0; j < dC; j++) pc[j] += pt * absC[co + j];
        }
        for (let d = 0; d < dV; d++) {
          const wo = uvRow(hh, d, dNope, dV) * dC;
          let a = 0;
          for (let j = 0; j < dC; j++) a += abs(kvB[wo + j]) * pc[j];
          stats.absOut[oo + d] = a;
        }
      }
    }
  }
  return { out, lse, stats };
}

/** W_UK of every head transposed: [h, dC, dNope] (the headsGemm weight that absorbs it into q). */
export function wUkT(kvB: ArrayLike<number>, h: number, dNope: number, dV: number, dC: number): Float64Array {
  const w = new Float64Array(h * dC * dNope);
  for (let hh = 0; hh < h; hh++) {
    for (let i = 0; i < dNope; i++) {
      const ro = ukRow(hh, i, dNope, dV) * dC;
      for (let j = 0; j < dC; j++) w[(hh * dC + j) * dNope + i] = kvB[ro + j];
    }
  }
  return w;
}

/** W_UV of every head: [h, dV, dC] (rows of kv_b_proj, unchanged). */
export function wUv(kvB: ArrayLike<number>, h: number, dNope: number, dV: number, dC: number): Float64Array {
  const w = new Float64Array(h * dV * dC);
  for (let hh = 0; hh < h; hh++) {
    for (let d = 0; d < dV; d++) {
      const ro = uvRow(hh, d, dNope, dV) * dC;
      for (let j = 0; j < dC; j++) w[(hh * dV + d) * dC + j] = kvB[ro + j];
    }
  }
  return w;
}

/** Per-head y[T, h, N] = x[T, h, K] · w[h, N, K]ᵀ in double (headsGemm), with Σ|x w| per element. */
export function headsGemm(
  x: ArrayLike<number>,
  T: number,
  h: number,
  K: number,
  w: ArrayLike<number>,
  N: number,
): { y: Float64Array; absDot: Float64Array } {
  const y = new Float64Array(T * h * N);
  const absDot = new Float64Array(T * h * N);
  for (let t = 0; t < T; t++) {
    for (let hh = 0; hh < h; hh++) {
      const xo = (t * h + hh) * K;
      for (let nn = 0; nn < N; nn++) {
        const wo = (hh * N + nn) * K;
        let s = 0;
        let a = 0;
        for (let kk = 0; kk < K; kk++) {
          const pr = x[xo + kk] * w[wo + kk];
          s += pr;
          a += abs(pr);
        }
        y[(t * h + hh) * N + nn] = s;
        absDot[(t * h + hh) * N + nn] = a;
      }
    }
  }
  return { y, absDot };
}

/** The absorbed decode in double: q_lat = W_UKᵀ q_nope, latent attention, o = W_UV out. */
export function mlaAbsorbed(
  qNope: ArrayLike<number>,
  qPe: ArrayLike<number>,
  rows: number,
  h: number,
  dNope: number,
  dR: number,
  dV: number,
  dC: number,
  kvB: ArrayLike<number>,
  seqs: readonly LatentSeq[],
  seqOf: ArrayLike<number>,
  nVis: ArrayLike<number>,
  scale: number,
): { out: Float64Array; lse: Float64Array } {
  const qLat = headsGemm(qNope, rows, h, dNope, wUkT(kvB, h, dNope, dV, dC), dC).y;
  const D = dC + dR;
  const q = new Float64Array(rows * h * D);
  for (let r = 0; r < rows * h; r++) {
    for (let j = 0; j < dC; j++) q[r * D + j] = qLat[r * dC + j];
    for (let i = 0; i < dR; i++) q[r * D + dC + i] = qPe[r * dR + i];
  }
  const lat = mlaLatent(q, rows, h, dC, dR, seqs, seqOf, nVis, scale);
  const o = headsGemm(lat.out, rows, h, dC, wUv(kvB, h, dNope, dV, dC), dV).y;
  return { out: o, lse: lat.lse };
}

// ---------------------------------------------------------------------------------------
// Row bookkeeping for the two calling conventions.

/**
 * mlaDecode rows: q [b, s_q, h, D]; row (i, j) belongs to sequence i and sees keys
 * t ≤ s_k − s_q + j, i.e. max(0, s_k − s_q + j + 1) of them.
 */
export function decodeRows(seqlens: ArrayLike<number>, sq: number): { seqOf: Int32Array; nVis: Int32Array } {
  const b = seqlens.length;
  const seqOf = new Int32Array(b * sq);
  const nVis = new Int32Array(b * sq);
  for (let i = 0; i < b; i++) {
    for (let j = 0; j < sq; j++) {
      seqOf[i * sq + j] = i;
      nVis[i * sq + j] = math.max(0, seqlens[i] - sq + j + 1);
    }
  }
  return { seqOf, nVis };
}

/**
 * mlaPrefill rows: sequence i owns rows cu[i]..cu[i+1] (n_i of them), the last n_i of its
 * seqlens[i] keys; its j-th row sees keys t ≤ seqlens[i] − n_i + j.
 */
export function prefillRows(seqlens: ArrayLike<number>, cu: ArrayLike<number>): { seqOf: Int32Array; nVis: Int32Array } {
  const b = seqlens.length;
  const T = cu[b];
  const seqOf = new Int32Array(T);
  const nVis = new Int32Array(T);
  for (let i = 0; i < b; i++) {
    const ni = cu[i + 1] - cu[i];
    if (ni > seqlens[i]) throw new Error(`sequence ${i} has ${ni} queries but ${seqlens[i]} keys`);
    for (let j = 0; j < ni; j++) {
      seqOf[cu[i] + j] = i;
      nVis[cu[i] + j] = seqlens[i] - ni + j + 1;
    }
  }
  return { seqOf, nVis };
}
