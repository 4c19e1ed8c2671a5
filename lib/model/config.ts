/**
 * DeepSeek-V2/V3 config.json → a typed, validated config. Every shape of the runtime comes
 * from here; nothing is hard-coded (V2's sizes are only defaults where the published
 * modeling code has them).
 */
import { Dsv2Error, showValue as show } from '../errors';
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


/**
 * Upper limits of the sizes in config.json. Each is far above every published model (so no
 * real config is refused) but low enough that a fuzzed or mistyped value (n_routed_experts:
 * 10000000) is refused at once, before tensor names or buffers are made from it. The implied
 * totals are bounded as well (MAX_PARAMETERS, MAX_TENSORS), since sizes that are each sane
 * can still multiply to an impossible model.
 */
export const CONFIG_LIMITS = {
  /** Token ids are int32 and the embedding is [vocab, hidden]; published: 102400 (V2), 129280 (V3); the largest public vocabularies are ~256k. */
  vocab_size: 2 ** 22,
  /** Published 2048–7168; the widest public models are ~16k–20k. */
  hidden_size: 65536,
  /** Dense MLP width: published 10944–18432; the widest public FFNs are ~50k–75k. */
  intermediate_size: 2 ** 18,
  /** Per-expert MLP width: published 1408–2048. */
  moe_intermediate_size: 65536,
  /** Published 27–61; the deepest public models have ~130 layers. Also bounds moe_layer_freq. */
  num_hidden_layers: 1024,
  /** Published 16–128. */
  num_attention_heads: 1024,
  /** Published 1536. */
  q_lora_rank: 65536,
  /** Published 512; also the KV cache's limit on the latent width. */
  kv_lora_rank: 65536,
  /** qk_nope_head_dim, qk_rope_head_dim, v_head_dim: published 64–128. */
  head_dim: 4096,
  /** Published 64–256; the most in public models is ~384. Also bounds n_group, topk_group. */
  n_routed_experts: 4096,
  /** Published 1–2. */
  n_shared_experts: 256,
  /** The RoPE table's limit (ops.ropeTable: at most 2^24 positions); published 163840. */
  max_position_embeddings: 2 ** 24,
  /** FP8 weight blocks: published [128, 128]. */
  weight_block: 65536,
} as const;

/** At most 2^40 ≈ 1.1 T parameters in all (DeepSeek-V3, the largest published config, has 671 B ≈ 2^39.3). */
export const MAX_PARAMETERS = 2 ** 40;
/** At most 2^20 tensors implied (DeepSeek-V3 implies ~46k, ~91k with its FP8 scales). */
export const MAX_TENSORS = 2 ** 20;

function int(o: Record<string, unknown>, key: string, fallback: number | undefined, min: number, max: number): number {
  const v = o[key] ?? fallback;
  if (v === undefined) err(`${key} is missing`);
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < min || v > max) err(`${key} = ${show(v)} must be an integer in [${min}, ${max}]`);
  return v;
}

function nullableInt(o: Record<string, unknown>, key: string, max: number): number | null {
  return o[key] === null || o[key] === undefined ? null : int(o, key, undefined, 1, max);
}

/** A finite number v with lo < v < hi (or <= where `incl` says so). */
function num(o: Record<string, unknown>, key: string, fallback: number, lo: number, hi: number, incl: { lo?: boolean; hi?: boolean } = {}): number {
  const v = o[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isFinite(v)) err(`${key} = ${show(v)} must be a finite number`);
  const okLo = incl.lo ? v >= lo : v > lo;
  const okHi = incl.hi ? v <= hi : v < hi;
  if (!okLo || !okHi) err(`${key} = ${show(v)} must be in ${incl.lo ? '[' : '('}${lo}, ${hi}${incl.hi ? ']' : ')'}`);
  return v;
}

/** A JSON boolean (absent or null: the fallback). Boolean("false") is true, so strings are refused. */
function bool(o: Record<string, unknown>, key: string, fallback: boolean): boolean {
  const v = o[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'boolean') err(`${key} = ${show(v)} must be true or false`);
  return v;
}

/** A JSON string (absent or null: the fallback). String(["greedy"]) is "greedy", so lists are refused. */
function str(o: Record<string, unknown>, key: string, fallback: string): string {
  const v = o[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'string') err(`${key} = ${show(v)} must be a string`);
  return v;
}

/** A token id of config.json: an integer in [0, vocab). */
function tokenId(key: string, v: unknown, vocab: number, whole?: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v >= vocab) {
    const what = whole === undefined ? `${key} = ${show(v)}` : `${key} = ${show(whole)}: entry ${show(v)}`;
    err(`${what} must be an integer token id in [0, ${vocab}) (vocab_size ${vocab})`);
  }
  return v;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Parameters and tensors the config implies (the tensors expectedTensors() lists), computed
 * from the sizes alone so that both are bounded before any name or buffer is made.
 */
