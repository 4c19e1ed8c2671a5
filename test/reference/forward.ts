/**
 * Float64 reference of the whole DeepSeek-V2/V3 forward pass, for the end-to-end tests.
 *
 * Written from the DeepSeek-V2 paper (arXiv 2405.04434, §2.1 MLA, §2.2 DeepSeekMoE) and the
 * published modeling_deepseek.py (DeepseekV2RMSNorm, DeepseekV2YarnRotaryEmbedding and
 * apply_rotary_pos_emb with its de-interleave of the rope dims, DeepseekV2Attention with
 * q_lora or plain q_proj, DeepseekV2MLP, MoEGate greedy / group_limited_greedy / noaux_tc,
 * DeepseekV2MoE with shared experts, DeepseekV2DecoderLayer, final norm, lm_head). It reads
 * the checkpoint with its own safetensors parser and shares no code with the library.
 *
 * Attention is HF's: K and V expanded per head from the latent (kv_b_proj), full causal
 * attention over all positions. The one deliberate departure from HF is the KV cache the
 * library keeps: c_kv (after kv_a_layernorm) and k_pe (after RoPE) are stored in the cache
 * dtype and attention reads them back, so with a bf16 / fp8 cache the reference rounds them
 * the same way (bf16: round to nearest even; fp8: e4m3 per 128-element tile of c_kv with
 * scale amax/448, k_pe in bf16).
 *
 * Tolerances. `referenceLogits` runs the same code three ways:
 * 1. in float64 (the expected values);
 * 2. twice as an "f32 shadow": every intermediate rounded to binary32 (Math.fround after each
 *    multiply, add, exp, ...; sequential fp32 accumulation of dot products, forward in one run
 *    and reverse in the other; HF's f32 RoPE table): two concrete f32 implementations of the
 *    same maths. Their distance to the float64 run measures how much this network, at this
 *    input, amplifies fp32 rounding; the allowance is SAFETY × the larger of the two per row.
 *    Discrete choices (cache roundings, expert selection) are forced to the float64 run's, so
 *    the shadows measure rounding noise only;
 * 3. once more in float64 per cache rounding that is ambiguous: an element whose unrounded
 *    value lies within the estimated f32 error of a rounding midpoint may legitimately round
 *    either way in an f32 implementation; the logits' change when it rounds the other way is
 *    added to the allowance.
 * Expert routing choices whose margin is within the estimated error are reported
 * (`nearTies`), never absorbed into the tolerance.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { bf16BitsToF32, f16BitsToF32, f32Bits } from './dtype';

// Globals used in hot loops are aliased at module scope: under jest every global lookup
// (Math.x, Number.x) goes through the vm context's global interceptor, ~40x slower.
const math = Math;
const { fround, exp, sqrt, abs, cos, sin, log, floor, ceil, max, min } = Math;
const INF = Infinity;

/** Unit roundoff of binary32. */
export const U32 = 2 ** -24;

/**
 * Safety factor between the shadows' measured deviation and what another f32 implementation
 * may show. The library accumulates in another order (SIMD lanes, blocking, FMA), uses its own
 * exp / rsqrt / RoPE table, and its absorbed decode groups the MLA products differently, so
 * its error is another draw of the same magnitude. Measured on the tiny checkpoints (3 kinds
 * × 12 prompts of 8–80 tokens × prefill/decode, 2664 rows): |library − f64| / (larger shadow
 * deviation) per row has median 0.45, 99th percentile 1.6, maximum 3.4. 8 keeps a margin of
 * 2.4× over the worst row while staying ~1e-5 absolute on O(1) logits, orders of magnitude
 * below what a wrong formula, a bf16-rounded activation or a misplaced head shows.
 */
export const SAFETY = 8;

// ---------------------------------------------------------------------------------------
// Safetensors (our own parser: 8-byte LE header length, JSON header, data).

export interface RefTensor {
  dtype: string;
  shape: number[];
  /** Exact values (bf16 / f16 / f32 decoded to double). */
  values: Float64Array;
}

function decodeData(dtype: string, bytes: Uint8Array, n: number): Float64Array {
  const out = new Float64Array(n);
  // copy into an aligned buffer so typed-array views work whatever the offset in the file
  const buf = new Uint8Array(bytes.length);
  buf.set(bytes);
  if (dtype === 'F32') {
    const f = new Float32Array(buf.buffer, 0, n);
    for (let i = 0; i < n; i++) out[i] = f[i];
  } else if (dtype === 'BF16') {
    const h = new Uint16Array(buf.buffer, 0, n);
    const u = new Uint32Array(n);
    for (let i = 0; i < n; i++) u[i] = h[i] << 16; // bf16 = the high half of a binary32
    const f = new Float32Array(u.buffer);
    for (let i = 0; i < n; i++) out[i] = f[i];
  } else if (dtype === 'F16') {
    const h = new Uint16Array(buf.buffer, 0, n);
    for (let i = 0; i < n; i++) out[i] = f16BitsToF32(h[i]);
  } else if (dtype === 'F64') {
    const f = new Float64Array(buf.buffer, 0, n);
    out.set(f);
  } else {
    throw new Error(`reference safetensors: dtype ${dtype} not handled`);
  }
  return out;
}

const DTYPE_BYTES: Record<string, number> = { F32: 4, BF16: 2, F16: 2, F64: 8 };

