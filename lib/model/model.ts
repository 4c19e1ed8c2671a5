/**
 * A loaded DeepSeek-V2/V3 checkpoint: weights, tokenizer, a paged latent KV cache, and the
 * forward pass — `logits()` and streaming `generate()`. All async; dispose() frees it all.
 */
import { info } from '../info';
import { abortError, Dsv2Error, throwIfAborted } from '../errors';
import { KvCache, type KvCacheDtype } from '../kv-cache';
import * as ops from '../ops';
import { Tensor } from '../tensor';
import { Checkpoint } from './checkpoint';
import type { DeepSeekConfig } from './config';
import { DecodeBatcher, type BatchStats } from './batcher';
import { NativeEngine, type EngineMemory, type OpTime } from './engine';
import { engineForward, forward, maxSequenceTokens, reserve, type AttentionMode, type ForwardContext, type SeqState } from './forward';
import { checkMessages, describe, Tokenizer, type ChatMessage } from './tokenizer';
import { PrefixCache, type PrefixCacheStats, type PrefixMatch } from './prefix-cache';
import { checkTensors, loadWeights } from './weights';

export type DeviceChoice = 'auto' | 'cpu' | 'cuda';

export interface ModelLoadOptions {
  /** Where to run: cpu, cuda, or auto (cuda when usable). Default auto. */
  device?: DeviceChoice;
  /** Tokens per engine step (longer prompts are prefilled in chunks); default min(2048, maxTokens). */
  maxStepTokens?: number;
  /**
   * Concurrent generations whose decode steps run as one batched engine step (continuous
   * batching); default 16. 1 runs every generation's steps alone.
   */
  maxBatch?: number;
  /**
   * Generations that may wait for KV pages at once (default 1024): past it, generate() rejects
   * with E_OVERLOADED. A generation waits (before its first token) until its prompt's pages
   * can be had, so none fails mid-stream for lack of pages; when running generations need
   * pages that are not there, the newest is preempted — its pages freed, its cache recomputed
   * from its tokens when pages return — and its output stays what it would be alone.
   */
  maxQueue?: number;
  /** KV cache storage; default bf16. */
  kvCache?: KvCacheDtype;
  /**
   * How the linear layers' weights are held: 'bf16' (default: as the checkpoint stores them),
   * or quantised once at load to 8 bits — 'int8' or 'fp8' (e4m3) codes with one f32 scale per
   * 128 × 128 block (half the bytes of bf16, so batch-1 decode streams half as much). Every
   * linear layer is quantised (attention projections, dense MLP, routed and shared experts,
   * lm_head) except kv_b and its absorbed halves and the router; the embedding stays too.
   * Weights already stored in FP8 (DeepSeek-V3's routed experts) keep their own codes.
   * CPU engine only for now: device 'auto' then picks the CPU; E_UNSUPPORTED with device 'cuda'.
   */
  weights?: WeightFormat;
  /**
   * Automatic prefix caching (default true): generate() keeps the full KV pages of finished
   * sequences, keyed by their tokens, and a later prompt that starts with the same tokens
   * prefills only what is new (bit-identical results); pages are evicted LRU when needed.
   */
  prefixCache?: boolean;
  /** Cache capacity in tokens, over all sequences at once; default 4096 (at most max_position_embeddings per sequence). */
  maxTokens?: number;
  signal?: AbortSignal;
  /** Progress of reading weights: bytes done, bytes total. */
  onProgress?: (done: number, total: number) => void;
}

/** `ModelLoadOptions.weights`. */
export type WeightFormat = 'bf16' | 'int8' | 'fp8';

export interface GenerateOptions {
  /** Plain text prompt (BOS added as the tokenizer config says). */
  prompt?: string;
  /** Chat messages, rendered with the checkpoint's chat template. */
  messages?: ChatMessage[];
  /** Prompt token ids. */
  tokens?: readonly number[];
  /** Default 128. */
  maxNewTokens?: number;
  /** 0 (default) is greedy. */
  temperature?: number;
  topK?: number;
  topP?: number;
  /** Seed of the sampling draws; default 0. */
  seed?: number | bigint;
  /** Stop when the text contains one of these (the stop string is not returned). */
  stop?: string[];
  /** Stop (finishReason 'stop') when one of these tokens is sampled (it is not returned, like EOS). */
  stopTokenIds?: number[];
  /** Keep generating past EOS (the EOS token is then an ordinary token of the output). */
  ignoreEos?: boolean;
  /**
   * Repetition penalty (HF / vLLM): a token already in the prompt or the output has its logit
   * divided by it when positive, multiplied when negative; 1 (default) is off; > 0.
   */
  repetitionPenalty?: number;
  /** OpenAI's presence penalty in [-2, 2]: subtracted once from the logit of every token the output holds. */
  presencePenalty?: number;
  /** OpenAI's frequency penalty in [-2, 2]: subtracted from a token's logit once per time the output holds it. */
  frequencyPenalty?: number;
  /** Min-p in [0, 1]: drop tokens whose probability (at the temperature) is below minP × the top one's; 0 is off. */
  minP?: number;
  /** Added to the logits of these token ids, each in [-100, 100] (OpenAI's logit_bias). */
  logitBias?: Record<number, number>;
  /**
   * Log-probabilities: each chunk carries the chosen token's `logprob` and, when > 0, the
   * `topLogprobs` of that many most likely tokens (at most 20) — of the model's distribution
   * (log-softmax of the raw logits, before penalties, bias and temperature).
   */
  logprobs?: number;
  signal?: AbortSignal;
}

