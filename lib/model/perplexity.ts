/**
 * Perplexity of a text under a model (llama.cpp's `llama-perplexity` is the anchor), over
 * NON-OVERLAPPING windows: the text's tokens (no BOS) are cut into consecutive windows of
 * `context` tokens; in each window every token after the first is scored by −log p(token |
 * the window's tokens before it), from the model's logits in float64. With `bos`, each window
 * is BOS + context − 1 text tokens and every text token is scored. The last window may be
 * shorter. perplexity = exp(mean nll over the scored tokens).
 */
import { Dsv2Error, throwIfAborted } from '../errors';
import type { AttentionMode } from './forward';
import type { Model } from './model';

export interface PerplexityOptions {
  /** Tokens per window (BOS included when `bos`); default min(512, the model's maxTokens). */
  context?: number;
  /** Prepend BOS to every window (default false: the windows are plain text tokens). */
  bos?: boolean;
  /** prefill: each window in one pass (default); decode: token by token through the KV cache. */
  mode?: AttentionMode;
  signal?: AbortSignal;
  /** Windows done, windows in all. */
  onProgress?: (done: number, total: number) => void;
}

export interface PerplexityResult {
  /** Tokens scored. */
  tokens: number;
  /** Mean negative log-likelihood per scored token (nats). */
  nll: number;
  perplexity: number;
  vocabSize: number;
  kvCache: string;
  /** KV cache bytes per token, all layers (the trade-off perplexity is measured against). */
  kvBytesPerToken: number;
  context: number;
  windows: number;
  bos: boolean;
  mode: AttentionMode;
}

/** −log softmax(row)[target] in float64. */
function nllOf(row: Float32Array, target: number): number {
  let max = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i] > max) max = row[i];
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - max);
  return Math.log(sum) + max - row[target];
}

/** Perplexity of `text` (a string, tokenized without BOS, or token ids). */
export async function perplexity(model: Model, text: string | readonly number[], opts: PerplexityOptions = {}): Promise<PerplexityResult> {
  let ids: number[];
  if (typeof text === 'string') {
    if (!model.tokenizer) throw new Dsv2Error('E_CHECKPOINT', `${model.dir}: tokenizer.json is missing (needed to tokenize the text)`);
    ids = model.tokenizer.encode(text, { addBos: false });
  } else if (Array.isArray(text)) ids = [...text];
  else throw new Dsv2Error('E_ARG', 'perplexity needs a string or an array of token ids');
  const bos = opts.bos ?? false;
  const bosId = model.tokenizer?.bosId ?? model.config.bosTokenId;
  if (bos && bosId === null) throw new Dsv2Error('E_UNSUPPORTED', `${model.dir}: bos requested but the checkpoint names no BOS token`);
  const limit = model.cache.pages * model.cache.pageSize;
  const context = opts.context ?? Math.min(512, limit);
  if (!Number.isSafeInteger(context) || context < 2 || context > limit) {
    throw new Dsv2Error('E_RANGE', `context = ${context} must be an integer in [2, ${limit}] (the model's maxTokens)`);
  }
  const mode = opts.mode ?? 'prefill';
  if (mode !== 'prefill' && mode !== 'decode') throw new Dsv2Error('E_ARG', `mode '${String(mode)}' must be prefill or decode`);
  const per = bos ? context - 1 : context;
  const windows: number[][] = [];
  for (let i = 0; i < ids.length; i += per) {
    const w = ids.slice(i, i + per);
    if (w.length >= (bos ? 1 : 2)) windows.push(bos ? [bosId!, ...w] : w);
  }
  if (windows.length === 0) throw new Dsv2Error('E_RANGE', `the text has ${ids.length} tokens: at least 2 are needed to score one`);
  const V = model.config.vocabSize;
  let sum = 0;
  let n = 0;
  for (let k = 0; k < windows.length; k++) {
    throwIfAborted(opts.signal, 'the perplexity run');
    const w = windows[k];
    const logits = (await model.logits(w, { mode })).data as Float32Array;
    for (let t = 0; t + 1 < w.length; t++) {
      sum += nllOf(logits.subarray(t * V, (t + 1) * V), w[t + 1]);
      n++;
    }
    opts.onProgress?.(k + 1, windows.length);
  }
  const nll = sum / n;
  return {
    tokens: n, nll, perplexity: Math.exp(nll), vocabSize: V, kvCache: model.cache.dtype,
    kvBytesPerToken: model.cache.bytesPerTokenAllLayers, context, windows: windows.length, bos, mode,
  };
}