function impliedTotals(c: DeepSeekConfig): { params: number; tensors: number; parts: string } {
  const H = c.hiddenSize;
  const h = c.numHeads;
  const qHead = c.qkNopeHeadDim + c.qkRopeHeadDim;
  const q = c.qLoraRank === null ? h * qHead * H : c.qLoraRank * H + c.qLoraRank + h * qHead * c.qLoraRank;
  const attn = q + (c.kvLoraRank + c.qkRopeHeadDim) * H + c.kvLoraRank + h * (c.qkNopeHeadDim + c.vHeadDim) * c.kvLoraRank + H * h * c.vHeadDim + 2 * H;
  const attnTensors = (c.qLoraRank === null ? 1 : 3) + 4 + 2;
  let moeLayers = 0;
  for (let i = 0; i < c.numLayers; i++) if (isMoeLayer(c, i)) moeLayers++;
  const denseLayers = c.numLayers - moeLayers;
  const E = c.nRoutedExperts ?? 0;
  const I = c.moeIntermediateSize;
  const moe = E * H + (c.topkMethod === 'noaux_tc' ? E : 0) + 3 * E * I * H + 3 * c.nSharedExperts * I * H;
  const moeTensors = 1 + (c.topkMethod === 'noaux_tc' ? 1 : 0) + 3 * E + (c.nSharedExperts > 0 ? 3 : 0);
  const dense = 3 * c.intermediateSize * H;
  const embed = c.vocabSize * H * (c.tieWordEmbeddings ? 1 : 2);
  const params = embed + H + c.numLayers * attn + denseLayers * dense + moeLayers * moe;
  const tensors = 2 + (c.tieWordEmbeddings ? 0 : 1) + c.numLayers * attnTensors + denseLayers * 3 + moeLayers * moeTensors;
  const parts = `embeddings ${embed}, attention ${c.numLayers} × ${attn}, dense MLP ${denseLayers} × ${dense}, MoE ${moeLayers} × ${moe}`;
  return { params, tensors, parts };
}