export interface GenerateChunk {
  /**
   * The new token id; null only for a last, text-only chunk that flushes text held back
   * while a multi-byte character was incomplete (when generation ends at EOS).
   */
  token: number | null;
  /** Text this token completes (may be empty while a multi-byte character is incomplete). The chunks' texts join to the result's text. */
  text: string;
  /** With the `logprobs` option: log p(token) under the model (null only for a text-only chunk). */
  logprob?: number;
  /** With `logprobs: k > 0`: the k most likely tokens and their log-probabilities, best first. */
  topLogprobs?: { token: number; logprob: number }[];
}

export interface GenerateResult {
  /** New token ids (prompt excluded). */
  tokens: number[];
  text: string;
  /** Why generation stopped. */
  finishReason: 'eos' | 'length' | 'stop';
  promptTokens: number;
}

/** A running generation: iterate it for chunks; `result` resolves to the whole answer. */
export interface Generation extends AsyncIterable<GenerateChunk> {
  readonly result: Promise<GenerateResult>;
}

const U64 = (1n << 64n) - 1n;

/** Length of the longest tail of `text` that is a proper prefix of one of `stops`. */
function stopPrefixTail(text: string, stops: readonly string[]): number {
  let best = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > best; n--) {
      if (text.endsWith(s.slice(0, n))) {
        best = n;
        break;
      }
    }
  }
  return best;
}

/**
 * The logits a generation samples from when it has bias or penalties (vLLM's order): + logit
 * bias; the repetition penalty over prompt + output tokens (÷ p when > 0, × p when < 0);
 * − presence · [count > 0] − frequency · count over the output; then min-p at the temperature:
 * tokens with p < minP · p_max (l < l_max + T·ln minP) get −∞. A fresh f32 copy.
 */
function processLogits(row: Float32Array, g: CheckedOptions, seen: ReadonlySet<number>, counts: ReadonlyMap<number, number>): Float32Array {
  const out = Float32Array.from(row);
  for (const [id, b] of g.logitBias) out[id] += b;
  if (g.repetitionPenalty !== 1) {
    for (const id of seen) out[id] = out[id] > 0 ? out[id] / g.repetitionPenalty : out[id] * g.repetitionPenalty;
  }
  if (g.presencePenalty !== 0 || g.frequencyPenalty !== 0) {
    for (const [id, c] of counts) out[id] -= g.presencePenalty + g.frequencyPenalty * c;
  }
  if (g.minP > 0 && g.temperature > 0) {
    let max = -Infinity;
    for (let i = 0; i < out.length; i++) if (out[i] > max) max = out[i];
    const cut = max + g.temperature * Math.log(g.minP);
    for (let i = 0; i < out.length; i++) if (out[i] < cut) out[i] = -Infinity;
  }
  return out;
}

/** log-softmax(row)[token] and the k best (log-probability, then lower id first), in float64. */
function logprobsOf(row: Float32Array, token: number, k: number): { logprob: number; topLogprobs?: { token: number; logprob: number }[] } {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i] > max) max = row[i];
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - max);
  const lse = max + Math.log(sum);
  if (k === 0) return { logprob: row[token] - lse };
  const best: number[] = [];
  for (let i = 0; i < row.length; i++) {
    if (best.length === k && row[i] <= row[best[k - 1]]) continue;
    let j = best.length === k ? k - 1 : best.length;
    if (best.length < k) best.push(i);
    while (j > 0 && row[best[j - 1]] < row[i]) {
      best[j] = best[j - 1];
      j--;
    }
    best[j] = i;
  }
  return { logprob: row[token] - lse, topLogprobs: best.map((id) => ({ token: id, logprob: row[id] - lse })) };
}

/** A generation holding (or waiting for) KV pages. */
interface RunState {
  seq: SeqState;
  /** Its pinned prefix-cache pages. */
  match: PrefixMatch | null;
  /** Asked to yield its pages (preempted) at its next step. */
  preempt: boolean;
}

interface CheckedOptions {
  prompt?: string;
  messages?: ChatMessage[];
  tokens?: readonly number[];
  maxNewTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  seed: bigint;
  stop: string[];
  stopTokenIds: number[];
  ignoreEos: boolean;
  repetitionPenalty: number;
  presencePenalty: number;
  frequencyPenalty: number;
  minP: number;
  logitBias: [number, number][];
  logprobs: number | null;
  signal?: AbortSignal;
}