/** Every tensor of one .safetensors file. */
export function readSafetensors(file: string): Map<string, RefTensor> {
  const data = fs.readFileSync(file);
  if (data.length < 8) throw new Error(`${file}: shorter than 8 bytes`);
  const n = Number(data.readBigUInt64LE(0));
  if (8 + n > data.length) throw new Error(`${file}: header length ${n} past the end`);
  const header = JSON.parse(data.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  const base = 8 + n;
  const out = new Map<string, RefTensor>();
  for (const [name, e] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const count = e.shape.reduce((a, b) => a * b, 1);
    const size = DTYPE_BYTES[e.dtype];
    if (size === undefined) throw new Error(`${file}: ${name} has dtype ${e.dtype}`);
    const [b, en] = e.data_offsets;
    if (en - b !== count * size || base + en > data.length) throw new Error(`${file}: ${name} has bad offsets`);
    out.set(name, { dtype: e.dtype, shape: e.shape, values: decodeData(e.dtype, data.subarray(base + b, base + en), count) });
  }
  return out;
}

// ---------------------------------------------------------------------------------------
// Config (the fields modeling_deepseek.py reads, with its defaults).

export interface RefConfig {
  modelType: string;
  V: number;
  H: number;
  L: number;
  nh: number;
  qLora: number | null;
  dC: number;
  dN: number;
  dR: number;
  dV: number;
  eps: number;
  interm: number;
  moeInterm: number;
  nRouted: number | null;
  nShared: number;
  topK: number;
  topkMethod: string;
  scoring: string;
  nGroup: number;
  topkGroup: number;
  normTopk: boolean;
  scaling: number;
  firstDense: number;
  moeFreq: number;
  tie: boolean;
  theta: number;
  ropeScaling: Record<string, unknown> | null;
}

export function refConfig(raw: Record<string, unknown>): RefConfig {
  const n = (k: string, d?: number): number => {
    const v = raw[k];
    if (typeof v === 'number') return v;
    if (d !== undefined) return d;
    throw new Error(`config.json: ${k} missing`);
  };
  const nullable = (k: string): number | null => (typeof raw[k] === 'number' ? (raw[k] as number) : null);
  return {
    modelType: String(raw.model_type ?? 'deepseek_v2'),
    V: n('vocab_size'),
    H: n('hidden_size'),
    L: n('num_hidden_layers'),
    nh: n('num_attention_heads'),
    qLora: nullable('q_lora_rank'),
    dC: n('kv_lora_rank'),
    dN: n('qk_nope_head_dim'),
    dR: n('qk_rope_head_dim'),
    dV: n('v_head_dim'),
    eps: n('rms_norm_eps', 1e-6),
    interm: n('intermediate_size'),
    moeInterm: n('moe_intermediate_size', 0),
    nRouted: nullable('n_routed_experts'),
    nShared: nullable('n_shared_experts') ?? 0,
    topK: n('num_experts_per_tok', 0),
    topkMethod: String(raw.topk_method ?? 'greedy'),
    scoring: String(raw.scoring_func ?? 'softmax'),
    nGroup: n('n_group', 1),
    topkGroup: n('topk_group', 1),
    normTopk: Boolean(raw.norm_topk_prob ?? false),
    scaling: n('routed_scaling_factor', 1),
    firstDense: n('first_k_dense_replace', 0),
    moeFreq: n('moe_layer_freq', 1),
    tie: Boolean(raw.tie_word_embeddings ?? false),
    theta: n('rope_theta', 10000),
    ropeScaling: (raw.rope_scaling as Record<string, unknown> | null | undefined) ?? null,
  };
}

/** DeepseekV2DecoderLayer: MoE when routed experts exist, past the first dense layers, every moe_layer_freq-th. */
export function isMoeLayer(c: RefConfig, l: number): boolean {
  return c.nRouted !== null && l >= c.firstDense && l % c.moeFreq === 0;
}

export interface RefModel {
  dir: string;
  cfg: RefConfig;
  tensors: Map<string, RefTensor>;
  w(name: string): Float64Array;
}

/** Reads config.json and every safetensors file (single file or an index's shards). */
export function loadReference(dir: string): RefModel {
  const raw = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
  const cfg = refConfig(raw);
  const index = path.join(dir, 'model.safetensors.index.json');
  const files = fs.existsSync(index)
    ? [...new Set(Object.values((JSON.parse(fs.readFileSync(index, 'utf8')) as { weight_map: Record<string, string> }).weight_map))]
    : ['model.safetensors'];
  const tensors = new Map<string, RefTensor>();
  for (const f of files) for (const [k, v] of readSafetensors(path.join(dir, f))) tensors.set(k, v);
  return {
    dir,
    cfg,
    tensors,
    w(name: string): Float64Array {
      const t = tensors.get(name);
      if (!t) throw new Error(`reference: tensor ${name} missing in ${dir}`);
      return t.values;
    },
  };
}

// ---------------------------------------------------------------------------------------
// Rounding grids of the cache: bf16 and e4m3.

/** Round to nearest even of a non-negative double to an integer. */
function rne(v: number): number {
  const f = floor(v);
  const d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/** f32 → bf16 value, round to nearest even (finite inputs). */
function bf16Of(x: number): number {
  const b = f32Bits(x);
  const lower = b & 0xffff;
  let upper = b >>> 16;
  if (lower > 0x8000 || (lower === 0x8000 && (upper & 1) === 1)) upper += 1;
  return bf16BitsToF32(upper & 0xffff);
}

/** The bf16 values just below and above the bf16 value v. */
function bf16Neighbours(v: number): [number, number] {
  const step = (val: number, up: boolean): number => {
    if (val === 0) return up ? bf16BitsToF32(1) : bf16BitsToF32(0x8001);
    const b = f32Bits(val) >>> 16;
    const away = (val > 0) === up; // moving away from zero increments the magnitude bits
    return bf16BitsToF32(away ? b + 1 : b - 1);
  };
  return [step(v, false), step(v, true)];
}

/** The non-negative e4m3 (OCP "FN": bias 7, 3 mantissa bits, max 448, no inf) values, ascending. */
const E4M3: number[] = (() => {
  const out: number[] = [];
  for (let m = 0; m < 8; m++) out.push(m * 2 ** -9); // subnormals (and 0)
  for (let e = 1; e <= 15; e++) {
    for (let m = 0; m < 8; m++) {
      if (e === 15 && m === 7) continue; // NaN
      out.push((1 + m / 8) * 2 ** (e - 7));
    }
  }
  return out;
})();
const E4M3_MAX = 448;

/** y → nearest e4m3 value, ties to even mantissa, saturating at ±448. */
export function e4m3Of(y: number): number {
  const a = abs(y);
  let q: number;
  if (a >= E4M3_MAX) q = E4M3_MAX;
  else if (a < 2 ** -6) q = rne(a * 2 ** 9) * 2 ** -9;
  else {
    const e = floor(log(a) / math.LN2);
    // guard the log's rounding at exact powers of two
    const ee = 2 ** e > a ? e - 1 : 2 ** (e + 1) <= a ? e + 1 : e;
    const stepv = 2 ** (ee - 3);
    q = min(rne(a / stepv) * stepv, E4M3_MAX);
  }
  return y < 0 ? -q : q;
}

function e4m3Neighbours(v: number): [number, number] {
  const a = abs(v);
  let i = 0;
  while (E4M3[i] !== a) i++;
  const lo = i > 0 ? E4M3[i - 1] : -E4M3[1];
  const hi = i + 1 < E4M3.length ? E4M3[i + 1] : INF;
  return v < 0 || (v === 0 && 1 / v < 0) ? [-hi, -lo] : [lo, hi];
}

// ---------------------------------------------------------------------------------------
// The forward pass.

export type CacheKind = 'f32' | 'bf16' | 'fp8';
/** f64: the expected values; f32 / f32r: shadows rounding every step to binary32, accumulating
 * dot products and sums in forward / reverse order (two realisations of the f32 error). */
export type Precision = 'f64' | 'f32' | 'f32r';

/**
 * One MoE routing decision. The comparisons that decided it are recorded by the experts they
 * compared, so their margins can be weighed against the estimated f32 error afterwards.
 */
export interface RouteRecord {
  layer: number;
  token: number;
  experts: number[];
  /** router logits (gate.weight · x) and scores (softmax / sigmoid) */
  logits: Float64Array;
  scores: Float64Array;
  /** the last selected expert and the best one left out (−1: none could be chosen instead) */
  kth: number;
  next: number;
  /** the members whose choice values make the last selected / first unselected group's score (null: no groups) */
  groupKth: number[] | null;
  groupNext: number[] | null;
}

/** Per layer: the unrounded latent [T, dC + dR] and the grid values the cache rounding chose. */
export interface LatentRecord {
  pre: Float64Array;
  /** bf16 value, or the e4m3 value of x / scale (c_kv with fp8), per element; empty for an f32 cache */
  grid: Float64Array;
  /** fp8: scale per token (one 128-tile when dC <= 128; per tile otherwise, [T, tiles]) */
  scale: Float64Array;
}

export interface Trace {
  latents: LatentRecord[];
  routes: RouteRecord[];
  /** final logits [T, V] */
  logits: Float64Array;
}

export interface Flip {
  layer: number;
  token: number;
  /** index in [0, dC + dR): c_kv then k_pe */
  index: number;
  /** the other grid value it may round to */
  alt: number;
}

interface RunOpts {
  cache: CacheKind;
  precision: Precision;
  /** f32 shadow: take cache grid values and expert choices from this (float64) trace */
  force?: Trace;
  flip?: Flip;
}

const TILE = 128;

/** Accumulation order of the f32 shadow (set per run): false forward, true reverse. */
let REV = false;

/** y[t, n] = Σ_k x[t, k] · W[n, k] (torch Linear, W [N, K] row-major), sequential accumulation. */
function linear(x: Float64Array, T: number, K: number, W: Float64Array, N: number, f32: boolean): Float64Array {
  const y = new Float64Array(T * N);
  if (W.length !== N * K) throw new Error(`reference linear: weight has ${W.length} values, expected ${N}×${K}`);
  for (let t = 0; t < T; t++) {
    const xo = t * K;
    for (let n = 0; n < N; n++) {
      const wo = n * K;
      let acc = 0;
      if (f32 && REV) for (let k = K - 1; k >= 0; k--) acc = fround(acc + fround(x[xo + k] * W[wo + k]));
      else if (f32) for (let k = 0; k < K; k++) acc = fround(acc + fround(x[xo + k] * W[wo + k]));
      else for (let k = 0; k < K; k++) acc += x[xo + k] * W[wo + k];
      y[t * N + n] = acc;
    }
  }
  return y;
}

/** DeepseekV2RMSNorm over rows of length n: w · (x · rsqrt(mean(x²) + eps)), in f32 for the shadow. */
function rmsnorm(x: Float64Array, T: number, n: number, w: Float64Array, eps: number, f32: boolean): Float64Array {
  const y = new Float64Array(T * n);
  for (let t = 0; t < T; t++) {
    const o = t * n;
    let ss = 0;
    if (f32) {
      if (REV) for (let i = n - 1; i >= 0; i--) ss = fround(ss + fround(x[o + i] * x[o + i]));
      else for (let i = 0; i < n; i++) ss = fround(ss + fround(x[o + i] * x[o + i]));
      const r = fround(1 / fround(sqrt(fround(fround(ss / n) + eps))));
      for (let i = 0; i < n; i++) y[o + i] = fround(w[i] * fround(x[o + i] * r));
    } else {
      for (let i = 0; i < n; i++) ss += x[o + i] * x[o + i];
      const r = 1 / sqrt(ss / n + eps);
      for (let i = 0; i < n; i++) y[o + i] = w[i] * (x[o + i] * r);
    }
  }
  return y;
}

function yarnMscale(scale: number, m: number): number {
  return scale <= 1 ? 1 : 0.1 * m * log(scale) + 1;
}

/** Per-position cos/sin tables [P, dR/2] (DeepseekV2YarnRotaryEmbedding, or plain RoPE). */
export function ropeTables(c: RefConfig, P: number, f32: boolean): { cosT: Float64Array; sinT: Float64Array } {
  const d = c.dR;
  const half = d / 2;
  const r = f32 ? fround : (v: number) => v;
  const inv = new Float64Array(half);
  let mag = 1;
  const rs = c.ropeScaling;
  if (rs && (rs.type === 'yarn' || rs.type === 'deepseek_yarn')) {
    const factor = Number(rs.factor);
    const orig = Number(rs.original_max_position_embeddings ?? 4096);
    const betaFast = Number(rs.beta_fast ?? 32);
    const betaSlow = Number(rs.beta_slow ?? 1);
    const ms = Number(rs.mscale ?? 1);
    const msAll = Number(rs.mscale_all_dim ?? 0);
    // yarn_find_correction_dim: the dim index whose wavelength makes `rot` turns over `orig` tokens
    const corr = (rot: number) => (d * log(orig / (rot * 2 * math.PI))) / (2 * log(c.theta));
    const low = max(floor(corr(betaFast)), 0);
    let high = min(ceil(corr(betaSlow)), d - 1);
    if (low === high) high += 0.001;
    for (let i = 0; i < half; i++) {
      const p = r(c.theta ** r((2 * i) / d));
      const extra = r(1 / p);
      const inter = r(1 / r(factor * p));
      const ramp = min(max((i - low) / (high - low), 0), 1);
      const mask = r(1 - r(ramp)); // inv_freq_mask: 1 keeps the extrapolated (original) frequency
      inv[i] = r(r(inter * r(1 - mask)) + r(extra * mask));
    }
    mag = yarnMscale(factor, ms) / yarnMscale(factor, msAll);
  } else if (rs) {
    throw new Error(`reference: rope_scaling ${JSON.stringify(rs)} not handled`);
  } else {
    for (let i = 0; i < half; i++) inv[i] = r(1 / r(c.theta ** r((2 * i) / d)));
  }
  const cosT = new Float64Array(P * half);
  const sinT = new Float64Array(P * half);
  for (let p = 0; p < P; p++) {
    for (let i = 0; i < half; i++) {
      const a = r(p * inv[i]);
      cosT[p * half + i] = r(r(cos(a)) * mag);
      sinT[p * half + i] = r(r(sin(a)) * mag);
    }
  }
  return { cosT, sinT };
}

/** Attention softmax scale: q_head_dim^-0.5, times yarn mscale(mscale_all_dim)² when set. */
export function softmaxScale(c: RefConfig): number {
  let s = (c.dN + c.dR) ** -0.5;
  const rs = c.ropeScaling;
  const msAll = rs ? Number(rs.mscale_all_dim ?? 0) : 0;
  if (rs && msAll) {
    const m = yarnMscale(Number(rs.factor), msAll);
    s *= m * m;
  }
  return s;
}

/**
 * apply_rotary_pos_emb on one vector of dR at position p, in place into out[o..]: the
 * interleaved pairs (x[2i], x[2i+1]) are first de-interleaved into halves (a, b), then
 * rotated: out[i] = a·cos − b·sin, out[i + dR/2] = b·cos + a·sin.
 */
function rope(x: Float64Array, xo: number, out: Float64Array, o: number, d: number, p: number,
  cosT: Float64Array, sinT: Float64Array, f32: boolean): void {
  const half = d / 2;
  for (let i = 0; i < half; i++) {
    const a = x[xo + 2 * i];
    const b = x[xo + 2 * i + 1];
    const cs = cosT[p * half + i];
    const sn = sinT[p * half + i];
    if (f32) {
      out[o + i] = fround(fround(a * cs) - fround(b * sn));
      out[o + half + i] = fround(fround(b * cs) + fround(a * sn));
    } else {
      out[o + i] = a * cs - b * sn;
      out[o + half + i] = b * cs + a * sn;
    }
  }
}

/** DeepseekV2MLP on rows: down(silu(gate(x)) · up(x)). */
function mlp(x: Float64Array, T: number, H: number, gate: Float64Array, up: Float64Array, down: Float64Array, I: number, f32: boolean): Float64Array {
  const g = linear(x, T, H, gate, I, f32);
  const u = linear(x, T, H, up, I, f32);
  const h = new Float64Array(T * I);
  for (let i = 0; i < T * I; i++) {
    const v = g[i];
    if (f32) h[i] = fround(fround(v * fround(1 / fround(1 + fround(exp(-v))))) * u[i]);
    else h[i] = (v / (1 + exp(-v))) * u[i];
  }
  return linear(h, T, I, down, H, f32);
}

/** Indices sorted by value descending, ties by lower index (a deterministic top-k). */
function argsortDesc(v: ArrayLike<number>, idx: number[]): number[] {
  return idx.sort((a, b) => (v[b] - v[a]) || (a - b));
}

/** The value routing compares: the score, plus the correction bias for noaux_tc. */
function choiceValues(c: RefConfig, scores: Float64Array, bias: Float64Array | null, f32: boolean): Float64Array {
  if (c.topkMethod !== 'noaux_tc') return scores;
  const out = new Float64Array(scores.length);
  for (let e = 0; e < scores.length; e++) out[e] = f32 ? fround(scores[e] + (bias as Float64Array)[e]) : scores[e] + (bias as Float64Array)[e];
  return out;
}

/** MoEGate.forward for one token: the selected experts, their weights, and what decided them. */
function route(c: RefConfig, logits: Float64Array, bias: Float64Array | null, f32: boolean, forced: number[] | null):
  { experts: number[]; weights: number[]; scores: Float64Array; kth: number; next: number; groupKth: number[] | null; groupNext: number[] | null } {
  const E = c.nRouted as number;
  const r = f32 ? fround : (v: number) => v;
  const scores = new Float64Array(E);
  if (c.scoring === 'softmax') {
    let m = -INF;
    for (let e = 0; e < E; e++) m = max(m, logits[e]);
    let s = 0;
    for (let e = 0; e < E; e++) {
      scores[e] = r(exp(r(logits[e] - m)));
      s = r(s + scores[e]);
    }
    for (let e = 0; e < E; e++) scores[e] = r(scores[e] / s);
  } else if (c.scoring === 'sigmoid') {
    for (let e = 0; e < E; e++) scores[e] = r(1 / r(1 + r(exp(-logits[e]))));
  } else {
    throw new Error(`reference: scoring_func ${c.scoring}`);
  }
  const K = c.topK;
  const all = Array.from({ length: E }, (_, i) => i);
  let experts: number[];
  let kth: number;
  let next: number;
  let groupKth: number[] | null = null;
  let groupNext: number[] | null = null;
  if (c.topkMethod === 'greedy') {
    const o = argsortDesc(scores, all);
    experts = o.slice(0, K);
    kth = o[K - 1];
    next = o[K];
  } else if (c.topkMethod === 'group_limited_greedy' || c.topkMethod === 'noaux_tc') {
    const noaux = c.topkMethod === 'noaux_tc';
    // noaux_tc chooses with the bias-corrected scores; the weights stay the unbiased scores
    const choice = choiceValues(c, scores, bias, f32);
    const G = c.nGroup;
    const per = E / G;
    const gs = new Float64Array(G);
    const members: number[][] = [];
    for (let g = 0; g < G; g++) {
      const o = argsortDesc(choice, Array.from({ length: per }, (_, i) => g * per + i));
      // group_limited_greedy: the group's best expert; noaux_tc: the sum of its top two
      members.push(noaux ? [o[0], o[1]] : [o[0]]);
      gs[g] = noaux ? r(choice[o[0]] + choice[o[1]]) : choice[o[0]];
    }
    const go = argsortDesc(gs, Array.from({ length: G }, (_, i) => i));
    const chosen = go.slice(0, c.topkGroup);
    if (c.topkGroup < G) {
      groupKth = members[go[c.topkGroup - 1]];
      groupNext = members[go[c.topkGroup]];
    }
    const cand: number[] = [];
    for (const g of chosen) for (let i = 0; i < per; i++) cand.push(g * per + i);
    const o = argsortDesc(choice, cand);
    experts = o.slice(0, K);
    kth = o[K - 1];
    // experts outside the chosen groups are masked (0 / −inf) and cannot compete
    next = o.length > K ? o[K] : -1;
  } else {
    throw new Error(`reference: topk_method ${c.topkMethod}`);
  }
  if (forced) experts = forced;
  let weights = experts.map((e) => scores[e]);
  if (K > 1 && c.normTopk) {
    let s = 0;
    for (const w of weights) s = r(s + w);
    const den = r(s + 1e-20);
    // the V3 modeling code scales after normalizing; V2's leaves normalized weights unscaled
    const f = c.modelType === 'deepseek_v3' ? c.scaling : 1;
    weights = weights.map((w) => r(r(w / den) * f));
  } else {
    weights = weights.map((w) => r(w * c.scaling));
  }
  return { experts, weights, scores, kth, next, groupKth, groupNext };
}

/** Rounds one token's latent row [dC + dR] as the cache stores it; records into rec. */
function cacheRound(c: RefConfig, kind: CacheKind, row: Float64Array, t: number, rec: LatentRecord, forced: LatentRecord | null,
  flip: Flip | null, f32: boolean): void {
  const D = c.dC + c.dR;
  rec.pre.set(row, t * D);
  if (kind === 'f32') return; // stored as computed (f32 values in an f32 implementation)
  const r = f32 ? fround : (v: number) => v;
  const pick = (i: number, g: number) => {
    let v = forced ? forced.grid[t * D + i] : g;
    if (flip && flip.token === t && flip.index === i) v = flip.alt;
    rec.grid[t * D + i] = v;
    return v;
  };
  // k_pe: bf16 in both the bf16 and the fp8 layouts
  for (let i = c.dC; i < D; i++) row[i] = pick(i, bf16Of(row[i]));
  if (kind === 'bf16') {
    for (let i = 0; i < c.dC; i++) row[i] = pick(i, bf16Of(row[i]));
    return;
  }
  const tiles = ceil(c.dC / TILE);
  for (let k = 0; k < tiles; k++) {
    const lo = k * TILE;
    const hi = min(c.dC, lo + TILE);
    let amax = 0;
    for (let i = lo; i < hi; i++) amax = max(amax, abs(row[i]));
    const scale = amax === 0 ? 1 : r(amax / E4M3_MAX);
    rec.scale[t * tiles + k] = scale;
    for (let i = lo; i < hi; i++) {
      const code = pick(i, e4m3Of(r(row[i] / scale)));
      row[i] = r(code * scale);
    }
  }
}

/** One run of the forward pass; returns its trace (logits, latents, routing). */
function run(m: RefModel, tokens: readonly number[], o: RunOpts): Trace {
  const c = m.cfg;
  const f32 = o.precision !== 'f64';
  REV = o.precision === 'f32r';
  const T = tokens.length;
  const { H, nh, dC, dN, dR, dV } = c;
  const D = dC + dR;
  const qhd = dN + dR;
  const scale = softmaxScale(c);
  const sc = f32 ? fround(scale) : scale;
  const { cosT, sinT } = ropeTables(c, T, f32);
  const embed = m.w('model.embed_tokens.weight');
  let x = new Float64Array(T * H);
  for (let t = 0; t < T; t++) {
    const id = tokens[t];
    if (!(Number.isInteger(id) && id >= 0 && id < c.V)) throw new Error(`reference: token ${id} outside [0, ${c.V})`);
    x.set(embed.subarray(id * H, (id + 1) * H), t * H);
  }
  const trace: Trace = { latents: [], routes: [], logits: new Float64Array(0) };
  const tiles = ceil(dC / TILE);
  for (let l = 0; l < c.L; l++) {
    const p = `model.layers.${l}`;
    const a = `${p}.self_attn`;
    // ---- attention (DeepseekV2Attention)
    const xn = rmsnorm(x, T, H, m.w(`${p}.input_layernorm.weight`), c.eps, f32);
    let q: Float64Array;
    if (c.qLora === null) {
      q = linear(xn, T, H, m.w(`${a}.q_proj.weight`), nh * qhd, f32);
    } else {
      const qa = linear(xn, T, H, m.w(`${a}.q_a_proj.weight`), c.qLora, f32);
      const qn = rmsnorm(qa, T, c.qLora, m.w(`${a}.q_a_layernorm.weight`), c.eps, f32);
      q = linear(qn, T, c.qLora, m.w(`${a}.q_b_proj.weight`), nh * qhd, f32);
    }
    // q_pe rotated in place: q[t, h, dN..] ← rope(q[t, h, dN..])
    const tmp = new Float64Array(dR);
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < nh; h++) {
        const off = (t * nh + h) * qhd + dN;
        rope(q, off, tmp, 0, dR, t, cosT, sinT, f32);
        q.set(tmp, off);
      }
    }
    const kva = linear(xn, T, H, m.w(`${a}.kv_a_proj_with_mqa.weight`), D, f32);
    const ckvRaw = new Float64Array(T * dC);
    for (let t = 0; t < T; t++) ckvRaw.set(kva.subarray(t * D, t * D + dC), t * dC);
    const ckv = rmsnorm(ckvRaw, T, dC, m.w(`${a}.kv_a_layernorm.weight`), c.eps, f32);
    // the latent as the cache holds it: [c_kv ; rope(k_pe)], rounded to the cache dtype
    const rec: LatentRecord = { pre: new Float64Array(T * D), grid: new Float64Array(o.cache === 'f32' ? 0 : T * D), scale: new Float64Array(T * tiles) };
    const lat = new Float64Array(T * D);
    const row = new Float64Array(D);
    for (let t = 0; t < T; t++) {
      row.set(ckv.subarray(t * dC, (t + 1) * dC), 0);
      rope(kva, t * D + dC, row, dC, dR, t, cosT, sinT, f32);
      cacheRound(c, o.cache, row, t, rec, o.force ? o.force.latents[l] : null, o.flip && o.flip.layer === l ? o.flip : null, f32);
      lat.set(row, t * D);
    }
    trace.latents.push(rec);
    const cC = new Float64Array(T * dC);
    for (let t = 0; t < T; t++) cC.set(lat.subarray(t * D, t * D + dC), t * dC);
    const kv = linear(cC, T, dC, m.w(`${a}.kv_b_proj.weight`), nh * (dN + dV), f32); // [T, h, dN + dV]
    const attn = new Float64Array(T * nh * dV);
    const sco = new Float64Array(T);
    for (let h = 0; h < nh; h++) {
      for (let t = 0; t < T; t++) {
        const qo = (t * nh + h) * qhd;
        let mx = -INF;
        for (let s = 0; s <= t; s++) {
          const ko = (s * nh + h) * (dN + dV);
          const po = s * D + dC;
          let acc = 0;
          if (f32 && REV) {
            for (let i = dR - 1; i >= 0; i--) acc = fround(acc + fround(q[qo + dN + i] * lat[po + i]));
            for (let i = dN - 1; i >= 0; i--) acc = fround(acc + fround(q[qo + i] * kv[ko + i]));
            acc = fround(acc * sc);
          } else if (f32) {
            for (let i = 0; i < dN; i++) acc = fround(acc + fround(q[qo + i] * kv[ko + i]));
            for (let i = 0; i < dR; i++) acc = fround(acc + fround(q[qo + dN + i] * lat[po + i]));
            acc = fround(acc * sc);
          } else {
            for (let i = 0; i < dN; i++) acc += q[qo + i] * kv[ko + i];
            for (let i = 0; i < dR; i++) acc += q[qo + dN + i] * lat[po + i];
            acc *= sc;
          }
          sco[s] = acc;
          mx = max(mx, acc);
        }
        let sum = 0;
        for (let s = 0; s <= t; s++) {
          sco[s] = f32 ? fround(exp(fround(sco[s] - mx))) : exp(sco[s] - mx);
          sum = f32 ? fround(sum + sco[s]) : sum + sco[s];
        }
        const oo = (t * nh + h) * dV;
        for (let j = 0; j <= t; j++) {
          const s = REV ? t - j : j;
          const pr = f32 ? fround(sco[s] / sum) : sco[s] / sum;
          const vo = (s * nh + h) * (dN + dV) + dN;
          if (f32) for (let i = 0; i < dV; i++) attn[oo + i] = fround(attn[oo + i] + fround(pr * kv[vo + i]));
          else for (let i = 0; i < dV; i++) attn[oo + i] += pr * kv[vo + i];
        }
      }
    }
    const ao = linear(attn, T, nh * dV, m.w(`${a}.o_proj.weight`), H, f32);
    for (let i = 0; i < T * H; i++) x[i] = f32 ? fround(x[i] + ao[i]) : x[i] + ao[i];
    // ---- MLP / MoE
    const xn2 = rmsnorm(x, T, H, m.w(`${p}.post_attention_layernorm.weight`), c.eps, f32);
    let y: Float64Array;
    if (isMoeLayer(c, l)) {
      const E = c.nRouted as number;
      const I = c.moeInterm;
      const gl = linear(xn2, T, H, m.w(`${p}.mlp.gate.weight`), E, f32);
      const bias = c.topkMethod === 'noaux_tc' ? m.w(`${p}.mlp.gate.e_score_correction_bias`) : null;
      y = new Float64Array(T * H);
      for (let t = 0; t < T; t++) {
        const forced = o.force ? o.force.routes.find((rr) => rr.layer === l && rr.token === t)!.experts : null;
        const rt = route(c, gl.subarray(t * E, (t + 1) * E), bias, f32, forced);
        trace.routes.push({ layer: l, token: t, experts: rt.experts, logits: Float64Array.from(gl.subarray(t * E, (t + 1) * E)),
          scores: rt.scores, kth: rt.kth, next: rt.next, groupKth: rt.groupKth, groupNext: rt.groupNext });
        const xt = xn2.subarray(t * H, (t + 1) * H);
        for (let k = 0; k < rt.experts.length; k++) {
          const e = rt.experts[k];
          const pe = `${p}.mlp.experts.${e}`;
          const ye = mlp(xt, 1, H, m.w(`${pe}.gate_proj.weight`), m.w(`${pe}.up_proj.weight`), m.w(`${pe}.down_proj.weight`), I, f32);
          const wk = rt.weights[k];
          for (let i = 0; i < H; i++) y[t * H + i] = f32 ? fround(y[t * H + i] + fround(wk * ye[i])) : y[t * H + i] + wk * ye[i];
        }
      }
      if (c.nShared > 0) {
        const ps = `${p}.mlp.shared_experts`;
        const ys = mlp(xn2, T, H, m.w(`${ps}.gate_proj.weight`), m.w(`${ps}.up_proj.weight`), m.w(`${ps}.down_proj.weight`), I * c.nShared, f32);
        for (let i = 0; i < T * H; i++) y[i] = f32 ? fround(y[i] + ys[i]) : y[i] + ys[i];
      }
    } else {
      y = mlp(xn2, T, H, m.w(`${p}.mlp.gate_proj.weight`), m.w(`${p}.mlp.up_proj.weight`), m.w(`${p}.mlp.down_proj.weight`), c.interm, f32);
    }
    const nx = new Float64Array(T * H);
    for (let i = 0; i < T * H; i++) nx[i] = f32 ? fround(x[i] + y[i]) : x[i] + y[i];
    x = nx;
  }
  const xf = rmsnorm(x, T, H, m.w('model.norm.weight'), c.eps, f32);
  trace.logits = linear(xf, T, H, c.tie ? embed : m.w('lm_head.weight'), c.V, f32);
  return trace;
}

