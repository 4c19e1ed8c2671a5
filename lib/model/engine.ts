/**
 * The native model engine: the whole forward in C++ on one backend (CUDA: device-resident
 * weights and activations, a step enqueued on one stream, only the sampled tokens or the
 * requested logits read back; CPU: the core's CPU ops — the same orchestration, tested
 * against the float64 reference). Every `Model.load` runs on it, on the CPU or CUDA backend.
 */
import { Dsv2Error, fromNative, native, throwIfAborted } from '../errors';
import type { KvCache } from '../kv-cache';
import { binding, type RawEngine } from '../native';
import type { RopeTable } from '../ops';
import { tensorArg } from '../ops/args';
import type { Tensor } from '../tensor';
import { isMoeLayer, type DeepSeekConfig } from './config';
import type { ExpertPart, LayerWeights, ModelWeights } from './weights';

export interface EngineLimits {
  /** Tokens one step carries (longer prompts are prefilled in chunks of this size). */
  maxTokens: number;
  /** Sequences one step carries. */
  maxSeqs: number;
  /** Keys one sequence may hold. */
  maxSeqlen: number;
}

/** One sequence's part of a step: its new tokens and its place in the cache. */
export interface EngineSeq {
  tokens: ArrayLike<number>;
  /** Tokens already cached (the new ones follow at positions pos0, pos0 + 1, ...). */
  pos0: number;
  /** Its pages in order; must cover pos0 + tokens.length tokens. */
  pages: readonly number[];
}

export interface EngineSampling {
  temperature: number;
  topK: number;
  topP: number;
  /** One seed per sequence (the draw of a one-row `ops.sample` call with that seed). */
  seeds: readonly bigint[];
}

export interface EngineMemory {
  /** Weight bytes on the engine's device (as stored: bf16 stays bf16, f32 stays f32), rope tables included. */
  weights: number;
  /** KV cache bytes (all pages of all layers). */
  cache: number;
  /** Activations and kernel scratch, sized for the limits. */
  workspace: number;
  device: string;
  /** CUDA graphs of decode steps: captured, failed captures (those steps run launch by launch), replays. */
  graphs: { captured: number; failed: number; launches: number };
}

/** Wall time of one kind of engine op over the profiled steps (see `Model.startProfile`). */
export interface OpTime {
  /** `step` (a whole step), `embed`, `norm`, `attn.q`, `attn.kv_a`, `attn.kv_norm_rope_append`, `attn.absorb_q`,
   * `attn.mla_decode`, `attn.absorb_o`, `attn.mla_prefill`, `attn.o_proj`, `mlp.dense`, `moe.gate`, `moe.route`,
   * `moe.experts`, `lm_head`, `sample`. */
  op: string;
  calls: number;
  seconds: number;
}

const U64 = (1n << 64n) - 1n;

export class NativeEngine {
  readonly device: 'cpu' | 'cuda';
  readonly limits: EngineLimits;
  readonly #pageSize: number;
  readonly #vocab: number;
  #raw: RawEngine | null;

  private constructor(raw: RawEngine, device: 'cpu' | 'cuda', limits: EngineLimits, pageSize: number, vocab: number) {
    this.#raw = raw;
    this.device = device;
    this.limits = limits;
    this.#pageSize = pageSize;
    this.#vocab = vocab;
  }

  /**
   * An engine on `device` with no weights yet: give them with setWeights / setLayer +
   * setGlobals, or randomWeights; then setRope. The cache must live on the same device; the
   * engine keeps it alive.
   */
  static open(c: DeepSeekConfig, cache: KvCache, device: 'cpu' | 'cuda', limits: EngineLimits,
    opts: { weights?: 'bf16' | 'int8' | 'fp8' } = {}): NativeEngine {
    try {
      const weights = opts.weights === 'int8' ? 'i8' : opts.weights === 'fp8' ? 'fp8_e4m3' : undefined;
      const raw = new (binding().Engine)({ device, dims: engineDims(c), cache: cache.raw(), ...limits, ...(weights ? { weights } : {}) });
      return new NativeEngine(raw, device, limits, cache.pageSize, c.vocabSize);
    } catch (e) {
      throw fromNative(e);
    }
  }