/** generate()'s options, checked (E_ARG for a wrong type, E_RANGE for a value out of range), with defaults. */
function checkGenerateOptions(opts: unknown, vocab: number): CheckedOptions {
  if (typeof opts !== 'object' || opts === null || Array.isArray(opts)) {
    throw new Dsv2Error('E_ARG', `generate needs an options object {prompt | messages | tokens, ...}, got ${describe(opts)}`);
  }
  const o = opts as Record<string, unknown>;
  const given = (['prompt', 'messages', 'tokens'] as const).filter((k) => o[k] !== undefined);
  if (given.length !== 1) {
    throw new Dsv2Error('E_ARG', given.length === 0 ? 'generate needs one of prompt, messages or tokens' : `generate takes one of prompt, messages or tokens, got ${given.join(' and ')}`);
  }
  if (o.prompt !== undefined && typeof o.prompt !== 'string') throw new Dsv2Error('E_ARG', `prompt must be a string, got ${describe(o.prompt)}`);
  if (o.messages !== undefined) checkMessages(o.messages);
  if (o.tokens !== undefined && !Array.isArray(o.tokens) && !(o.tokens instanceof Int32Array)) {
    throw new Dsv2Error('E_ARG', `tokens must be an array of token ids, got ${describe(o.tokens)}`);
  }
  const int = (key: string, dflt: number, min: number): number => {
    const v = o[key] ?? dflt;
    if (typeof v !== 'number') throw new Dsv2Error('E_ARG', `${key} must be a number, got ${describe(v)}`);
    if (!Number.isSafeInteger(v) || v < min) throw new Dsv2Error('E_RANGE', `${key} = ${v} must be an integer >= ${min}`);
    return v;
  };
  const real = (key: string, dflt: number, ok: (x: number) => boolean, range: string): number => {
    const v = o[key] ?? dflt;
    if (typeof v !== 'number') throw new Dsv2Error('E_ARG', `${key} must be a number, got ${describe(v)}`);
    if (!ok(v)) throw new Dsv2Error('E_RANGE', `${key} = ${v} must be ${range}`);
    return v;
  };
  let seed: bigint;
  const sv = o.seed ?? 0;
  if (typeof sv === 'bigint') seed = sv;
  else if (typeof sv === 'number') {
    if (!Number.isSafeInteger(sv)) throw new Dsv2Error('E_RANGE', `seed = ${sv} must be an integer (a safe integer, or a bigint)`);
    seed = BigInt(sv);
  } else throw new Dsv2Error('E_ARG', `seed must be an integer or a bigint, got ${describe(sv)}`);
  if (seed < 0n || seed > U64) throw new Dsv2Error('E_RANGE', `seed = ${seed} must be in [0, 2^64)`);
  const stop = o.stop ?? [];
  if (!Array.isArray(stop) || !stop.every((s) => typeof s === 'string')) {
    throw new Dsv2Error('E_ARG', `stop must be an array of strings, got ${describe(stop)}${typeof stop === 'string' ? ` (write [${JSON.stringify(stop)}])` : ''}`);
  }
  const signal = o.signal;
  if (signal !== undefined && !(signal instanceof AbortSignal)) throw new Dsv2Error('E_ARG', `signal must be an AbortSignal, got ${describe(signal)}`);
  const stopTokenIds = o.stopTokenIds ?? [];
  if (!Array.isArray(stopTokenIds) || !stopTokenIds.every((t) => Number.isSafeInteger(t) && t >= 0 && t < vocab)) {
    throw new Dsv2Error('E_ARG', `stopTokenIds must be an array of token ids in [0, ${vocab}), got ${describe(stopTokenIds)}`);
  }
  if (o.ignoreEos !== undefined && typeof o.ignoreEos !== 'boolean') throw new Dsv2Error('E_ARG', `ignoreEos must be true or false, got ${describe(o.ignoreEos)}`);
  const bias: [number, number][] = [];
  if (o.logitBias !== undefined) {
    if (typeof o.logitBias !== 'object' || o.logitBias === null || Array.isArray(o.logitBias)) {
      throw new Dsv2Error('E_ARG', `logitBias must be an object {tokenId: bias}, got ${describe(o.logitBias)}`);
    }
    for (const [k, v] of Object.entries(o.logitBias as Record<string, unknown>)) {
      const id = Number(k);
      if (!/^\d+$/.test(k) || id >= vocab) throw new Dsv2Error('E_RANGE', `logitBias key ${JSON.stringify(k)} must be a token id in [0, ${vocab})`);
      if (typeof v !== 'number' || !(v >= -100 && v <= 100)) throw new Dsv2Error('E_RANGE', `logitBias[${k}] = ${describe(v)} must be a number in [-100, 100]`);
      bias.push([id, v]);
    }
  }
  let logprobs: number | null = null;
  if (o.logprobs !== undefined) logprobs = int('logprobs', 0, 0);
  if (logprobs !== null && logprobs > 20) throw new Dsv2Error('E_RANGE', `logprobs = ${logprobs} must be at most 20`);
  return {
    stopTokenIds,
    ignoreEos: o.ignoreEos === true,
    repetitionPenalty: real('repetitionPenalty', 1, (x) => Number.isFinite(x) && x > 0, 'finite and > 0'),
    presencePenalty: real('presencePenalty', 0, (x) => x >= -2 && x <= 2, 'in [-2, 2]'),
    frequencyPenalty: real('frequencyPenalty', 0, (x) => x >= -2 && x <= 2, 'in [-2, 2]'),
    minP: real('minP', 0, (x) => x >= 0 && x <= 1, 'in [0, 1]'),
    logitBias: bias,
    logprobs,
    prompt: o.prompt as string | undefined,
    messages: o.messages as ChatMessage[] | undefined,
    tokens: o.tokens as readonly number[] | undefined,
    maxNewTokens: int('maxNewTokens', 128, 0),
    temperature: real('temperature', 0, (x) => Number.isFinite(x) && x >= 0, 'finite and >= 0'),
    topK: int('topK', 0, 0),
    topP: real('topP', 1, (x) => x > 0 && x <= 1, 'in (0, 1]'),
    seed,
    stop: stop.filter((s: string) => s.length > 0),
    signal,
  };
}