/** The float64 forward alone: logits [T, V] (and its trace). */
export function forwardF64(m: RefModel, tokens: readonly number[], cache: CacheKind = 'f32'): Trace {
  return run(m, tokens, { cache, precision: 'f64' });
}

// ---------------------------------------------------------------------------------------
// Logits with their allowance.

export interface Ambiguity extends Flip {
  part: 'c_kv' | 'k_pe';
  /** the unrounded value (x / scale for fp8 c_kv) and the midpoint it is near */
  value: number;
  midpoint: number;
  est: number;
}

export interface NearTie {
  layer: number;
  token: number;
  what: 'expert' | 'group';
  margin: number;
  est: number;
}

export interface RefLogits {
  T: number;
  V: number;
  /** float64 logits [T, V] */
  logits: Float64Array;
  /** the allowance per element for an f32 implementation: see the file comment */
  tol: Float64Array;
  /** per row: max |shadow − f64| of the logits */
  shadowDev: Float64Array;
  /** cache roundings that may go either way (each added to tol) */
  ambiguous: Ambiguity[];
  /** routing decisions within the estimated error (NOT added to tol: the caller reports them) */
  nearTies: NearTie[];
  /** the smallest routing margin / estimated error over all decisions (Infinity: no MoE) */
  minRoutingRatio: number;
  trace: Trace;
}

