/**
 * A sequence's place in the paged latent cache and its forward through the native engine
 * (DeepseekV2DecoderLayer of the published modeling code, in C++: native/src/model/engine.cc).
 * Attention has two modes over the same cache: `prefill` (mlaPrefill: K/V expanded from the
 * latent) and `decode` (absorbed: q_nope·W_UK, mlaDecode on the latent, ·W_UV).
 *
 * (The TypeScript forward that called the ops one by one was retired: it was a slower twin of
 * the engine, and the float64 reference in test/reference/ is what checks the engine.)
 */
import { Dsv2Error, throwIfAborted } from '../errors';
import type { KvCache } from '../kv-cache';
import type * as ops from '../ops';
import { Tensor } from '../tensor';
import type { DeepSeekConfig } from './config';
import type { EngineSampling, NativeEngine } from './engine';
import type { PrefixCache } from './prefix-cache';

export type AttentionMode = 'prefill' | 'decode';

/** One sequence's place in the cache. */
export interface SeqState {
  /** Pages held, in order (token t lives in pages[t / pageSize]). */
  pages: number[];
  /** Tokens already in the cache. */
  length: number;
}

export interface ForwardContext {
  config: DeepSeekConfig;
  cache: KvCache;
  rope: ops.RopeTable;
  /** Where the forward runs (CPU or CUDA backend); it holds the weights. */
  engine: NativeEngine;
  /** Cached prefix pages, evicted (LRU) when reserve() finds too few free pages. */
  prefix?: PrefixCache;
}

/** Makes room for `n` more tokens, allocating pages as needed (E_OOM when the cache is full). */
/** Tokens one sequence can hold: the rope table's rows (positions) and the cache's tokens. */
export function maxSequenceTokens(ctx: ForwardContext): number {
  return Math.min(ctx.rope.cos.shape[0], ctx.cache.pages * ctx.cache.pageSize);
}

export function reserve(ctx: ForwardContext, seq: SeqState, n: number): void {
  const limit = maxSequenceTokens(ctx);
  if (seq.length + n > limit) {
    throw new Dsv2Error('E_RANGE', `a sequence of ${seq.length + n} tokens exceeds this model's ${limit}-token limit (maxTokens / max_position_embeddings)`);
  }
  const need = Math.ceil((seq.length + n) / ctx.cache.pageSize) - seq.pages.length;
  if (need <= 0) return;
  if (ctx.prefix && ctx.cache.pagesFree < need) ctx.prefix.evict(need - ctx.cache.pagesFree);
  seq.pages.push(...ctx.cache.allocPages(need));
}

/**
 * Runs `tokens` (the next tokens of `seq`) through the model, writing their latents to the
 * cache, and returns f32 logits [T, vocab] (or of the last token). The sequence must have room (reserve()).
 */
export async function forward(ctx: ForwardContext, seq: SeqState, tokens: Int32Array, mode: AttentionMode,
  signal?: AbortSignal, rows: 'all' | 'last' = 'all'): Promise<Tensor> {
  return (await engineForward(ctx.engine, ctx.config, seq, tokens, mode, rows, signal)).logits!;
}

/**
 * The forward of one sequence in the native engine: the tokens in steps of at most
 * maxTokens (chunked prefill over the cached prefix), decode steps of at most 4 tokens;
 * logits of every token or of the last, and/or a token sampled on the engine's device.
 */
export async function engineForward(engine: NativeEngine, c: DeepSeekConfig, seq: SeqState, tokens: Int32Array,
  mode: AttentionMode, rows: 'all' | 'last' | 'none', signal?: AbortSignal,
  sampling?: EngineSampling): Promise<{ logits: Tensor | null; token: number | null }> {
  const T = tokens.length;
  const V = c.vocabSize;
  const step = mode === 'decode' ? Math.min(4, engine.limits.maxTokens) : engine.limits.maxTokens;
  const all = rows === 'all' ? new Float32Array(T * V) : null;
  let lastLogits: Float32Array | null = null;
  let token: number | null = null;
  for (let t0 = 0; t0 < T; t0 += step) {
    throwIfAborted(signal, `the forward (after ${t0} of ${T} tokens)`);
    const chunk = tokens.subarray(t0, Math.min(T, t0 + step));
    const final = t0 + chunk.length === T;
    const want = rows === 'all' ? 'all' : final && rows === 'last' ? 'last' : 'none';
    const r = await engine.step([{ tokens: chunk, pos0: seq.length, pages: seq.pages }], mode, want, final ? sampling : undefined);
    seq.length += chunk.length;
    if (all && r.logits) all.set(r.logits, t0 * V);
    if (final && rows === 'last') lastLogits = r.logits;
    if (final && r.tokens) token = r.tokens[0];
  }
  const logits = all ? new Tensor('f32', [T, V], all) : lastLogits ? new Tensor('f32', [1, V], lastLogits) : null;
  return { logits, token };
}
