/**
 * The DeepSeek-V2/V3 forward pass on the CPU ops, after DeepseekV2DecoderLayer of the
 * published modeling code: RMSNorm → MLA (low-rank q, joint KV compression, decoupled RoPE;
 * the latent written to the paged cache) → residual → RMSNorm → dense SwiGLU or DeepSeekMoE →
 * residual; final norm and lm_head.
 *
 * Attention has two modes over the same cache: `prefill` (mlaPrefill: K/V expanded from the
 * latent) and `decode` (absorbed: q_nope·W_UK, mlaDecode on the latent, ·W_UV).
 */
import { Dsv2Error, throwIfAborted } from '../errors';
import { KvCache } from '../kv-cache';
import * as ops from '../ops';
import { Tensor } from '../tensor';
import { qHeadDim, type DeepSeekConfig } from './config';
import { add, concatLast, reshape, sliceLast } from './tensor-ops';
import type { EngineSampling, NativeEngine } from './engine';
import type { LayerWeights, ModelWeights } from './weights';
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
  weights: ModelWeights;
  cache: KvCache;
  rope: ops.RopeTable;
  /** When set, the forward runs in the native engine (CUDA, or the CPU with engine: 'native'). */
  engine?: NativeEngine;
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
 * cache, and returns f32 logits [T, vocab]. The sequence must have room (reserve()).
 */
export async function forward(ctx: ForwardContext, seq: SeqState, tokens: Int32Array, mode: AttentionMode,
  signal?: AbortSignal, rows: 'all' | 'last' = 'all'): Promise<Tensor> {
  if (ctx.engine) return (await engineForward(ctx.engine, ctx.config, seq, tokens, mode, rows, signal)).logits!;
  const c = ctx.config;
  const T = tokens.length;
  const pos0 = seq.length;
  const positions = Tensor.from(Int32Array.from({ length: T }, (_, i) => pos0 + i));
  const page = ctx.cache.pageSize;
  const slots = Tensor.from(Int32Array.from({ length: T }, (_, i) => {
    const t = pos0 + i;
    return seq.pages[Math.floor(t / page)] * page + (t % page);
  }));
  const blockTable = Tensor.from(Int32Array.from(seq.pages), [1, seq.pages.length]);
  const seqlens = Tensor.from(Int32Array.of(pos0 + T));
  let x = await ops.embedding(Tensor.from(tokens), ctx.weights.embed);
  for (let l = 0; l < c.numLayers; l++) {
    throwIfAborted(signal, `the forward (at layer ${l} of ${c.numLayers})`);
    const w = ctx.weights.layers[l];
    const h = await ops.rmsNorm(x, w.inputNorm, { eps: c.rmsNormEps });
    const attn = await attention(ctx, l, w, h, positions, slots, blockTable, seqlens, mode);
    x = add(x, attn);
    const h2 = await ops.rmsNorm(x, w.postNorm, { eps: c.rmsNormEps });
    x = add(x, await mlp(ctx, w, h2));
  }
  seq.length = pos0 + T;
  const last = rows === 'last' ? new Tensor('f32', [1, c.hiddenSize], (x.data as Float32Array).subarray((T - 1) * c.hiddenSize)) : x;
  const hf = await ops.rmsNorm(last, ctx.weights.norm, { eps: c.rmsNormEps });
  return ops.gemm(hf, ctx.weights.lmHead);
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

async function attention(ctx: ForwardContext, layer: number, w: LayerWeights, h: Tensor, positions: Tensor, slots: Tensor,
  blockTable: Tensor, seqlens: Tensor, mode: AttentionMode): Promise<Tensor> {
  const c = ctx.config;
  const T = h.shape[0];
  const nh = c.numHeads;
  const dNope = c.qkNopeHeadDim;
  const dR = c.qkRopeHeadDim;
  const dC = c.kvLoraRank;
  // q [T, h, dNope + dR]: plain q_proj, or the low-rank q_a → norm → q_b path.
  let q: Tensor;
  if (w.qProj) q = await ops.gemm(h, w.qProj);
  else q = await ops.gemm(await ops.rmsNorm(await ops.gemm(h, w.qA!), w.qANorm!, { eps: c.rmsNormEps }), w.qB!);
  q = reshape(q, [T, nh, qHeadDim(c)]);
  const qNope = sliceLast(q, 0, dNope);
  const qPe = await ops.rope(sliceLast(q, dNope, dNope + dR), positions, ctx.rope);
  // Joint KV compression: c_kv (normalised) and the shared decoupled RoPE key.
  const kv = await ops.gemm(h, w.kvA);
  const cKv = await ops.rmsNorm(sliceLast(kv, 0, dC), w.kvANorm, { eps: c.rmsNormEps });
  const kPe = await ops.rope(sliceLast(kv, dC, dC + dR), positions, ctx.rope);
  await ctx.cache.append(layer, cKv, kPe, slots);
  let o: Tensor; // [T, h, dV]
  if (mode === 'prefill') {
    o = await ops.mlaPrefill(concatLast([qNope, qPe]), ctx.cache, layer, blockTable, seqlens,
      Tensor.from(Int32Array.of(0, T)), w.kvB, { scale: c.softmaxScale, dNope, dV: c.vHeadDim });
  } else {
    const qLat = await ops.headsGemm(qNope, w.wUkT); // [T, h, dC]
    const qDec = reshape(concatLast([qLat, qPe]), [1, T, nh, dC + dR]);
    const { out } = await ops.mlaDecode(qDec, ctx.cache, layer, blockTable, seqlens, { scale: c.softmaxScale });
    o = await ops.headsGemm(reshape(out, [T, nh, dC]), w.wUv);
  }
  return ops.gemm(reshape(o, [T, nh * c.vHeadDim]), w.oProj);
}

async function mlp(ctx: ForwardContext, w: LayerWeights, h: Tensor): Promise<Tensor> {
  const c = ctx.config;
  const m = w.mlp;
  if (m.kind === 'dense') return ops.gemm(await ops.siluMul(await ops.gemm(h, m.gateUp)), m.down);
  const logits = await ops.gemm(h, m.gate);
  const r = await ops.moeRoute(logits, {
    topK: c.numExpertsPerTok, method: c.topkMethod, scoring: c.scoringFunc, nGroup: c.nGroup, topkGroup: c.topkGroup,
    normTopkProb: c.normTopkProb, routedScalingFactor: c.routedScalingFactor, bias: m.bias,
  });
  return ops.moeExperts(h, r.ids, r.weights, m.experts, m.shared);
}
