/**
 * RoPE/YaRN settings from a DeepSeek config.json, and the attention softmax scale that
 * YaRN implies (DeepseekV2Attention: `q_head_dim^-0.5 · mscale(factor, mscale_all_dim)²`).
 */
import { Dsv2Error, showValue as show } from '../errors';
import type { Tensor } from '../tensor';

/** config.json `rope_scaling` of type "yarn", in camelCase. */
export interface YarnConfig {
  factor: number;
  originalMaxPositionEmbeddings: number;
  betaFast: number;
  betaSlow: number;
  mscale: number;
  mscaleAllDim: number;
}

/** What ropeTable() needs, read from config.json. */
export interface RopeConfig {
  dim: number;
  theta: number;
  yarn: YarnConfig | null;
}

/** The cos/sin tables ropeTable() returns, each f32 [maxPositions, dim / 2]. */
export interface RopeTable {
  cos: Tensor;
  sin: Tensor;
}

/** yarn_get_mscale of the modeling code: `0.1 · mscale · ln(scale) + 1` for scale > 1, else 1. */
export function yarnGetMscale(scale: number, mscale = 1): number {
  return scale <= 1 ? 1 : 0.1 * mscale * Math.log(scale) + 1;
}

type Json = Record<string, unknown>;

function bad(msg: string): never {
  throw new Dsv2Error('E_CHECKPOINT', `config.json: ${msg}`);
}


/**
 * config[key] (named `prefix + key` in messages): a finite number in [lo, hi] (`open` makes
 * the lower bound exclusive), or the fallback when absent or null; `integer` also requires an
 * integer.
 */
function num(o: Json, key: string, fallback: number | undefined, lo: number, hi: number,
  opt: { open?: boolean; integer?: boolean; prefix?: string } = {}): number {
  const name = `${opt.prefix ?? ''}${key}`;
  const v = o[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    bad(`${name} is missing`);
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) bad(`${name} = ${show(v)} must be a finite number`);
  if (opt.integer && !Number.isSafeInteger(v)) bad(`${name} = ${show(v)} must be an integer`);
  if (opt.open ? !(v > lo) : !(v >= lo)) bad(`${name} = ${show(v)} must be ${opt.open ? '>' : '>='} ${lo}`);
  if (!(v <= hi)) bad(`${name} = ${show(v)} must be <= ${hi}`);
  return v;
}

/**
 * Bounds of the RoPE fields (published: theta 10000; yarn factor 40, original 4096, beta 32 / 1,
 * mscale 0.707–1). Each is generous; together they keep the tables and the softmax scale
 * finite and positive: with factor <= 65536 and mscale, mscale_all_dim in [0, 10],
 * yarn_get_mscale lies in [1, 12.1], so its square and ratios do too.
 */
export const ROPE_LIMITS = {
  /** The RoPE base: > 1 (frequencies must fall with the dimension; ops.ropeTable's rule). */
  thetaMax: 1e12,
  /** Context extension factor: >= 1 (YaRN stretches, never shrinks). */
  factorMax: 65536,
  /** Positions of the original model: ops.ropeTable's 2^24-position limit. */
  originalMaxPositions: 2 ** 24,
  /** Rotations that bound YaRN's ramp, > 0. */
  betaMax: 65536,
  /** yarn_get_mscale's coefficient. */
  mscaleMax: 10,
  /** The rotary part of a head (even). */
  dimMax: 4096,
} as const;

/** Reads qk_rope_head_dim, rope_theta and rope_scaling (null, or type "yarn"), checking each value's type and range. */
export function ropeFromConfig(config: Json): RopeConfig {
  const R = ROPE_LIMITS;
  const dim = num(config, 'qk_rope_head_dim', undefined, 2, R.dimMax, { integer: true });
  if (dim % 2 !== 0) bad(`qk_rope_head_dim = ${dim} must be even`);
  const theta = num(config, 'rope_theta', 10000, 1, R.thetaMax, { open: true });
  const rs = config.rope_scaling;
  if (rs === undefined || rs === null) return { dim, theta, yarn: null };
  if (typeof rs !== 'object' || Array.isArray(rs)) bad(`rope_scaling = ${show(rs)} must be an object or null`);
  const o = rs as Json;
  const type = o.type ?? o.rope_type;
  if (typeof type !== 'string') bad(`rope_scaling.type = ${show(type)} must be a string ("yarn")`);
  if (type !== 'yarn') {
    throw new Dsv2Error('E_UNSUPPORTED', `config.json: rope_scaling.type = ${JSON.stringify(type)} is not supported (only "yarn")`);
  }
  const p = { prefix: 'rope_scaling.' };
  const yarn: YarnConfig = {
    factor: num(o, 'factor', undefined, 1, R.factorMax, p),
    originalMaxPositionEmbeddings: num(o, 'original_max_position_embeddings', 4096, 1, R.originalMaxPositions, { ...p, integer: true }),
    betaFast: num(o, 'beta_fast', 32, 0, R.betaMax, { ...p, open: true }),
    betaSlow: num(o, 'beta_slow', 1, 0, R.betaMax, { ...p, open: true }),
    mscale: num(o, 'mscale', 1, 0, R.mscaleMax, p),
    mscaleAllDim: num(o, 'mscale_all_dim', 0, 0, R.mscaleMax, p),
  };
  // beta_fast bounds the ramp's low end, beta_slow its high end: reversed, the ramp runs backwards.
  if (yarn.betaFast < yarn.betaSlow) bad(`rope_scaling.beta_fast = ${yarn.betaFast} must be >= rope_scaling.beta_slow = ${yarn.betaSlow}`);
  return { dim, theta, yarn };
}

/** Attention softmax scale: `(qk_nope_head_dim + qk_rope_head_dim)^-0.5`, times mscale² under YaRN. */
export function softmaxScale(config: Json): number {
  const { yarn, dim } = ropeFromConfig(config);
  const qHeadDim = num(config, 'qk_nope_head_dim', undefined, 0, ROPE_LIMITS.dimMax, { integer: true }) + dim;
  let scale = 1 / Math.sqrt(qHeadDim);
  if (yarn) {
    const m = yarnGetMscale(yarn.factor, yarn.mscaleAllDim);
    scale *= m * m;
  }
  if (!(Number.isFinite(scale) && scale > 0)) bad(`the softmax scale ${scale} of qk_nope_head_dim, qk_rope_head_dim and rope_scaling is not finite and > 0`);
  return scale;
}