export class Model {
  readonly dir: string;
  readonly config: DeepSeekConfig;
  readonly tokenizer: Tokenizer | null;
  readonly device: 'cpu' | 'cuda';
  /** Checkpoint tensors the config does not use (reported, not loaded). */
  readonly extraTensors: readonly string[];
  #ctx: ForwardContext | null;
  #batcher: DecodeBatcher | null;
  /** Generations holding pages, oldest first (the newest is preempted first). */
  readonly #running: RunState[] = [];
  /** Wake-ups of generations waiting for pages (admission, or a page to grow into). */
  #waiters: (() => void)[] = [];
  /** Running generations waiting for pages a preempted one frees. */
  #starved = 0;
  /** New generations waiting to be admitted (bounded by maxQueue). */
  #queued = 0;
  readonly #maxQueue: number;
  #admissions = 0;
  readonly #sched = { preemptions: 0, queuedPeak: 0 };

  private constructor(dir: string, ctx: ForwardContext, tokenizer: Tokenizer | null, extras: string[], maxQueue: number) {
    this.#maxQueue = maxQueue;
    this.dir = dir;
    this.config = ctx.config;
    this.tokenizer = tokenizer;
    this.device = ctx.engine.device;
    this.extraTensors = extras;
    this.#ctx = ctx;
    this.#batcher = new DecodeBatcher(ctx.engine);
  }

  static async load(dir: string, opts: ModelLoadOptions = {}): Promise<Model> {
    const choice = opts.device ?? 'auto';
    if (!['auto', 'cpu', 'cuda'].includes(choice)) throw new Dsv2Error('E_ARG', `device '${String(choice)}' must be auto, cpu or cuda`);
    // The TypeScript forward (engine: 'js') was retired: the native engine runs every model.
    const legacy = (opts as { engine?: unknown }).engine;
    if (legacy !== undefined && legacy !== 'native') {
      throw new Dsv2Error('E_ARG', `engine '${String(legacy)}': the TypeScript forward was retired; the native engine runs every model (omit the option)`);
    }
    let device: 'cpu' | 'cuda' = 'cpu';
    if (choice === 'cuda' || choice === 'auto') {
      const i = await info();
      if (i.cuda.usable) device = 'cuda';
      else if (choice === 'cuda') throw new Dsv2Error('E_UNSUPPORTED', `device 'cuda': CUDA is not usable here (${i.cuda.reason}); use --device cpu`);
    }
    const format = opts.weights ?? 'bf16';
    if (!['bf16', 'int8', 'fp8'].includes(format)) throw new Dsv2Error('E_ARG', `weights '${String(format)}' must be bf16, int8 or fp8`);
    const maxTokens = opts.maxTokens ?? 4096;
    if (!Number.isSafeInteger(maxTokens) || maxTokens < 1) throw new Dsv2Error('E_RANGE', `maxTokens = ${maxTokens} must be a positive integer`);
    if (opts.maxStepTokens !== undefined && (!Number.isSafeInteger(opts.maxStepTokens) || opts.maxStepTokens < 1)) {
      throw new Dsv2Error('E_RANGE', `maxStepTokens = ${opts.maxStepTokens} must be a positive integer`);
    }
    const maxQueue = opts.maxQueue ?? 1024;
    if (!Number.isSafeInteger(maxQueue) || maxQueue < 0) throw new Dsv2Error('E_RANGE', `maxQueue = ${maxQueue} must be a non-negative integer`);
    const maxBatch = opts.maxBatch ?? 16;
    if (!Number.isSafeInteger(maxBatch) || maxBatch < 1 || maxBatch > 4096) throw new Dsv2Error('E_RANGE', `maxBatch = ${maxBatch} must be an integer in [1, 4096]`);
    const ck = await Checkpoint.open(dir);
    const c = ck.config;
    const pageSize = 64;
    let cache: KvCache | null = null;
    let engine: NativeEngine | null = null;
    let extras: string[];
    let rope: ops.RopeTable;
    try {
      extras = checkTensors(ck).extras;
      cache = await KvCache.create({
        layers: c.numLayers, pages: Math.ceil(maxTokens / pageSize), dC: c.kvLoraRank, dR: c.qkRopeHeadDim,
        dtype: opts.kvCache ?? 'bf16', pageSize, device,
      });
      rope = await ops.ropeTable({ dim: c.rope.dim, maxPositions: Math.min(maxTokens, c.maxPositionEmbeddings), theta: c.rope.theta, yarn: c.rope.yarn });
      // The engine keeps its own copy of the weights (in GPU memory for cuda): each layer is
      // copied there as soon as it is read and not kept on the host.
      const maxSeqlen = Math.min(rope.cos.shape[0], cache.pages * pageSize);
      const maxStep = Math.min(opts.maxStepTokens ?? 2048, maxSeqlen);
      engine = NativeEngine.open(c, cache, device, { maxTokens: Math.max(maxStep, maxBatch), maxSeqs: maxBatch, maxSeqlen }, { weights: format });
      const e = engine;
      await loadWeights(ck, {
        signal: opts.signal, onProgress: opts.onProgress, onLayer: (l, L) => e.setLayer(l, L), onExperts: (l, part) => e.setExperts(l, part),
        splitKvB: false, onGlobal: (name, t) => e.setGlobal(name, t),
      });
      await e.setRope(rope);
    } catch (e) {
      engine?.dispose();
      cache?.dispose();
      throw e;
    } finally {
      await ck.close();
    }
    const tokenizer = (() => {
      try {
        return Tokenizer.load(dir);
      } catch (e) {
        if (e instanceof Dsv2Error && /tokenizer\.json is missing/.test(e.message)) return null;
        engine?.dispose();
        cache.dispose();
        throw e;
      }
    })();
    const ctx: ForwardContext = { config: c, cache, rope, engine };
    if (opts.prefixCache ?? true) ctx.prefix = new PrefixCache(cache);
    return new Model(dir, ctx, tokenizer, extras, maxQueue);
  }

