/**
 * Float64 references of DeepSeek's MoE layer, written from the DeepSeek-V2 paper (arXiv
 * 2405.04434 §2.2: device-limited routing), the published MoEGate / DeepseekV2MoE of
 * modeling_deepseek.py (V2: greedy and group_limited_greedy; V3: noaux_tc with
 * e_score_correction_bias) and the dsv2 spec, which pins down what the published code leaves
 * to torch.topk: ties, NaN, masked groups.
 *
 * Routing (per token):
 *   scores = softmax(logits) over the E experts, or sigmoid(logits);
 *   choice = scores (+ bias for noaux_tc);
 *   greedy: the topK largest choices;
 *   group_limited_greedy: groups of E / nGroup consecutive experts, group score = max choice;
 *     keep the topkGroup best groups (ties: lower group index), then the topK best experts
 *     inside the kept groups (never an expert of a masked group);
 *   noaux_tc: as group_limited_greedy with group score = sum of the group's top-2 choices.
 *   Row order: descending choice, ties -> lower expert index. NaN choices are never selected;
 *   slots that cannot be filled are id -1, weight 0 (not counted).
 *   weights = scores[id] (no bias); if normTopkProb and topK > 1: w / (Σ w + 1e-20).
 *   routedScalingFactor: noaux_tc always multiplies (after normalising); greedy and
 *   group_limited_greedy (V2 code) only when not normalising.
 *
 * Experts (DeepseekV2MLP, moe_infer): y_t = Σ_slots w · down_e(silu(gate_e x) ⊙ up_e x)
 *   + shared(x), the shared expert unweighted; gateUp stacks gate_proj rows over up_proj rows.
 */
import { RefError } from './ops';

// Globals used in hot loops are aliased at module scope: under jest every global lookup
// (Math.x, Number.x) goes through the vm context's global interceptor, ~40x slower.
const { abs, exp } = Math;
const num = Number;
const INF = Infinity;

export type TopkMethod = 'greedy' | 'group_limited_greedy' | 'noaux_tc';
export type Scoring = 'softmax' | 'sigmoid';

export interface RouteOpts {
  topK: number;
  method: TopkMethod;
  scoring?: Scoring;
  nGroup?: number;
  topkGroup?: number;
  normTopkProb?: boolean;
  routedScalingFactor?: number;
  /** [E] exact values; required for noaux_tc */
  bias?: ArrayLike<number> | null;
}

export interface RouteOut {
  ids: Int32Array;
  weights: Float64Array;
  tokensPerExpert: Int32Array;
  tokensPerGroup: Int32Array;
  /** [T, E] scores and choices, for tolerances and tie checks */
  scores: Float64Array;
  choice: Float64Array;
  /** [T, nGroup] group scores (-inf where a group has no selectable expert) */
  groupScores: Float64Array;
  /** [T, nGroup] 1 where the group was kept */
  groupKept: Uint8Array;
}

/** The validation the spec asks for; throws RefError with the library's expected code. */
export function validateRoute(E: number, o: RouteOpts, biasLength?: number): void {
  const nGroup = o.nGroup ?? 1;
  const topkGroup = o.topkGroup ?? 1;
  if (!(num.isInteger(o.topK) && o.topK >= 1)) throw new RefError('E_RANGE', `topK ${o.topK} < 1`);
  if (!(num.isInteger(nGroup) && nGroup >= 1) || E % nGroup !== 0) throw new RefError('E_RANGE', `E ${E} % nGroup ${nGroup}`);
  if (!(num.isInteger(topkGroup) && topkGroup >= 1) || topkGroup > nGroup) throw new RefError('E_RANGE', `topkGroup ${topkGroup} > nGroup ${nGroup}`);
  if (o.topK > (topkGroup * E) / nGroup) throw new RefError('E_RANGE', `topK ${o.topK} > topkGroup * E / nGroup`);
  if (o.method === 'noaux_tc') {
    if (o.bias === undefined || o.bias === null) throw new RefError('E_RANGE', 'noaux_tc needs bias');
    if (E / nGroup < 2) throw new RefError('E_RANGE', 'noaux_tc needs >= 2 experts per group');
  }
  if (biasLength !== undefined && biasLength !== E) throw new RefError('E_SHAPE', `bias length ${biasLength} != E ${E}`);
}

/** Sort key: descending value, ties -> lower index. */
function byDesc(vals: ArrayLike<number>): (a: number, b: number) => number {
  return (a, b) => (vals[a] !== vals[b] ? (vals[b] > vals[a] ? 1 : -1) : a - b);
}

