/**
 * RoPE/YaRN settings from a DeepSeek config.json, and the attention softmax scale that
 * YaRN implies (DeepseekV2Attention: `q_head_dim^-0.5 · mscale(factor, mscale_all_dim)²`).
 */
import { Dsv2Error } from '../errors';
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

function num(o: Json, key: string, fallback?: number): number {
  const v = o[key];
  if (v === undefined || v === null) {
    if (fallback !== undefined) return fallback;
    throw new Dsv2Error('E_CHECKPOINT', `config.json: ${key} is missing`);
  }
  if (typeof v !== 'number' || !Number.isFinite(v)) {
    throw new Dsv2Error('E_CHECKPOINT', `config.json: ${key} = ${JSON.stringify(v)} must be a finite number`);
  }
  return v;
}

/** Reads qk_rope_head_dim, rope_theta and rope_scaling (null, or type "yarn"). */
export function ropeFromConfig(config: Json): RopeConfig {
  const dim = num(config, 'qk_rope_head_dim');
  const theta = num(config, 'rope_theta', 10000);
  const rs = config.rope_scaling as Json | null | undefined;
  if (rs === undefined || rs === null) return { dim, theta, yarn: null };
  const type = rs.type ?? rs.rope_type;
  if (type !== 'yarn') {
    throw new Dsv2Error('E_UNSUPPORTED', `config.json: rope_scaling.type = ${JSON.stringify(type)} is not supported (only "yarn")`);
  }
  return {
    dim,
    theta,
    yarn: {
      factor: num(rs, 'factor'),
      originalMaxPositionEmbeddings: num(rs, 'original_max_position_embeddings', 4096),
      betaFast: num(rs, 'beta_fast', 32),
      betaSlow: num(rs, 'beta_slow', 1),
      mscale: num(rs, 'mscale', 1),
      mscaleAllDim: num(rs, 'mscale_all_dim', 0),
    },
  };
}

/** Attention softmax scale: `(qk_nope_head_dim + qk_rope_head_dim)^-0.5`, times mscale² under YaRN. */
export function softmaxScale(config: Json): number {
  const qHeadDim = num(config, 'qk_nope_head_dim') + num(config, 'qk_rope_head_dim');
  let scale = 1 / Math.sqrt(qHeadDim);
  const { yarn } = ropeFromConfig(config);
  if (yarn) {
    const m = yarnGetMscale(yarn.factor, yarn.mscaleAllDim);
    scale *= m * m;
  }
  return scale;
}