  /** Decode steps the engine ran for generate() and the tokens they produced (tokens / steps: the mean batch). */
  batchStats(): BatchStats {
    this.#context();
    return { ...(this.#batcher?.stats ?? { steps: 0, tokens: 0 }) };
  }

  /** The prefix cache's pages and hit rate (null when loaded with prefixCache: false). */
  prefixCacheStats(): PrefixCacheStats | null {
    return this.#context().prefix?.stats() ?? null;
  }

  /** Frees every cached prefix page no running generation uses. */
  clearPrefixCache(): void {
    this.#context().prefix?.clear();
  }

  /** Bytes the loaded model holds where it runs (the native engine's accounting). */
  memory(): EngineMemory {
    return this.#context().engine.memory();
  }

  /**
   * Starts timing every op of the native engine's steps (resetting earlier totals); stopProfile()
   * returns them. Each op runs between backend syncs, so on CUDA decode steps run without
   * graphs while profiling: for finding where time goes, not for headline speed.
   */
  startProfile(): void {
    const e = this.#context().engine;
    e.profile(true);
    e.setProfiling(true);
  }

  /** Stops profiling; the per-op totals since startProfile(), `step` first (whole steps). */
  stopProfile(): OpTime[] {
    const e = this.#context().engine;
    e.setProfiling(false);
    return e.profile(true);
  }

  #context(): ForwardContext {
    if (!this.#ctx) throw new Dsv2Error('E_DISPOSED', `model ${this.dir} was disposed`);
    return this.#ctx;
  }

  /** The KV cache (for memory accounting: pagesFree, bytes, bytesPerToken). */
  get cache(): KvCache {
    return this.#context().cache;
  }

  #checkTokens(tokens: readonly number[] | Int32Array, what: string): Int32Array {
    const v = this.config.vocabSize;
    // Check the numbers as given: Int32Array.from would wrap ids outside ±2^31 silently.
    for (let i = 0; i < tokens.length; i++) {
      const t = tokens[i];
      if (!Number.isSafeInteger(t) || t < 0 || t >= v) throw new Dsv2Error('E_RANGE', `${what}[${i}] = ${t} is outside the vocabulary [0, ${v})`);
    }
    return Int32Array.from(tokens as ArrayLike<number>);
  }

  /**
   * Logits for every position: f32 [T, vocab]. `prefill` runs all tokens in one pass;
   * `decode` prefills the first token and feeds every later one alone through the cache.
   */
  async logits(tokens: readonly number[] | Int32Array, opts: { mode?: AttentionMode } = {}): Promise<Tensor> {
    const ctx = this.#context();
    const ids = this.#checkTokens(tokens, 'tokens');
    if (ids.length === 0) return Tensor.zeros([0, this.config.vocabSize]);
    const seq: SeqState = { pages: [], length: 0 };
    try {
      reserve(ctx, seq, ids.length);
      if ((opts.mode ?? 'prefill') === 'prefill') return await forward(ctx, seq, ids, 'prefill');
      const V = this.config.vocabSize;
      const out = new Float32Array(ids.length * V);
      for (let i = 0; i < ids.length; i++) {
        const l = await forward(ctx, seq, ids.subarray(i, i + 1), i === 0 ? 'prefill' : 'decode');
        out.set(l.data as Float32Array, i * V);
      }
      return new Tensor('f32', [ids.length, V], out);
    } finally {
      if (seq.pages.length) ctx.cache.freePages(seq.pages);
    }
  }

  /**
   * Starts generating. Iterate the Generation for chunks as tokens arrive (once), and/or
   * await `.result` for the whole answer (awaiting it alone runs the generation to the end).
   * Leaving the loop early (break) ends the generation and frees its cache pages; `.result`
   * then rejects with E_ABORTED. A Generation must be finished one of these ways (iterated to
   * the end, left with break/return, aborted, or its `.result` awaited): one abandoned half-way
   * holds its cache pages.
   */
  generate(opts: GenerateOptions): Generation {
    const it = this.#run(opts);
    let claimed = false;
    let resolveFinal!: (r: GenerateResult) => void;
    let rejectFinal!: (e: unknown) => void;
    const final = new Promise<GenerateResult>((res, rej) => { resolveFinal = res; rejectFinal = rej; });
    final.catch(() => {}); // a rejection nobody awaits is not an unhandled one
    const stepper: AsyncIterator<GenerateChunk, GenerateResult> = {
      next: async () => {
        try {
          const r = await it.next();
          if (r.done) resolveFinal(r.value);
          return r;
        } catch (e) {
          rejectFinal(e);
          throw e;
        }
      },
      return: async (v?: GenerateResult | PromiseLike<GenerateResult>) => {
        rejectFinal(new Dsv2Error('E_ABORTED', 'the generation was left before it finished'));
        return it.return(v as GenerateResult);
      },
    };
    const claim = () => {
      if (claimed) throw new Dsv2Error('E_ARG', 'a Generation can be iterated once');
      claimed = true;
    };
    return {
      [Symbol.asyncIterator]: () => {
        claim();
        return stepper;
      },
      get result() {
        if (!claimed) {
          claimed = true;
          void (async () => {
            try {
              while (!(await stepper.next()).done);
            } catch {
              // already delivered through `final`
            }
          })();
        }
        return final;
      },
    };
  }

  async *#run(opts: GenerateOptions): AsyncGenerator<GenerateChunk, GenerateResult> {
    const ctx = this.#context();
    const tok = this.tokenizer;
    const g = checkGenerateOptions(opts, this.config.vocabSize);
    let prompt: readonly number[];
    if (g.tokens) prompt = g.tokens;
    else if (g.messages) {
      if (!tok) throw new Dsv2Error('E_CHECKPOINT', `${this.dir}: tokenizer.json is missing (needed for messages)`);
      prompt = tok.encodeChat(g.messages);
    } else {
      if (!tok) throw new Dsv2Error('E_CHECKPOINT', `${this.dir}: tokenizer.json is missing (needed for a text prompt)`);
      prompt = tok.encode(g.prompt!);
    }
    const ids = this.#checkTokens(prompt, 'tokens');
    if (ids.length === 0) throw new Dsv2Error('E_RANGE', 'the prompt has no tokens');
    const eos = new Set<number>();
    const e = this.config.eosTokenId;
    if (typeof e === 'number') eos.add(e);
    else if (Array.isArray(e)) e.forEach((x) => eos.add(x));
    if (tok?.eosId !== null && tok?.eosId !== undefined) eos.add(tok.eosId);
    const stops = g.stop;
    const maxStop = stops.reduce((a, s) => Math.max(a, s.length), 0);
    const st: RunState = { seq: { pages: [], length: 0 }, match: null, preempt: false };
    const out: number[] = [];
    // Text is decoded incrementally (O(1) per token): `text` is what the stream has completed,
    // text[0, emitted) what the chunks have carried.
    const stream = tok?.stream() ?? null;
    let text = '';
    let emitted = 0;
    let stopHit = false;
    /** Appends a decoded piece, cuts at the first stop string; returns the text ready to emit. */
    const feed = (piece: string, final: boolean): string => {
      const from = Math.max(0, text.length - maxStop + 1);
      text += piece;
      let at = -1;
      for (const s of stops) {
        const k = text.indexOf(s, from);
        if (k >= 0 && (at < 0 || k < at)) at = k;
      }
      if (at >= 0) {
        text = text.slice(0, at);
        stopHit = true;
      }
      // Hold back any tail that could be the start of a stop string, so no chunk ever carries
      // text the result will not contain (unless the text is final).
      const ready = stopHit || final ? text.length : text.length - stopPrefixTail(text, stops);
      const chunk = ready > emitted ? text.slice(emitted, ready) : '';
      emitted = Math.max(emitted, ready);
      return chunk;
    };
    let finish: GenerateResult['finishReason'] = 'length';
    const what = 'the generation';
    let admitted = false;
    try {
      throwIfAborted(g.signal, what);
      // Waits (bounded) until the prompt's pages can be had.
      await this.#admit(st, ids, ids.length, g.signal, true);
      admitted = true;
      const sampling = { temperature: g.temperature, topK: g.topK, topP: g.topP };
      // Penalties, bias, min-p and logprobs need the logits row on the host: such a generation
      // runs its steps alone (not in the batcher) and samples with ops.sample — the same draw
      // for the same seed as the engine's sampler.
      const hostLogits = g.logprobs !== null || g.repetitionPenalty !== 1 || g.presencePenalty !== 0 ||
        g.frequencyPenalty !== 0 || g.minP > 0 || g.logitBias.length > 0;
      const seen = new Set<number>(ids); // prompt + output: the repetition penalty's set
      const counts = new Map<number, number>(); // output only: presence / frequency
      const stopIds = new Set(g.stopTokenIds);
      type Next = { token: number; logprob?: number; topLogprobs?: { token: number; logprob: number }[] };
      // The next token: on the engine's device (only the token comes back), or from the last
      // row's logits with ops.sample — the same draw for the same seed.
      const nextToken = async (input: Int32Array, mode: AttentionMode, stepSeed: bigint): Promise<Next> => {
        if (hostLogits) {
          const row = (await engineForward(ctx.engine, ctx.config, st.seq, input, mode, 'last', g.signal)).logits!.data as Float32Array;
          const proc = processLogits(row, g, seen, counts);
          const token = (await ops.sample(Tensor.from(proc, [1, row.length]), { ...sampling, seed: stepSeed })).data[0] as number;
          return g.logprobs === null ? { token } : { token, ...logprobsOf(row, token, g.logprobs) };
        }
        if (this.#batcher && mode === 'decode' && input.length === 1) {
          return { token: await this.#batcher.next({ seq: st.seq, token: input[0], sampling, seed: stepSeed }) };
        }
        const r = await engineForward(ctx.engine, ctx.config, st.seq, input, mode, 'none', g.signal, { ...sampling, seeds: [stepSeed] });
        return { token: r.token! };
      };
      const seedOf = (step: number) => (g.seed + BigInt(step) * 0x9e3779b97f4a7c15n) & U64;
      let n = await nextToken(ids.subarray(st.seq.length), 'prefill', seedOf(0));
      /**
       * After a preemption: the cache rebuilt exactly as it was — the prompt prefilled (over any
       * cached prefix), then every fed output token decoded one at a time, as they were
       * (decode rows are computed alone, batched or not) — so the output continues unchanged.
       */
      const recompute = async (): Promise<void> => {
        const feedOnly = (input: Int32Array, mode: AttentionMode) => engineForward(ctx.engine, ctx.config, st.seq, input, mode, 'none', g.signal);
        await feedOnly(ids.subarray(st.seq.length), 'prefill');
        for (let i = 0; i + 1 < out.length; i++) await feedOnly(Int32Array.of(out[i]), 'decode');
      };
      for (let step = 0; step < g.maxNewTokens; step++) {
        throwIfAborted(g.signal, what);
        const next = n.token;
        if (eos.has(next) && !g.ignoreEos) {
          finish = 'eos';
          break;
        }
        if (stopIds.has(next)) {
          finish = 'stop'; // text held back is flushed below, as at EOS
          break;
        }
        out.push(next);
        seen.add(next);
        counts.set(next, (counts.get(next) ?? 0) + 1);
        const final = step + 1 === g.maxNewTokens || st.seq.length + 1 > maxSequenceTokens(ctx);
        const piece = stream ? stream.push(next) + (final ? stream.flush() : '') : '';
        const chunk: GenerateChunk = { token: next, text: feed(piece, final) };
        if (n.logprob !== undefined) chunk.logprob = n.logprob;
        if (n.topLogprobs) chunk.topLogprobs = n.topLogprobs;
        yield chunk;
        if (stopHit) {
          finish = 'stop';
          break;
        }
        if (final) break; // maxNewTokens reached, or the context is full: finish with 'length'
        await this.#grow(st, ids, out, g.signal, recompute);
        n = await nextToken(Int32Array.of(next), 'decode', seedOf(step + 1));
      }
      if (!stopHit && stream) {
        // Text held back at EOS (an incomplete character, a possible stop-string start).
        const tail = feed(stream.flush(), true);
        if (tail.length) yield { token: null, text: tail };
      }
      return { tokens: out, text, finishReason: finish, promptTokens: ids.length };
    } finally {
      if (admitted || st.seq.pages.length) this.#release(st, ids);
    }
  }

  /**
   * Gives a generation's pages back: the full pages of its prompt to the prefix cache, the rest
   * to the pool. Only the prompt's: a token's latent written by a decode step (M = 1 GEMMs) can
   * differ in the last bits from the same token prefilled, and a later prompt that reused it
   * would not be bit-identical to a model without the cache. (A chat's next turn still reuses
   * the earlier turns: its prompt, answers included, was prefilled.)
   */
  #release(st: RunState, ids: Int32Array): void {
    const at = this.#running.indexOf(st);
    if (at >= 0) this.#running.splice(at, 1);
    const ctx = this.#ctx;
    if (ctx) {
      const free = ctx.prefix ? ctx.prefix.finish(ids, st.seq.pages, Math.min(st.seq.length, ids.length), st.match) : st.seq.pages;
      if (free.length) ctx.cache.freePages(free);
    }
    st.seq = { pages: [], length: 0 };
    st.match = null;
    this.#wake();
  }