  /**
   * open() + every weight (copied to the device, progress in bytes) or, with `{random: seed}`,
   * random weights made there (benchmarks: std 1/sqrt(fan_in), the same values on every
   * device) + the rope tables. Disposes the engine if anything fails.
   */
  static async create(c: DeepSeekConfig, weights: ModelWeights | { random: number; dtype?: 'bf16' | 'f32' }, cache: KvCache,
    rope: RopeTable, device: 'cpu' | 'cuda', limits: EngineLimits,
    opts: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void; weights?: 'bf16' | 'int8' | 'fp8' } = {}): Promise<NativeEngine> {
    const engine = NativeEngine.open(c, cache, device, limits, { weights: opts.weights });
    try {
      if ('random' in weights) await engine.randomWeights(weights.random, weights.dtype ?? 'bf16');
      else await engine.#upload(engineWeights(weights), opts);
      await engine.setRope(rope);
    } catch (e) {
      engine.dispose();
      throw e;
    }
    return engine;
  }

  async #upload(list: [number, string, Tensor][], opts: { signal?: AbortSignal; onProgress?: (done: number, total: number) => void } = {}): Promise<void> {
    const raw = this.#engine();
    const total = list.reduce((a, [, , t]) => a + t.data.byteLength, 0);
    let done = 0;
    for (const [layer, name, t] of list) {
      throwIfAborted(opts.signal, `copying weights to ${this.device}`);
      await native(raw.setWeight(layer, name, tensorArg(t, name)));
      done += t.data.byteLength;
      opts.onProgress?.(done, total);
    }
  }

  /** Copies a part of a layer's routed experts (loadWeights' onExperts) to the engine. */
  async setExperts(layer: number, part: ExpertPart): Promise<void> {
    const raw = this.#engine();
    const put = (name: string, t: Tensor | undefined) => (t ? native(raw.setWeight(layer, name, tensorArg(t, name), part.first, part.total)) : undefined);
    await put('experts_gate_up', part.gateUp);
    await put('experts_down', part.down);
    await put('experts_gate_up_scale', part.gateUpScale);
    await put('experts_down_scale', part.downScale);
  }

  /** Copies one layer's weights (as loadWeights arranges them) to the engine (not its experts when they were streamed). */
  async setLayer(layer: number, w: LayerWeights): Promise<void> {
    await this.#upload(layerWeights(layer, w));
  }

  /** Copies one of the embedding, final norm and lm_head to the engine. */
  async setGlobal(name: 'embed' | 'norm' | 'lm_head', t: Tensor): Promise<void> {
    await this.#upload([[-1, name, t]]);
  }

  /** Copies the embedding, final norm and lm_head to the engine. */
  async setGlobals(w: Pick<ModelWeights, 'embed' | 'norm' | 'lmHead'>): Promise<void> {
    await this.#upload([[-1, 'embed', w.embed], [-1, 'norm', w.norm], [-1, 'lm_head', w.lmHead]]);
  }

  /** Every weight random (seeded), made where the engine runs: nothing goes through the host. */
  async randomWeights(seed: number, dtype: 'bf16' | 'f32' = 'bf16'): Promise<void> {
    await native(this.#engine().randomWeights(seed, dtype));
  }

  async setRope(rope: RopeTable): Promise<void> {
    await native(this.#engine().setRope(tensorArg(rope.cos, 'cos'), tensorArg(rope.sin, 'sin')));
  }

  #engine(): RawEngine {
    if (!this.#raw) throw new Dsv2Error('E_DISPOSED', 'the model engine was disposed');
    return this.#raw;
  }

  /**
   * One forward step over several sequences: `prefill` (any number of new tokens per
   * sequence, attention over expanded K/V) or `decode` (the same number — at most 4 — per
   * sequence, absorbed attention on the latent cache). Returns the logits of each sequence's
   * last token (`last`, [b, vocab]) or of every token (`all`, [T, vocab]), and/or one sampled
   * token per sequence.
   */
  async step(seqs: readonly EngineSeq[], mode: 'prefill' | 'decode', logits: 'none' | 'last' | 'all',
    sampling?: EngineSampling): Promise<{ logits: Float32Array | null; tokens: Int32Array | null }> {
    const raw = this.#engine();
    const b = seqs.length;
    if (b === 0) throw new Dsv2Error('E_RANGE', 'a step needs at least one sequence');
    const page = this.#pageSize;
    const T = seqs.reduce((a, s) => a + s.tokens.length, 0);
    const maxBlocks = Math.max(1, ...seqs.map((s) => s.pages.length));
    const tokens = new Int32Array(T);
    const positions = new Int32Array(T);
    const slots = new Int32Array(T);
    const seqlens = new Int32Array(b);
    const cuQ = new Int32Array(b + 1);
    const blockTable = new Int32Array(b * maxBlocks);
    let r = 0;
    seqs.forEach((s, i) => {
      blockTable.set(s.pages, i * maxBlocks);
      for (let j = 0; j < s.tokens.length; j++, r++) {
        const t = s.tokens[j];
        if (!Number.isSafeInteger(t) || t < 0 || t >= this.#vocab) throw new Dsv2Error('E_RANGE', `sequence ${i}: token ${j} = ${t} is outside the vocabulary [0, ${this.#vocab})`);
        const pos = s.pos0 + j;
        const pg = s.pages[Math.floor(pos / page)];
        if (pg === undefined) throw new Dsv2Error('E_RANGE', `sequence ${i}: position ${pos} has no page (${s.pages.length} pages of ${page} tokens)`);
        tokens[r] = t;
        positions[r] = pos;
        slots[r] = pg * page + (pos % page);
      }
      seqlens[i] = s.pos0 + s.tokens.length;
      cuQ[i + 1] = r;
    });
    let sample;
    if (sampling) {
      if (sampling.seeds.length !== b) throw new Dsv2Error('E_ARG', `sampling.seeds has ${sampling.seeds.length} seeds for ${b} sequences`);
      sample = { temperature: sampling.temperature, topK: sampling.topK, topP: sampling.topP, seeds: BigUint64Array.from(sampling.seeds, (x) => BigInt(x) & U64) };
    }
    return native(raw.step({ tokens, positions, slots, seqlens, cuQ, blockTable, maxBlocks, decode: mode === 'decode', logits, sample }));
  }

  /**
   * Workspace bytes (activations + kernel scratch) an engine with these limits allocates on
   * `device`, without allocating anything (cuda needs a usable device: E_UNSUPPORTED otherwise).
   */
  static planWorkspace(c: DeepSeekConfig, device: 'cpu' | 'cuda', cache: { dtype: 'f32' | 'bf16' | 'fp8'; pageSize: number },
    limits: EngineLimits): number {
    try {
      return binding().planEngineMemory({ device, dims: engineDims(c), cache: { dC: c.kvLoraRank, dR: c.qkRopeHeadDim, ...cache }, ...limits });
    } catch (e) {
      throw fromNative(e);
    }
  }

  memory(): EngineMemory {
    return this.#engine().memory();
  }

  /** Times every op of the steps that follow (each between backend syncs: CUDA steps run uncaptured). */
  setProfiling(on: boolean): void {
    this.#engine().setProfiling(on);
  }

  /** Per-op totals since the last reset, in order of first use. */
  profile(reset = false): OpTime[] {
    return this.#engine().profile(reset);
  }

  get disposed(): boolean {
    return this.#raw === null;
  }

  /** Frees the engine's weights and workspace (in-flight steps finish first). */
  dispose(): void {
    this.#raw?.dispose();
    this.#raw = null;
  }
}

/** The engine's view of a config (native ModelDims). */
export function engineDims(c: DeepSeekConfig): Record<string, number | string | boolean | boolean[]> {
  return {
    vocab: c.vocabSize, hidden: c.hiddenSize, inter: c.intermediateSize, moeInter: c.moeIntermediateSize,
    layers: c.numLayers, heads: c.numHeads, qLora: c.qLoraRank ?? 0, dC: c.kvLoraRank, dNope: c.qkNopeHeadDim,
    dR: c.qkRopeHeadDim, dV: c.vHeadDim, nExperts: c.nRoutedExperts ?? 0, topK: c.numExpertsPerTok,
    nGroup: c.nGroup, topkGroup: c.topkGroup, interShared: c.nSharedExperts * c.moeIntermediateSize,
    topkMethod: c.topkMethod, scoring: c.scoringFunc, normTopkProb: c.normTopkProb,
    routedScalingFactor: c.routedScalingFactor, eps: c.rmsNormEps, softmaxScale: c.softmaxScale,
    moeLayers: Array.from({ length: c.numLayers }, (_, i) => isMoeLayer(c, i)),
  };
}

/** Every weight the engine takes: [layer (-1: global), name, tensor]. */
function engineWeights(w: ModelWeights): [number, string, Tensor][] {
  return [[-1, 'embed', w.embed], [-1, 'norm', w.norm], [-1, 'lm_head', w.lmHead], ...w.layers.flatMap((L, l) => layerWeights(l, L))];
}

function layerWeights(l: number, L: LayerWeights): [number, string, Tensor][] {
  const out: [number, string, Tensor][] = [];
  const add = (name: string, t: Tensor | null | undefined) => {
    if (t) out.push([l, name, t]);
  };
  add('input_norm', L.inputNorm);
  add('post_norm', L.postNorm);
  add('q_proj', L.qProj);
  add('q_a', L.qA);
  add('q_a_norm', L.qANorm);
  add('q_b', L.qB);
  add('kv_a', L.kvA);
  add('kv_a_norm', L.kvANorm);
  add('kv_b', L.kvB);
  if (L.wUkT.numel) add('w_uk_t', L.wUkT); // empty: the engine split kv_b itself
  if (L.wUv.numel) add('w_uv', L.wUv);
  add('o_proj', L.oProj);
  const m = L.mlp;
  if (m.kind === 'dense') {
    add('gate_up', m.gateUp);
    add('down', m.down);
  } else {
    add('gate', m.gate);
    add('bias', m.bias);
    if (!m.experts.streamed) {
      add('experts_gate_up', m.experts.gateUp);
      add('experts_down', m.experts.down);
      add('experts_gate_up_scale', m.experts.gateUpScale);
      add('experts_down_scale', m.experts.downScale);
    }
    add('shared_gate_up', m.shared?.gateUp);
    add('shared_down', m.shared?.down);
  }
  return out;
}