/** Reads and checks a DeepSeek config.json object. */
export function parseConfig(raw: Record<string, unknown>): DeepSeekConfig {
  if (!isObject(raw)) err(`${show(raw)} is not a JSON object`);
  let arch: string;
  if (raw.architectures !== undefined && raw.architectures !== null) {
    const a = raw.architectures;
    if (!Array.isArray(a) || a.length === 0 || !a.every((x) => typeof x === 'string')) err(`architectures = ${show(a)} must be a list of strings`);
    arch = a[0] as string;
  } else {
    arch = str(raw, 'model_type', '');
  }
  if (raw.model_type !== undefined && raw.model_type !== null) str(raw, 'model_type', '');
  if (!/^(DeepseekV[23]ForCausalLM|deepseek_v[23])$/.test(arch)) {
    throw new Dsv2Error('E_UNSUPPORTED', `config.json: architecture ${JSON.stringify(arch)} is not DeepseekV2ForCausalLM or DeepseekV3ForCausalLM`);
  }
  const topk = str(raw, 'topk_method', 'greedy');
  if (!['greedy', 'group_limited_greedy', 'noaux_tc'].includes(topk)) {
    throw new Dsv2Error('E_UNSUPPORTED', `config.json: topk_method ${JSON.stringify(topk)} is not greedy, group_limited_greedy or noaux_tc`);
  }
  const scoring = str(raw, 'scoring_func', 'softmax');
  if (scoring !== 'softmax' && scoring !== 'sigmoid') err(`scoring_func ${JSON.stringify(scoring)} is not softmax or sigmoid`);
  const act = str(raw, 'hidden_act', 'silu');
  if (act !== 'silu') throw new Dsv2Error('E_UNSUPPORTED', `config.json: hidden_act ${JSON.stringify(act)} is not silu`);
  const L = CONFIG_LIMITS;
  const nRouted = nullableInt(raw, 'n_routed_experts', L.n_routed_experts);
  const vocabSize = int(raw, 'vocab_size', undefined, 1, L.vocab_size);
  const numLayers = int(raw, 'num_hidden_layers', undefined, 1, L.num_hidden_layers);
  const eos = raw.eos_token_id;
  const cfg: DeepSeekConfig = {
    raw,
    architecture: arch,
    vocabSize,
    hiddenSize: int(raw, 'hidden_size', undefined, 1, L.hidden_size),
    intermediateSize: int(raw, 'intermediate_size', undefined, 1, L.intermediate_size),
    moeIntermediateSize: nRouted === null ? 0 : int(raw, 'moe_intermediate_size', undefined, 1, L.moe_intermediate_size),
    numLayers,
    numHeads: int(raw, 'num_attention_heads', undefined, 1, L.num_attention_heads),
    qLoraRank: nullableInt(raw, 'q_lora_rank', L.q_lora_rank),
    kvLoraRank: int(raw, 'kv_lora_rank', undefined, 1, L.kv_lora_rank),
    qkNopeHeadDim: int(raw, 'qk_nope_head_dim', undefined, 0, L.head_dim),
    qkRopeHeadDim: int(raw, 'qk_rope_head_dim', undefined, 1, L.head_dim),
    vHeadDim: int(raw, 'v_head_dim', undefined, 1, L.head_dim),
    nRoutedExperts: nRouted,
    nSharedExperts: raw.n_shared_experts === null || raw.n_shared_experts === undefined ? 0 : int(raw, 'n_shared_experts', undefined, 0, L.n_shared_experts),
    numExpertsPerTok: nRouted === null ? 0 : int(raw, 'num_experts_per_tok', undefined, 1, L.n_routed_experts),
    topkMethod: topk as MoeMethod,
    scoringFunc: scoring,
    nGroup: int(raw, 'n_group', 1, 1, L.n_routed_experts),
    topkGroup: int(raw, 'topk_group', 1, 1, L.n_routed_experts),
    normTopkProb: bool(raw, 'norm_topk_prob', false),
    // Multiplies every routed expert's output: published 1–16.
    routedScalingFactor: num(raw, 'routed_scaling_factor', 1, 0, 1e6, { hi: true }),
    firstKDenseReplace: int(raw, 'first_k_dense_replace', 0, 0, L.num_hidden_layers),
    moeLayerFreq: int(raw, 'moe_layer_freq', 1, 1, L.num_hidden_layers),
    // Added to a mean of squares before its inverse square root: > 0 (no division by zero), < 1 (published 1e-6).
    rmsNormEps: num(raw, 'rms_norm_eps', 1e-6, 0, 1),
    rope: ropeFromConfig(raw),
    softmaxScale: softmaxScale(raw),
    maxPositionEmbeddings: int(raw, 'max_position_embeddings', 4096, 1, L.max_position_embeddings),
    tieWordEmbeddings: bool(raw, 'tie_word_embeddings', false),
    bosTokenId: raw.bos_token_id === null || raw.bos_token_id === undefined ? null : tokenId('bos_token_id', raw.bos_token_id, vocabSize),
    eosTokenId: eos === null || eos === undefined ? null
      : Array.isArray(eos) ? eos.map((x) => tokenId('eos_token_id', x, vocabSize, eos)) : tokenId('eos_token_id', eos, vocabSize),
    fp8WeightBlock: null,
  };
  if (cfg.qkRopeHeadDim % 2 !== 0) err(`qk_rope_head_dim = ${cfg.qkRopeHeadDim} must be even`);
  if (cfg.firstKDenseReplace > numLayers) err(`first_k_dense_replace = ${cfg.firstKDenseReplace} exceeds num_hidden_layers = ${numLayers}`);
  if (nRouted !== null) {
    if (cfg.numExpertsPerTok > nRouted) err(`num_experts_per_tok = ${cfg.numExpertsPerTok} exceeds n_routed_experts = ${nRouted}`);
    if (cfg.nGroup > nRouted) err(`n_group = ${cfg.nGroup} exceeds n_routed_experts = ${nRouted}`);
    if (nRouted % cfg.nGroup !== 0) err(`n_group = ${cfg.nGroup} must divide n_routed_experts = ${nRouted}`);
    if (cfg.topkGroup > cfg.nGroup) err(`topk_group = ${cfg.topkGroup} exceeds n_group = ${cfg.nGroup}`);
    const reachable = cfg.topkMethod === 'greedy' ? nRouted : cfg.topkGroup * (nRouted / cfg.nGroup);
    if (cfg.numExpertsPerTok > reachable) err(`num_experts_per_tok = ${cfg.numExpertsPerTok} exceeds the ${reachable} experts routing can reach`);
    if (cfg.topkMethod === 'noaux_tc' && nRouted / cfg.nGroup < 2) err(`noaux_tc scores a group by its two best experts, but n_group = ${cfg.nGroup} leaves ${nRouted / cfg.nGroup} per group`);
  }
  const q = raw.quantization_config;
  if (q !== undefined && q !== null) {
    if (!isObject(q)) err(`quantization_config = ${show(q)} must be an object`);
    if (q.quant_method !== 'fp8' || (q.fmt !== undefined && q.fmt !== 'e4m3')) {
      throw new Dsv2Error('E_UNSUPPORTED', `config.json: quantization_config ${show(q)} is not fp8 e4m3 block scaling`);
    }
    const b = q.weight_block_size as unknown;
    if (!Array.isArray(b) || b.length !== 2 || !b.every((x) => Number.isSafeInteger(x) && x > 0 && x <= L.weight_block)) {
      err(`quantization_config.weight_block_size = ${show(b)} must be [rows, cols], integers in [1, ${L.weight_block}]`);
    }
    cfg.fp8WeightBlock = [b[0], b[1]];
  }
  // The totals, before anything is made from the sizes.
  const t = impliedTotals(cfg);
  if (!(t.params <= MAX_PARAMETERS)) err(`the sizes imply ${t.params.toExponential(3)} parameters (${t.parts}), more than the limit of 2^40`);
  if (!(t.tensors <= MAX_TENSORS)) err(`the sizes imply ${t.tensors} tensors (num_hidden_layers ${numLayers}, n_routed_experts ${nRouted}), more than the limit of 2^20`);
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
