/**
 * Float64 reference implementations of the dsv2 ops, written from the DeepSeek-V2 paper
 * (arXiv 2405.04434), the published modeling_deepseek.py of deepseek-ai/DeepSeek-V2 and
 * transformers' logits warpers, and from the sampling definition of the dsv2 spec.
 * Independent of the library: plain arrays in, plain arrays out, all arithmetic in double.
 *
 * Inputs are the exact values the library sees (f32 values, or bf16/f16 weights decoded
 * exactly), so the only differences against the library are its own fp32 roundings.
 */
import { f32ToBf16Bits, f32ToF16Bits, type FloatDType } from './dtype';

// Globals used in hot loops are aliased at module scope: under jest every global lookup
// (Math.x, Number.x) goes through the vm context's global interceptor, ~40x slower.
const math = Math;
const num = Number;
const INF = Infinity;

/** An error the reference raises where the library must reject with the same code. */
export class RefError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
    this.name = 'RefError';
  }
}

const prod = (shape: readonly number[]): number => shape.reduce((a, b) => a * b, 1);

// ---------------------------------------------------------------------------------------
// Embedding: out[..., :] = table[ids[...], :]

export function embedding(
  ids: ArrayLike<number | bigint>,
  table: ArrayLike<number>,
  vocab: number,
  hidden: number,
): Float64Array {
  const out = new Float64Array(ids.length * hidden);
  for (let t = 0; t < ids.length; t++) {
    const id = Number(ids[t]);
    if (!(id >= 0 && id < vocab && num.isInteger(id))) {
      throw new RefError('E_RANGE', `ids[${t}] = ${id} out of [0, ${vocab})`);
    }
    for (let h = 0; h < hidden; h++) out[t * hidden + h] = table[id * hidden + h];
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// RMSNorm (DeepseekV2RMSNorm): y = weight * (x * rsqrt(mean(x^2) + eps)), over the last dim.

export function rmsNorm(x: ArrayLike<number>, dim: number, weight: ArrayLike<number>, eps: number): Float64Array {
  const rows = dim === 0 ? 0 : x.length / dim;
  const out = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    let ss = 0;
    for (let i = 0; i < dim; i++) ss += x[r * dim + i] * x[r * dim + i];
    const inv = 1 / math.sqrt(ss / dim + eps);
    for (let i = 0; i < dim; i++) out[r * dim + i] = weight[i] * (x[r * dim + i] * inv);
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Rotary tables: DeepseekV2RotaryEmbedding / DeepseekV2YarnRotaryEmbedding, in double.

export interface YarnParams {
  factor: number;
  originalMaxPositionEmbeddings: number;
  betaFast: number;
  betaSlow: number;
  mscale: number;
  mscaleAllDim: number;
}

/** yarn_find_correction_dim: the dim index whose wavelength fits numRotations times in maxPos. */
export function yarnFindCorrectionDim(numRotations: number, dim: number, base: number, maxPos: number): number {
  return (dim * math.log(maxPos / (numRotations * 2 * math.PI))) / (2 * math.log(base));
}

/** yarn_find_correction_range: [floor(dim(betaFast)), ceil(dim(betaSlow))] clamped to [0, dim-1]. */
export function yarnFindCorrectionRange(
  lowRot: number,
  highRot: number,
  dim: number,
  base: number,
  maxPos: number,
): [number, number] {
  const low = math.floor(yarnFindCorrectionDim(lowRot, dim, base, maxPos));
  const high = math.ceil(yarnFindCorrectionDim(highRot, dim, base, maxPos));
  return [math.max(low, 0), math.min(high, dim - 1)];
}

/** yarn_get_mscale: 0.1 * mscale * ln(scale) + 1 for scale > 1, else 1. */
export function yarnGetMscale(scale = 1, mscale = 1): number {
  if (scale <= 1) return 1.0;
  return 0.1 * mscale * math.log(scale) + 1.0;
}

/** yarn_linear_ramp_mask: clamp((i - min) / (max - min), 0, 1) for i in [0, n); max += 0.001 if equal. */
export function yarnLinearRampMask(min: number, max: number, n: number): Float64Array {
  if (min === max) max += 0.001;
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = math.min(1, math.max(0, (i - min) / (max - min)));
  return out;
}

/** inv_freq[i], i in [0, dim/2): plain theta^(-2i/dim), or the YaRN blend of the modeling code. */
export function ropeInvFreq(dim: number, theta: number, yarn: YarnParams | null): Float64Array {
  const half = dim / 2;
  const freqExtra = new Float64Array(half);
  for (let i = 0; i < half; i++) freqExtra[i] = 1 / theta ** ((2 * i) / dim);
  if (!yarn) return freqExtra;
  const freqInter = new Float64Array(half);
  for (let i = 0; i < half; i++) freqInter[i] = 1 / (yarn.factor * theta ** ((2 * i) / dim));
  const [low, high] = yarnFindCorrectionRange(yarn.betaFast, yarn.betaSlow, dim, theta, yarn.originalMaxPositionEmbeddings);
  const ramp = yarnLinearRampMask(low, high, half);
  const invFreq = new Float64Array(half);
  for (let i = 0; i < half; i++) {
    const mask = 1 - ramp[i]; // inv_freq_mask: 1 keeps the extrapolated (original) frequency
    invFreq[i] = freqInter[i] * (1 - mask) + freqExtra[i] * mask;
  }
  return invFreq;
}

/** _mscale of DeepseekV2YarnRotaryEmbedding (1 without YaRN). */
export function ropeMscale(yarn: YarnParams | null): number {
  if (!yarn) return 1;
  return yarnGetMscale(yarn.factor, yarn.mscale) / yarnGetMscale(yarn.factor, yarn.mscaleAllDim);
}

export interface RefRopeTable {
  half: number;
  rows: number;
  /** [rows, half]: cos(p * inv_freq[i]) * _mscale */
  cos: Float64Array;
  sin: Float64Array;
}

export function ropeTable(opts: { dim: number; maxPositions: number; theta?: number; yarn?: YarnParams | null }): RefRopeTable {
  const { dim, maxPositions } = opts;
  const theta = opts.theta ?? 10000;
  const yarn = opts.yarn ?? null;
  const half = dim / 2;
  const invFreq = ropeInvFreq(dim, theta, yarn);
  const ms = ropeMscale(yarn);
  const cos = new Float64Array(maxPositions * half);
  const sin = new Float64Array(maxPositions * half);
  for (let p = 0; p < maxPositions; p++) {
    for (let i = 0; i < half; i++) {
      const f = p * invFreq[i]; // torch.outer(t, inv_freq)
      cos[p * half + i] = math.cos(f) * ms;
      sin[p * half + i] = math.sin(f) * ms;
    }
  }
  return { half, rows: maxPositions, cos, sin };
}

/**
 * apply_rotary_pos_emb of modeling_deepseek.py for one vector, transcribed literally:
 * de-interleave (view(d/2, 2).transpose -> [x0, x2, ..., x1, x3, ...]) when interleaved,
 * then q * cat(cos, cos) + rotate_half(q) * cat(sin, sin).
 * x: [T, H, d] flattened (H = 1 for [T, d]); cos/sin rows indexed by positions[t].
 */
export function rope(
  x: ArrayLike<number>,
  T: number,
  H: number,
  d: number,
  positions: ArrayLike<number | bigint>,
  table: { half: number; cos: ArrayLike<number>; sin: ArrayLike<number> },
  interleaved: boolean,
): Float64Array {
  const half = d / 2;
  const out = new Float64Array(T * H * d);
  const q = new Float64Array(d);
  const rot = new Float64Array(d);
  for (let t = 0; t < T; t++) {
    const p = Number(positions[t]);
    const cosFull = new Float64Array(d);
    const sinFull = new Float64Array(d);
    for (let i = 0; i < half; i++) {
      cosFull[i] = cosFull[i + half] = table.cos[p * table.half + i];
      sinFull[i] = sinFull[i + half] = table.sin[p * table.half + i];
    }
    for (let h = 0; h < H; h++) {
      const base = (t * H + h) * d;
      if (interleaved) {
        // view(..., d/2, 2).transpose(-1, -2).reshape(..., d)
        for (let j = 0; j < 2; j++) for (let i = 0; i < half; i++) q[j * half + i] = x[base + 2 * i + j];
      } else {
        for (let i = 0; i < d; i++) q[i] = x[base + i];
      }
      // rotate_half: cat(-x2, x1)
      for (let i = 0; i < half; i++) {
        rot[i] = -q[i + half];
        rot[i + half] = q[i];
      }
      for (let i = 0; i < d; i++) out[base + i] = q[i] * cosFull[i] + rot[i] * sinFull[i];
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// SwiGLU gating: silu(g) * u, silu(g) = g * sigmoid(g) = g / (1 + e^-g).

export function silu(g: number): number {
  return g / (1 + math.exp(-g));
}

export function siluMul(gate: ArrayLike<number>, up: ArrayLike<number>): Float64Array {
  const out = new Float64Array(gate.length);
  for (let i = 0; i < gate.length; i++) out[i] = silu(gate[i]) * up[i];
  return out;
}

/** Packed form: each row of `packed` is [gate (inter) ; up (inter)] -> rows x inter. */
export function siluMulPacked(packed: ArrayLike<number>, rows: number, inter: number): Float64Array {
  const out = new Float64Array(rows * inter);
  for (let r = 0; r < rows; r++) {
    for (let i = 0; i < inter; i++) out[r * inter + i] = silu(packed[r * 2 * inter + i]) * packed[r * 2 * inter + inter + i];
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// GEMM: y[m, n] = sum_k x[m, k] * w[n, k] (nn.Linear layout). Also returns
// absDot[m, n] = sum_k |x[m, k] * w[n, k]|, the scale of the rounding-error bound.

export function gemm(
  x: ArrayLike<number>,
  M: number,
  K: number,
  w: ArrayLike<number>,
  N: number,
): { y: Float64Array; absDot: Float64Array } {
  const y = new Float64Array(M * N);
  const absDot = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      let a = 0;
      for (let k = 0; k < K; k++) {
        const p = x[m * K + k] * w[n * K + k]; // exact in double for f32 operands (48-bit product)
        s += p;
        a += math.abs(p);
      }
      y[m * N + n] = s;
      absDot[m * N + n] = a;
    }
  }
  return { y, absDot };
}

// ---------------------------------------------------------------------------------------
// Softmax of scale * x over the last dim, max-subtracted; an all -inf row or a NaN gives a NaN row.

export function softmax(x: ArrayLike<number>, n: number, scale = 1): Float64Array {
  const rows = n === 0 ? 0 : x.length / n;
  const out = new Float64Array(x.length);
  for (let r = 0; r < rows; r++) {
    let mx = -INF;
    let nan = false;
    for (let i = 0; i < n; i++) {
      const v = scale * x[r * n + i];
      if (num.isNaN(v)) nan = true;
      if (v > mx) mx = v;
    }
    if (nan || mx === -INF) {
      for (let i = 0; i < n; i++) out[r * n + i] = NaN;
      continue;
    }
    let sum = 0;
    for (let i = 0; i < n; i++) {
      const e = math.exp(scale * x[r * n + i] - mx);
      out[r * n + i] = e;
      sum += e;
    }
    for (let i = 0; i < n; i++) out[r * n + i] /= sum;
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Sampling, exactly as the dsv2 spec defines it (token-for-token).

const MASK64 = (1n << 64n) - 1n;
export const GOLDEN_GAMMA = 0x9e3779b97f4a7c15n;

/** splitmix64 finaliser (Steele, Lea, Flood 2014), all mod 2^64. */
export function splitmix64(z0: bigint): bigint {
  let z = z0 & MASK64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return z ^ (z >> 31n);
}

/** The uniform in [0, 1) that row r draws with `seed`: 53 high bits of splitmix64(seed + (r+1)·γ). */
export function rowUniform(seed: bigint, r: number): number {
  const z = splitmix64((seed + BigInt(r + 1) * GOLDEN_GAMMA) & MASK64);
  return Number(z >> 11n) * 2 ** -53;
}

export interface SampleOpts {
  temperature?: number;
  topK?: number;
  topP?: number;
  seed?: bigint | number;
}

/** Ids sorted by descending logit, lower id first on ties. */
function byLogitDesc(l: ArrayLike<number>, ids: number[]): number[] {
  return ids.slice().sort((a, b) => (l[a] !== l[b] ? (l[b] > l[a] ? 1 : -1) : a - b));
}

/** The ids of one row that survive temperature / top-k / top-p, ascending, with their weights w. */
export function sampleCandidates(
  l: ArrayLike<number>,
  opts: SampleOpts,
): { kept: number[]; w: Float64Array } {
  const V = l.length;
  const T = opts.temperature ?? 0;
  const topK = opts.topK ?? 0;
  const topP = opts.topP ?? 1;
  let mx = -INF;
  for (let i = 0; i < V; i++) if (l[i] > mx) mx = l[i];
  const w = new Float64Array(V);
  for (let i = 0; i < V; i++) w[i] = math.exp((l[i] - mx) / T);
  let cand = byLogitDesc(l, Array.from({ length: V }, (_, i) => i));
  if (topK > 0 && topK < V) cand = cand.slice(0, topK);
  if (topP < 1) {
    let total = 0;
    for (const i of cand) total += w[i];
    const target = topP * total;
    let cum = 0;
    let n = 0;
    for (const i of cand) {
      cum += w[i];
      n++;
      if (cum >= target) break;
    }
    cand = cand.slice(0, math.max(1, n));
  }
  return { kept: cand.slice().sort((a, b) => a - b), w };
}

/** One row: validation, greedy or the seeded draw. */
export function sampleRow(l: ArrayLike<number>, r: number, opts: SampleOpts): number {
  const V = l.length;
  let allNegInf = true;
  for (let i = 0; i < V; i++) {
    if (num.isNaN(l[i]) || l[i] === INF) throw new RefError('E_RANGE', `logits row ${r} has NaN/+inf at ${i}`);
    if (l[i] !== -INF) allNegInf = false;
  }
  if (allNegInf) throw new RefError('E_RANGE', `logits row ${r} is all -inf`);
  const T = opts.temperature ?? 0;
  if (T === 0) {
    let best = 0;
    for (let i = 1; i < V; i++) if (l[i] > l[best]) best = i;
    return best;
  }
  const { kept, w } = sampleCandidates(l, opts);
  let total = 0;
  for (const i of kept) total += w[i];
  const seed = BigInt(opts.seed ?? 0) & MASK64;
  const target = rowUniform(seed, r) * total;
  let cum = 0;
  for (const i of kept) {
    cum += w[i];
    if (cum > target) return i;
  }
  return kept[kept.length - 1];
}

/** logits [rows, V] flattened -> one id per row. */
export function sample(logits: ArrayLike<number>, rows: number, V: number, opts: SampleOpts): Int32Array {
  const out = new Int32Array(rows);
  for (let r = 0; r < rows; r++) {
    const row = Array.prototype.slice.call(logits, r * V, (r + 1) * V) as number[];
    out[r] = sampleRow(row, r, opts);
  }
  return out;
}

/** Softmax probabilities of one row at temperature T (for the statistical tests). */
export function probabilities(l: ArrayLike<number>, T: number): Float64Array {
  return softmax(Array.from(l, (v) => v / T), l.length, 1);
}

// ---------------------------------------------------------------------------------------
// Cast: exact values in, storage of the target dtype out (f32 values as a Float32Array).

export function cast(values: ArrayLike<number>, to: FloatDType): Float32Array | Uint16Array {
  if (to === 'f32') return Float32Array.from(values);
  const out = new Uint16Array(values.length);
  const enc = to === 'bf16' ? f32ToBf16Bits : f32ToF16Bits;
  for (let i = 0; i < values.length; i++) out[i] = enc(values[i]);
  return out;
}

export { prod };
