/**
 * Memory accounting of a checkpoint for the CPU runtime, from its headers alone (nothing is
 * loaded): parameters, bytes on disk, bytes once loaded (FP8 weights widen to bf16), the
 * share one decode token touches, and the KV cache per token per dtype.
 */
import { Checkpoint } from './checkpoint';
import { NativeEngine } from './engine';
import { expectedTensors } from './weights';

export interface ModelMemory {
  architecture: string;
  layers: number;
  /** Parameters of every tensor the config implies. */
  params: number;
  /** Routed-expert parameters one token activates (top-k of each MoE layer) plus everything dense. */
  activeParams: number;
  /** Bytes of those tensors in the checkpoint files. */
  diskBytes: number;
  /** Bytes they occupy once loaded (F8_E4M3 weights are widened to bf16). */
  loadedBytes: number;
  /** KV cache bytes per token per layer, and for all layers, by cache dtype. */
  kvCache: Record<'f32' | 'bf16' | 'fp8', { bytesPerTokenPerLayer: number; bytesPerToken: number }>;
  /** What Model.load with these options holds on the device the native engine runs on. */
  runtime?: RuntimeMemory;
}

export interface RuntimeMemoryOptions {
  device: 'cpu' | 'cuda';
  /** Cache capacity in tokens (Model.load's maxTokens); default 4096. */
  maxTokens?: number;
  kvCache?: 'f32' | 'bf16' | 'fp8';
  /** Model.load's maxBatch (sequences per batched decode step); default 16. */
  maxBatch?: number;
  /** Model.load's weights: 'int8' / 'fp8' count the quantised linear layers at 1 byte + block scales. */
  weights?: 'bf16' | 'int8' | 'fp8';
}

/** The native engine's memory for a checkpoint, exactly as it allocates it. */
export interface RuntimeMemory {
  device: 'cpu' | 'cuda';
  kvCache: 'f32' | 'bf16' | 'fp8';
  maxTokens: number;
  /** Linear weights as held: as stored (bf16) or quantised at load (int8, fp8). */
  weightFormat: 'bf16' | 'int8' | 'fp8';
  /** Weights as loaded (FP8 widened to bf16), plus kv_b's per-head split copies (W_UKᵀ, W_UV) and the rope tables. */
  weights: number;
  /** Every cache page of every layer: ceil(maxTokens / 64) pages. */
  cache: number;
  /** Activations and kernel scratch for steps of up to maxStepTokens tokens. */
  workspace: number;
  total: number;
}

/** The checkpoint tensors the engine quantises under weights 'int8' | 'fp8' (not kv_b, the router, norms, embedding). */
const QUANTISED = /(\.self_attn\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|o_proj)|\.mlp\.(experts\.\d+\.|shared_experts\.)?(gate_proj|up_proj|down_proj))\.weight$|^lm_head\.weight$/;

export async function modelMemory(dir: string, runtime?: RuntimeMemoryOptions): Promise<ModelMemory> {
  const ck = await Checkpoint.open(dir);
  try {
    const c = ck.config;
    let params = 0;
    let active = 0;
    let disk = 0;
    let loaded = 0;
    let kvbCopies = 0;
    let quantSaved = 0;
    // The loader's rule (weights.ts loadWeights, keepFp8Experts default).
    const keepFp8 = c.fp8WeightBlock !== null && c.fp8WeightBlock[0] === 128 && c.fp8WeightBlock[1] === 128 && c.moeIntermediateSize % 128 === 0;
    for (const [name, shape] of expectedTensors(c)) {
      const n = shape.reduce((a, b) => a * b, 1);
      params += n;
      active += /\.mlp\.experts\.\d+\./.test(name) ? (n * c.numExpertsPerTok) / (c.nRoutedExperts ?? 1) : n;
      const e = ck.entries.get(name);
      if (!e) continue;
      disk += e.end - e.begin;
      const scale = ck.entries.get(`${name}_scale_inv`);
      if (scale) disk += scale.end - scale.begin;
      // F8_E4M3 weights widen to bf16, except routed experts the loader keeps as codes + f32 block scales.
      const keptFp8 = e.dtype === 'fp8_e4m3' && keepFp8 && /\.mlp\.experts\.\d+\./.test(name);
      const bytes = e.dtype !== 'fp8_e4m3' ? e.end - e.begin
        : keptFp8 ? n + 4 * (scale ? scale.shape.reduce((a, b) => a * b, 1) : 0) : 2 * n;
      loaded += bytes;
      if (name.endsWith('.kv_b_proj.weight')) kvbCopies += bytes;
      // Model.load({weights: 'int8' | 'fp8'}): the engine's quantised linear layers (Engine::
      // set_weight_quantization) hold 1 byte per element + one f32 per 128 × 128 block of the
      // engine's matrices (gate and up fused: the scales are counted once, on gate_proj).
      if (e.dtype !== 'fp8_e4m3' && QUANTISED.test(name)) {
        const rows = shape[0], cols = shape[shape.length - 1];
        const blocks = name.endsWith('.up_proj.weight') ? 0 : name.endsWith('.gate_proj.weight')
          ? Math.ceil((2 * rows) / 128) * Math.ceil(cols / 128) : Math.ceil(rows / 128) * Math.ceil(cols / 128);
        quantSaved += bytes - (n + 4 * blocks);
      }
    }
    const dc = c.kvLoraRank;
    const dr = c.qkRopeHeadDim;
    const per = { f32: 4 * (dc + dr), bf16: 2 * (dc + dr), fp8: dc + 4 * Math.ceil(dc / 128) + 2 * dr };
    const kv = Object.fromEntries(Object.entries(per).map(([k, v]) => [k, { bytesPerTokenPerLayer: v, bytesPerToken: v * c.numLayers }])) as ModelMemory['kvCache'];
    const out: ModelMemory = { architecture: c.architecture, layers: c.numLayers, params, activeParams: Math.round(active), diskBytes: disk, loadedBytes: loaded, kvCache: kv };
    if (runtime) {
      // The sizes Model.load picks (model.ts): 64-token pages, rope rows = min(maxTokens, max positions),
      // steps of min(2048, that) tokens (at least maxBatch), maxBatch sequences per step.
      const maxTokens = runtime.maxTokens ?? 4096;
      const kvDtype = runtime.kvCache ?? 'bf16';
      const pageSize = 64;
      const pages = Math.ceil(maxTokens / pageSize);
      const ropeRows = Math.min(maxTokens, c.maxPositionEmbeddings);
      const maxSeqlen = Math.min(ropeRows, pages * pageSize);
      const maxBatch = runtime.maxBatch ?? 16;
      const workspace = NativeEngine.planWorkspace(c, runtime.device, { dtype: kvDtype, pageSize },
        { maxTokens: Math.max(Math.min(2048, maxSeqlen), maxBatch), maxSeqs: maxBatch, maxSeqlen });
      const format = runtime.weights ?? 'bf16';
      const weights = loaded - (format === 'bf16' ? 0 : quantSaved) + kvbCopies + 2 * ropeRows * (c.qkRopeHeadDim / 2) * 4;
      const cache = pages * pageSize * kv[kvDtype].bytesPerToken;
      out.runtime = { device: runtime.device, kvCache: kvDtype, maxTokens, weightFormat: format, weights, cache, workspace, total: weights + cache + workspace };
    }
    return out;
  } finally {
    await ck.close();
  }
}