function rowMaxDev(a: Float64Array, b: Float64Array, o: number, n: number): number {
  let d = 0;
  for (let i = 0; i < n; i++) d = max(d, abs(a[o + i] - b[o + i]));
  return d;
}

/** Most ambiguous roundings one call handles (each costs one more float64 forward). */
const MAX_FLIPS = 48;

export function referenceLogits(m: RefModel, tokens: readonly number[], opts: { cache?: CacheKind } = {}): RefLogits {
  const cache = opts.cache ?? 'f32';
  const c = m.cfg;
  const T = tokens.length;
  const V = c.V;
  const D = c.dC + c.dR;
  const ref = run(m, tokens, { cache, precision: 'f64' });
  const shadows = [run(m, tokens, { cache, precision: 'f32', force: ref }), run(m, tokens, { cache, precision: 'f32r', force: ref })];
  /** the larger deviation of the two shadows over a row */
  const dev = (pick: (tr: Trace) => Float64Array, a: Float64Array, o: number, n: number): number => {
    let d = 0;
    for (const sh of shadows) d = max(d, rowMaxDev(a, pick(sh), o, n));
    return d;
  };

  // ---- ambiguous cache roundings
  const ambiguous: Ambiguity[] = [];
  if (cache !== 'f32') {
    const tiles = ceil(c.dC / TILE);
    for (let l = 0; l < c.L; l++) {
      const r64 = ref.latents[l];
      for (let t = 0; t < T; t++) {
        for (const part of ['c_kv', 'k_pe'] as const) {
          const lo = part === 'c_kv' ? 0 : c.dC;
          const hi = part === 'c_kv' ? c.dC : D;
          const dv = dev((tr) => tr.latents[l].pre, r64.pre, t * D + lo, hi - lo);
          let amax = 0;
          for (let i = lo; i < hi; i++) amax = max(amax, abs(r64.pre[t * D + i]));
          for (let i = lo; i < hi; i++) {
            const x = r64.pre[t * D + i];
            const g = r64.grid[t * D + i];
            // the library's unrounded value is within est of x: S × the shadow's deviation
            // over the row, and never less than 2 ulp of f32 at x
            let est = SAFETY * dv + 2 * U32 * abs(x);
            let v = x;
            let neighbours: [number, number];
            if (cache === 'fp8' && part === 'c_kv') {
              const s = r64.scale[t * tiles + floor(i / TILE)];
              v = x / s;
              // the scale carries amax's error too (relative est(amax) / amax)
              const estAmax = SAFETY * dv + 2 * U32 * amax;
              est = est / s + (amax > 0 ? (abs(v) * estAmax) / amax : 0) + 2 * U32 * abs(v);
              neighbours = e4m3Neighbours(g);
            } else {
              neighbours = bf16Neighbours(g);
            }
            for (const nb of neighbours) {
              if (!Number.isFinite(nb)) continue;
              const mid = (g + nb) / 2;
              if (abs(v - mid) <= est) ambiguous.push({ layer: l, token: t, index: i, alt: nb, part, value: v, midpoint: mid, est });
            }
          }
        }
      }
    }
  }
  if (ambiguous.length > MAX_FLIPS) {
    throw new Error(`reference: ${ambiguous.length} ambiguous cache roundings (> ${MAX_FLIPS}); pick another input`);
  }

  // ---- routing margins vs their estimated error
  // Every comparison is weighed in the space where the error estimate is uniform. Softmax is
  // monotonic in the router logits, so its comparisons are logit gaps, each logit carrying
  // est_l = S × the row's shadow deviation (+ 4 ulp), and the f32 softmax adds ~4u relative
  // (= 4u in logit units). Sigmoid (+ bias) values carry σ'(l)·est_l plus 4 ulp.
  const nearTies: NearTie[] = [];
  let minRoutingRatio = INF;
  for (let k = 0; k < ref.routes.length; k++) {
    const a = ref.routes[k];
    let lmax = 0;
    for (let e = 0; e < a.logits.length; e++) lmax = max(lmax, abs(a.logits[e]));
    const estL = SAFETY * dev((tr) => tr.routes[k].logits, a.logits, 0, a.logits.length) + 4 * U32 * lmax;
    const bias = c.topkMethod === 'noaux_tc' ? m.w(`model.layers.${a.layer}.mlp.gate.e_score_correction_bias`) : null;
    const softmax = c.scoring === 'softmax';
    const val = softmax ? a.logits : choiceValues(c, a.scores, bias, false);
    const err = (e: number): number => {
      if (softmax) return estL + 4 * U32;
      const s = a.scores[e];
      return s * (1 - s) * estL + 4 * U32 * abs(val[e]);
    };
    const check = (what: 'expert' | 'group', hi: number[], lo: number[]) => {
      let margin = 0;
      let e = 0;
      for (const i of hi) {
        margin += val[i];
        e += err(i);
      }
      for (const i of lo) {
        margin -= val[i];
        e += err(i);
      }
      const ratio = margin / e;
      minRoutingRatio = min(minRoutingRatio, ratio);
      if (ratio <= 1) nearTies.push({ layer: a.layer, token: a.token, what, margin, est: e });
    };
    if (a.next >= 0) check('expert', [a.kth], [a.next]);
    if (a.groupKth && a.groupNext) {
      // group_limited_greedy compares group maxima in score order = logit order (softmax)
      check('group', a.groupKth, a.groupNext);
    }
  }

  // ---- the allowance
  const tol = new Float64Array(T * V);
  const shadowDev = new Float64Array(T);
  for (let t = 0; t < T; t++) {
    const d = dev((tr) => tr.logits, ref.logits, t * V, V);
    shadowDev[t] = d;
    let lmax = 0;
    for (let v = 0; v < V; v++) lmax = max(lmax, abs(ref.logits[t * V + v]));
    // S × the shadow's deviation over the row, at least 4 ulp of the row's largest logit
    const base = SAFETY * d + 4 * U32 * lmax;
    for (let v = 0; v < V; v++) tol[t * V + v] = base;
  }
  for (const f of ambiguous) {
    const alt = run(m, tokens, { cache, precision: 'f64', flip: f });
    for (let i = 0; i < T * V; i++) tol[i] += abs(alt.logits[i] - ref.logits[i]);
  }
  return { T, V, logits: ref.logits, tol, shadowDev, ambiguous, nearTies, minRoutingRatio, trace: ref };
}

/** Index of the largest value (lowest index on ties) and the gap to the runner-up. */
export function top2(a: ArrayLike<number>, o = 0, n = a.length - o): { best: number; second: number; gap: number } {
  let best = -1;
  let second = -1;
  for (let i = 0; i < n; i++) {
    const v = a[o + i];
    if (best < 0 || v > a[o + best]) {
      second = best;
      best = i;
    } else if (second < 0 || v > a[o + second]) {
      second = i;
    }
  }
  return { best, second, gap: a[o + best] - a[o + second] };
}
