/**
 * DeepSeek-V2/V3 config.json → a typed, validated config. Every shape of the runtime comes
 * from here; nothing is hard-coded (V2's sizes are only defaults where the published
 * modeling code has them).
 */
import { Dsv2Error } from '../errors';
import { ropeFromConfig, softmaxScale, type RopeConfig } from '../ops/rope';
import type { MoeMethod } from '../ops/moe';

export interface DeepSeekConfig {
  /** The raw config.json object. */
  raw: Record<string, unknown>;
  architecture: string;
  vocabSize: number;
  hiddenSize: number;
  /** Dense MLP width (layers before first_k_dense_replace). */
  intermediateSize: number;
  moeIntermediateSize: number;
  numLayers: number;
  numHeads: number;
  /** null: plain q_proj (V2-Lite). */
  qLoraRank: number | null;
  kvLoraRank: number;
  qkNopeHeadDim: number;
  qkRopeHeadDim: number;
  vHeadDim: number;
  /** null: no MoE layers. */
  nRoutedExperts: number | null;
  nSharedExperts: number;
  numExpertsPerTok: number;
  topkMethod: MoeMethod;
  scoringFunc: 'softmax' | 'sigmoid';
  nGroup: number;
  topkGroup: number;
  normTopkProb: boolean;
  routedScalingFactor: number;
  firstKDenseReplace: number;
  moeLayerFreq: number;
  rmsNormEps: number;
  rope: RopeConfig;
  /** Attention softmax scale: q_head_dim^-0.5 · mscale² (YaRN). */
  softmaxScale: number;
  maxPositionEmbeddings: number;
  tieWordEmbeddings: boolean;
  bosTokenId: number | null;
  eosTokenId: number | number[] | null;
  /** FP8 block-scaled weights (V3): block [rows, cols], else null. */
  fp8WeightBlock: [number, number] | null;
}

function err(msg: string): never {
  throw new Dsv2Error('E_CHECKPOINT', `config.json: ${msg}`);
}

function int(o: Record<string, unknown>, key: string, fallback?: number, min = 1): number {
  const v = o[key] ?? fallback;
  if (v === undefined) err(`${key} is missing`);
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min) err(`${key} = ${JSON.stringify(v)} must be an integer >= ${min}`);
  return v;
}

function nullableInt(o: Record<string, unknown>, key: string): number | null {
  return o[key] === null || o[key] === undefined ? null : int(o, key);
}

function num(o: Record<string, unknown>, key: string, fallback: number): number {
  const v = o[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v)) err(`${key} = ${JSON.stringify(v)} must be a finite number`);
  return v;
}