export function moeRoute(logits: ArrayLike<number>, T: number, E: number, o: RouteOpts): RouteOut {
  validateRoute(E, o, o.bias ? o.bias.length : undefined);
  const scoring = o.scoring ?? 'softmax';
  const nGroup = o.nGroup ?? 1;
  const topkGroup = o.topkGroup ?? 1;
  const gs = E / nGroup;
  const K = o.topK;
  const norm = (o.normTopkProb ?? false) && K > 1;
  const factor = o.routedScalingFactor ?? 1;
  const scaleWeights = o.method === 'noaux_tc' || !norm;

  const ids = new Int32Array(T * K).fill(-1);
  const weights = new Float64Array(T * K);
  const tokensPerExpert = new Int32Array(E);
  const tokensPerGroup = new Int32Array(nGroup);
  const scores = new Float64Array(T * E);
  const choice = new Float64Array(T * E);
  const groupScores = new Float64Array(T * nGroup);
  const groupKept = new Uint8Array(T * nGroup);

  const row = new Float64Array(E);
  const ch = new Float64Array(E);
  const gsc = new Float64Array(nGroup);
  for (let t = 0; t < T; t++) {
    // scores
    if (scoring === 'softmax') {
      let m = -INF;
      let nan = false;
      for (let e = 0; e < E; e++) {
        const x = logits[t * E + e];
        if (x !== x) nan = true;
        if (x > m) m = x;
      }
      if (nan || m === -INF || m === INF) {
        row.fill(NaN); // torch: a NaN (or inf - inf) makes the whole softmax row NaN
      } else {
        let z = 0;
        for (let e = 0; e < E; e++) {
          row[e] = exp(logits[t * E + e] - m);
          z += row[e];
        }
        for (let e = 0; e < E; e++) row[e] /= z;
      }
    } else {
      for (let e = 0; e < E; e++) row[e] = 1 / (1 + exp(-logits[t * E + e]));
    }
    for (let e = 0; e < E; e++) {
      ch[e] = o.method === 'noaux_tc' ? row[e] + o.bias![e] : row[e];
      scores[t * E + e] = row[e];
      choice[t * E + e] = ch[e];
    }
    // candidate experts
    const selectable = (e: number) => ch[e] === ch[e];
    let cand: number[] = [];
    if (o.method === 'greedy') {
      for (let e = 0; e < E; e++) if (selectable(e)) cand.push(e);
      for (let g = 0; g < nGroup; g++) groupKept[t * nGroup + g] = 1;
      for (let g = 0; g < nGroup; g++) groupScores[t * nGroup + g] = NaN;
    } else {
      for (let g = 0; g < nGroup; g++) {
        const vals: number[] = [];
        for (let e = g * gs; e < (g + 1) * gs; e++) if (selectable(e)) vals.push(ch[e]);
        vals.sort((a, b) => b - a);
        let s: number;
        if (vals.length === 0) s = -INF;
        else if (o.method === 'group_limited_greedy') s = vals[0];
        else s = vals.length >= 2 ? vals[0] + vals[1] : vals[0]; // < 2 selectable: see the test generators (avoided)
        gsc[g] = s;
        groupScores[t * nGroup + g] = s;
      }
      const gOrder = Array.from({ length: nGroup }, (_, g) => g).sort(byDesc(gsc));
      for (let i = 0; i < topkGroup; i++) groupKept[t * nGroup + gOrder[i]] = 1;
      for (let e = 0; e < E; e++) if (groupKept[t * nGroup + ((e / gs) | 0)] && selectable(e)) cand.push(e);
    }
    cand.sort(byDesc(ch));
    cand = cand.slice(0, K);
    let sum = 0;
    for (let s = 0; s < cand.length; s++) {
      ids[t * K + s] = cand[s];
      weights[t * K + s] = row[cand[s]];
      sum += row[cand[s]];
      tokensPerExpert[cand[s]]++;
      tokensPerGroup[(cand[s] / gs) | 0]++;
    }
    for (let s = 0; s < cand.length; s++) {
      let w = weights[t * K + s];
      if (norm) w = w / (sum + 1e-20);
      if (scaleWeights) w = w * factor;
      weights[t * K + s] = w;
    }
  }
  return { ids, weights, tokensPerExpert, tokensPerGroup, scores, choice, groupScores, groupKept };
}

// ---------------------------------------------------------------------------------------
// Experts.

export function silu(g: number): number {
  return g / (1 + exp(-g));
}

