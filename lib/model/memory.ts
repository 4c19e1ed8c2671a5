/**
 * Memory accounting of a checkpoint for the CPU runtime, from its headers alone (nothing is
 * loaded): parameters, bytes on disk, bytes once loaded (FP8 weights widen to bf16), the
 * share one decode token touches, and the KV cache per token per dtype.
 */
import { Checkpoint } from './checkpoint';
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
}

export async function modelMemory(dir: string): Promise<ModelMemory> {
  const ck = await Checkpoint.open(dir);
  try {
    const c = ck.config;
    let params = 0;
    let active = 0;
    let disk = 0;
    let loaded = 0;
    for (const [name, shape] of expectedTensors(c)) {
      const n = shape.reduce((a, b) => a * b, 1);
      params += n;
      active += /\.mlp\.experts\.\d+\./.test(name) ? (n * c.numExpertsPerTok) / (c.nRoutedExperts ?? 1) : n;
      const e = ck.entries.get(name);
      if (!e) continue;
      disk += e.end - e.begin;
      const scale = ck.entries.get(`${name}_scale_inv`);
      if (scale) disk += scale.end - scale.begin;
      loaded += e.dtype === 'fp8_e4m3' ? 2 * n : e.end - e.begin;
    }
    const dc = c.kvLoraRank;
    const dr = c.qkRopeHeadDim;
    const per = { f32: 4 * (dc + dr), bf16: 2 * (dc + dr), fp8: dc + 4 * Math.ceil(dc / 128) + 2 * dr };
    const kv = Object.fromEntries(Object.entries(per).map(([k, v]) => [k, { bytesPerTokenPerLayer: v, bytesPerToken: v * c.numLayers }])) as ModelMemory['kvCache'];
    return { architecture: c.architecture, layers: c.numLayers, params, activeParams: Math.round(active), diskBytes: disk, loadedBytes: loaded, kvCache: kv };
  } finally {
    await ck.close();
  }
}