/** Reads and checks a DeepSeek config.json object. */
export function parseConfig(raw: Record<string, unknown>): DeepSeekConfig {
  if (typeof raw !== 'object' || raw === null) err('is not a JSON object');
  const arch = Array.isArray(raw.architectures) ? String(raw.architectures[0]) : String(raw.model_type ?? '');
  if (!/DeepseekV[23]ForCausalLM|deepseek_v[23]/.test(arch)) {
    throw new Dsv2Error('E_UNSUPPORTED', `config.json: architecture ${JSON.stringify(arch)} is not DeepseekV2ForCausalLM or DeepseekV3ForCausalLM`);
  }
  const topk = String(raw.topk_method ?? 'greedy');
  if (!['greedy', 'group_limited_greedy', 'noaux_tc'].includes(topk)) {
    throw new Dsv2Error('E_UNSUPPORTED', `config.json: topk_method ${JSON.stringify(topk)} is not greedy, group_limited_greedy or noaux_tc`);
  }
  const scoring = String(raw.scoring_func ?? 'softmax');
  if (scoring !== 'softmax' && scoring !== 'sigmoid') err(`scoring_func ${JSON.stringify(scoring)} is not softmax or sigmoid`);
  if (raw.hidden_act !== undefined && raw.hidden_act !== 'silu') {
    throw new Dsv2Error('E_UNSUPPORTED', `config.json: hidden_act ${JSON.stringify(raw.hidden_act)} is not silu`);
  }
  const nRouted = nullableInt(raw, 'n_routed_experts');
  const cfg: DeepSeekConfig = {
    raw,
    architecture: arch,
    vocabSize: int(raw, 'vocab_size'),
    hiddenSize: int(raw, 'hidden_size'),
    intermediateSize: int(raw, 'intermediate_size'),
    moeIntermediateSize: nRouted === null ? 0 : int(raw, 'moe_intermediate_size'),
    numLayers: int(raw, 'num_hidden_layers'),
    numHeads: int(raw, 'num_attention_heads'),
    qLoraRank: nullableInt(raw, 'q_lora_rank'),
    kvLoraRank: int(raw, 'kv_lora_rank'),
    qkNopeHeadDim: int(raw, 'qk_nope_head_dim', undefined, 0),
    qkRopeHeadDim: int(raw, 'qk_rope_head_dim'),
    vHeadDim: int(raw, 'v_head_dim'),
    nRoutedExperts: nRouted,
    nSharedExperts: raw.n_shared_experts === null || raw.n_shared_experts === undefined ? 0 : int(raw, 'n_shared_experts', undefined, 0),
    numExpertsPerTok: nRouted === null ? 0 : int(raw, 'num_experts_per_tok'),
    topkMethod: topk as MoeMethod,
    scoringFunc: scoring,
    nGroup: int(raw, 'n_group', 1),
    topkGroup: int(raw, 'topk_group', 1),
    normTopkProb: Boolean(raw.norm_topk_prob ?? false),
    routedScalingFactor: num(raw, 'routed_scaling_factor', 1),
    firstKDenseReplace: int(raw, 'first_k_dense_replace', 0, 0),
    moeLayerFreq: int(raw, 'moe_layer_freq', 1),
    rmsNormEps: num(raw, 'rms_norm_eps', 1e-6),
    rope: ropeFromConfig(raw),
    softmaxScale: softmaxScale(raw),
    maxPositionEmbeddings: int(raw, 'max_position_embeddings', 4096),
    tieWordEmbeddings: Boolean(raw.tie_word_embeddings ?? false),
    bosTokenId: typeof raw.bos_token_id === 'number' ? raw.bos_token_id : null,
    eosTokenId: typeof raw.eos_token_id === 'number' || Array.isArray(raw.eos_token_id) ? (raw.eos_token_id as number | number[]) : null,
    fp8WeightBlock: null,
  };
  if (cfg.qkRopeHeadDim % 2 !== 0) err(`qk_rope_head_dim = ${cfg.qkRopeHeadDim} must be even`);
  // The runtime's limits (the KV cache's), checked before any weight is read.
  if (cfg.kvLoraRank > 65536) err(`kv_lora_rank = ${cfg.kvLoraRank} exceeds 65536`);
  if (cfg.qkRopeHeadDim > 65536) err(`qk_rope_head_dim = ${cfg.qkRopeHeadDim} exceeds 65536`);
  if (cfg.numLayers > 4096) err(`num_hidden_layers = ${cfg.numLayers} exceeds 4096`);
  if (nRouted !== null) {
    if (nRouted % cfg.nGroup !== 0) err(`n_group = ${cfg.nGroup} must divide n_routed_experts = ${nRouted}`);
    if (cfg.topkGroup > cfg.nGroup) err(`topk_group = ${cfg.topkGroup} exceeds n_group = ${cfg.nGroup}`);
    const reachable = cfg.topkMethod === 'greedy' ? nRouted : cfg.topkGroup * (nRouted / cfg.nGroup);
    if (cfg.numExpertsPerTok > reachable) err(`num_experts_per_tok = ${cfg.numExpertsPerTok} exceeds the ${reachable} experts routing can reach`);
    if (cfg.topkMethod === 'noaux_tc' && nRouted / cfg.nGroup < 2) err(`noaux_tc scores a group by its two best experts, but n_group = ${cfg.nGroup} leaves ${nRouted / cfg.nGroup} per group`);
  }
  const q = raw.quantization_config as Record<string, unknown> | undefined;
  if (q) {
    if (q.quant_method !== 'fp8' || (q.fmt !== undefined && q.fmt !== 'e4m3')) {
      throw new Dsv2Error('E_UNSUPPORTED', `config.json: quantization_config ${JSON.stringify(q)} is not fp8 e4m3 block scaling`);
    }
    const b = q.weight_block_size as unknown;
    if (!Array.isArray(b) || b.length !== 2 || !b.every((x) => Number.isSafeInteger(x) && x > 0)) err(`quantization_config.weight_block_size ${JSON.stringify(b)} must be [rows, cols]`);
    cfg.fp8WeightBlock = [b[0], b[1]];
  }
  return cfg;
}

/** Whether layer i is an MoE layer (DeepseekV2DecoderLayer's rule). */
export function isMoeLayer(c: DeepSeekConfig, i: number): boolean {
  return c.nRoutedExperts !== null && i >= c.firstKDenseReplace && i % c.moeLayerFreq === 0;
}

/** Head dims of q/k: nope + rope. */
export function qHeadDim(c: DeepSeekConfig): number {
  return c.qkNopeHeadDim + c.qkRopeHeadDim;
}