  /** Wakes every waiting generation to try again (pages were freed, or a preemption was asked). */
  #wake(): void {
    const w = this.#waiters;
    this.#waiters = [];
    for (const f of w) f();
  }

  #wait(signal: AbortSignal | undefined): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      const onAbort = () => {
        this.#waiters = this.#waiters.filter((f) => f !== done);
        reject(abortError(signal!, 'the generation (waiting for KV cache pages)'));
      };
      const done = () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      };
      if (signal?.aborted) return onAbort();
      signal?.addEventListener('abort', onAbort, { once: true });
      this.#waiters.push(done);
    });
  }

  /**
   * Admits a generation: pages for its first `tokens` tokens of `ids` (the longest cached
   * prefix reused, at least one token left to compute), waiting while they cannot be had. New
   * generations (`fresh`) wait in a queue bounded by maxQueue (E_OVERLOADED past it); they
   * never preempt running ones.
   */
  async #admit(st: RunState, ids: Int32Array, tokens: number, signal: AbortSignal | undefined, fresh: boolean): Promise<void> {
    const ctx = this.#context();
    let queued = false;
    try {
      for (;;) {
        while (this.#starved > 0 && this.#ctx) await this.#wait(signal); // a running generation waits for freed pages: it goes first
        this.#context(); // E_DISPOSED once the model is gone
        const m = ctx.prefix?.match(ids, Math.min(tokens, ids.length) - 1) ?? null;
        const seq: SeqState = { pages: m ? [...m.pages] : [], length: m?.tokens ?? 0 };
        try {
          reserve(ctx, seq, tokens - seq.length);
          st.seq = seq;
          st.match = m;
          st.preempt = false;
          this.#running.push(st);
          this.#admissions++;
          return;
        } catch (e) {
          if (m) ctx.prefix!.release(m);
          if (seq.pages.length > (m?.pages.length ?? 0)) ctx.cache.freePages(seq.pages.slice(m?.pages.length ?? 0));
          if (!(e instanceof Dsv2Error) || e.code !== 'E_OOM') throw e;
        }
        if (fresh && !queued) {
          if (this.#queued >= this.#maxQueue) {
            throw new Dsv2Error('E_OVERLOADED', `overloaded: ${this.#queued} generations already wait for KV cache pages (maxQueue ${this.#maxQueue})`);
          }
          queued = true;
          this.#queued++;
          this.#sched.queuedPeak = Math.max(this.#sched.queuedPeak, this.#queued);
        }
        await this.#wait(signal);
      }
    } finally {
      if (queued) this.#queued--;
    }
  }

  /**
   * Room for the next token of a running generation. When the cache has no page for it, the
   * newest running generation is asked to yield its pages (preempted) — this one itself when
   * it is the newest — and this one waits; a preempted one frees its pages here, waits to be
   * admitted again and rebuilds its cache (`recompute`).
   */
  async #grow(st: RunState, ids: Int32Array, out: readonly number[], signal: AbortSignal | undefined, recompute: () => Promise<void>): Promise<void> {
    const ctx = this.#context();
    // While this generation waits for a page a victim frees, admissions wait (#starved): the
    // freed pages are its, not the next comer's (nor the victim's own re-admission's).
    let starving = false;
    const fed = () => {
      if (starving) {
        starving = false;
        this.#starved--;
        this.#wake();
      }
    };
    try {
      for (;;) {
        if (st.preempt) {
          fed();
          this.#sched.preemptions++;
          this.#release(st, ids);
          // Pages for the prompt and every fed output token (all but the last, not yet fed);
          // the prompt's may come from the prefix cache.
          await this.#admit(st, ids, ids.length + out.length - 1, signal, false);
          await recompute();
          continue;
        }
        try {
          reserve(ctx, st.seq, 1);
          return;
        } catch (e) {
          if (!(e instanceof Dsv2Error) || e.code !== 'E_OOM') throw e;
        }
        const newer = this.#running.slice(this.#running.indexOf(st) + 1).filter((r) => !r.preempt);
        if (newer.length === 0) {
          st.preempt = true; // the newest: it yields itself
          continue;
        }
        if (!starving) {
          starving = true;
          this.#starved++;
        }
        newer[newer.length - 1].preempt = true;
        this.#wake(); // a victim waiting for pages sees its flag
        await this.#wait(signal);
      }
    } finally {
      fed();
    }
  }

  /** Scheduler counters: generations admitted, waiting now (and the peak), preemptions, running now. */
  schedulerStats(): { admitted: number; waiting: number; waitingPeak: number; preemptions: number; running: number } {
    return { admitted: this.#admissions, waiting: this.#queued, waitingPeak: this.#sched.queuedPeak, preemptions: this.#sched.preemptions, running: this.#running.length };
  }

  /** Frees the weights' references, the engine and the KV cache. */
  async dispose(): Promise<void> {
    this.#ctx?.engine?.dispose();
    this.#ctx?.cache.dispose();
    this.#ctx = null;
    this.#wake(); // generations waiting for pages now fail with E_DISPOSED
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.dispose();
  }
}