/** max over g of |silu'(g)| = |σ(g)(1 + g(1 − σ(g)))| ≈ 1.0998 (at g ≈ 2.4); 1.1 covers it. */
export const SILU_DERIV_MAX = 1.1;

export interface ExpertWeights {
  /** [E, 2I, H] exact values */
  gateUp: ArrayLike<number>;
  /** [E, H, I] */
  down: ArrayLike<number>;
  E: number;
  I: number;
}

export interface SharedWeights {
  /** [2Is, H] */
  gateUp: ArrayLike<number>;
  /** [H, Is] */
  down: ArrayLike<number>;
  I: number;
}

/**
 * One SwiGLU MLP: y = down(silu(gate x) ⊙ up x) for x [H], weights at offsets. Also returns,
 * per output element, the magnitudes of its error bound (see test/moe/experts.test.ts):
 *   absY_d  = Σ_i |down_di h_i|
 *   dHabs_d = Σ_i |down_di| (SILU_DERIV_MAX·G_i·|up_i| + |silu(g_i)|·U_i), G_i = Σ_j |gate_ij x_j|,
 *             U_i = Σ_j |up_ij x_j| (the first-order effect of the gate/up dot-product errors,
 *             to be multiplied by γ_H)
 *   absH_d  = Σ_i |down_di||h_i| (= absY_d; the silu·up product's own roundings scale it)
 */
function mlp(
  x: ArrayLike<number>,
  xo: number,
  H: number,
  I: number,
  gu: ArrayLike<number>,
  guo: number,
  dn: ArrayLike<number>,
  dno: number,
  y: Float64Array,
  absY: Float64Array,
  dH: Float64Array,
  w: number,
): void {
  const h = new Float64Array(I);
  const dh = new Float64Array(I);
  for (let i = 0; i < I; i++) {
    let g = 0;
    let G = 0;
    let u = 0;
    let U = 0;
    const go = guo + i * H;
    const uo = guo + (I + i) * H;
    for (let j = 0; j < H; j++) {
      const pg = gu[go + j] * x[xo + j];
      const pu = gu[uo + j] * x[xo + j];
      g += pg;
      G += abs(pg);
      u += pu;
      U += abs(pu);
    }
    const sg = silu(g);
    h[i] = sg * u;
    dh[i] = SILU_DERIV_MAX * G * abs(u) + abs(sg) * U;
  }
  const aw = abs(w);
  for (let d = 0; d < H; d++) {
    let s = 0;
    let a = 0;
    let e = 0;
    const ro = dno + d * I;
    for (let i = 0; i < I; i++) {
      const pr = dn[ro + i] * h[i];
      s += pr;
      a += abs(pr);
      e += abs(dn[ro + i]) * dh[i];
    }
    y[d] += w * s;
    absY[d] += aw * a;
    dH[d] += aw * e;
  }
}

/**
 * moeExperts: x [T, H], ids/weights [T, k] -> y [T, H]. Slots with id -1 are skipped; an id
 * outside [0, E) throws RefError E_RANGE. Returns y and, per element, absY = Σ over slots
 * (and the shared expert, weight 1) of |w|·Σ_i |down_di h_i|, and dH = Σ |w|·(first-order
 * gate/up error magnitude) — see mlp().
 */
export function moeExperts(
  x: ArrayLike<number>,
  T: number,
  H: number,
  ids: ArrayLike<number>,
  weights: ArrayLike<number>,
  k: number,
  experts: ExpertWeights,
  shared: SharedWeights | null,
): { y: Float64Array; absY: Float64Array; dH: Float64Array } {
  const { E, I } = experts;
  const y = new Float64Array(T * H);
  const absY = new Float64Array(T * H);
  const dH = new Float64Array(T * H);
  const yt = new Float64Array(H);
  const at = new Float64Array(H);
  const dt = new Float64Array(H);
  for (let t = 0; t < T; t++) {
    yt.fill(0);
    at.fill(0);
    dt.fill(0);
    for (let s = 0; s < k; s++) {
      const e = ids[t * k + s];
      if (e === -1) continue;
      if (!(e >= 0 && e < E)) throw new RefError('E_RANGE', `ids[${t}, ${s}] = ${e} out of [0, ${E})`);
      mlp(x, t * H, H, I, experts.gateUp, e * 2 * I * H, experts.down, e * H * I, yt, at, dt, weights[t * k + s]);
    }
    if (shared) mlp(x, t * H, H, shared.I, shared.gateUp, 0, shared.down, 0, yt, at, dt, 1);
    y.set(yt, t * H);
    absY.set(at, t * H);
    dH.set(dt, t * H);
  }
  return { y, absY, dH };
}
