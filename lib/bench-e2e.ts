/**
 * `dsv2 bench e2e`: whole-model prefill and decode speed with random weights made on the
 * device (no files), on the native engine — the published V2 / V2-Lite shapes, or a slice of
 * their layers (`layers`), or the tiny V2 model.
 *
 * Model of a decode step (the roofline): bytes that must stream from memory at least once —
 * every dense weight (attention, dense MLP, router, shared experts, final norm, lm_head), b
 * rows of the embedding, the routed experts the batch touches (uniform random routing touches
 * E·(1 − (1 − k/E)^b) distinct experts per MoE layer in expectation: what random weights give),
 * and the KV cache the step reads (b · context tokens · bytes per token · layers) — divided
 * by the copy bandwidth measured in the same run (device-to-device on CUDA, memcpy on the
 * CPU; read + write bytes per second). Prefill is compute-bound: reported as tokens/s and
 * TFLOP/s with FLOPs = 2 · active parameters per token + causal attention
 * (2 · h · (d_qk + d_v) · n(n+1)/2 per layer).
 */
import { copyBandwidth, cudaCopyBandwidth } from './bench';
import { Dsv2Error } from './errors';
import { info } from './info';
import { KvCache } from './kv-cache';
import * as ops from './ops';
import { isMoeLayer, parseConfig, qHeadDim, type DeepSeekConfig } from './model/config';
import { NativeEngine } from './model/engine';
import { PRESETS, type PresetName } from './model/presets';
import { tinyConfig } from './model/tiny';
import { expectedTensors } from './model/weights';

export interface E2eOptions {
  config: PresetName | 'tiny';
  /** Keep only the first N layers (full V2 does not fit one GPU). Default: all. */
  layers?: number;
  device: 'cpu' | 'cuda';
  kvCache?: 'bf16' | 'fp8';
  /** Prompt lengths of the prefill measurements; default [1024, 4096]. */
  prefill?: number[];
  /** Batch sizes of the decode measurements; default [1, 8, 64]. */
  batch?: number[];
  /** Tokens already in each sequence's cache when decode is timed; default 512. */
  context?: number;
  /** Decode steps timed per batch size; default 32. */
  decodeSteps?: number;
  seed?: number;
  onLog?: (msg: string) => void;
}

export interface E2eRow {
  phase: 'prefill' | 'decode';
  /** Prompt tokens (prefill) or batch size (decode). */
  size: number;
  ms: number;
  tokensPerS: number;
  /** Decode: bytes the step must read (the model above). */
  bytes?: number;
  gbPerS?: number;
  /** Decode: % of the copy-bandwidth roofline. */
  pctRoofline?: number;
  /** Prefill: TFLOP/s by the FLOP model above. */
  tflops?: number;
}

export interface E2eResult {
  config: string;
  layers: number;
  device: string;
  deviceName: string;
  kvCache: string;
  copyBandwidth: number;
  weightBytes: number;
  memory: { weights: number; cache: number; workspace: number };
  /** CUDA graphs of the decode steps (captured, failed captures, replays). */
  graphs: { captured: number; failed: number; launches: number };
  rows: E2eRow[];
}

/** Parameters one token activates in the routed experts vs everything dense, and bytes per token per layer of the cache. */
function model(c: DeepSeekConfig) {
  let dense = 0; // everything but the embedding and the routed experts
  for (const [name, shape] of expectedTensors(c)) {
    if (name !== 'model.embed_tokens.weight' && !/\.mlp\.experts\.\d+\./.test(name)) dense += shape.reduce((a, b) => a * b, 1);
  }
  const embedRow = c.hiddenSize;
  const I = c.moeIntermediateSize;
  const perExpert = 3 * c.hiddenSize * I;
  const moeLayers = Array.from({ length: c.numLayers }, (_, i) => isMoeLayer(c, i)).filter(Boolean).length;
  return { dense, embedRow, perExpert, moeLayers };
}

export async function benchE2e(o: E2eOptions): Promise<E2eResult> {
  const log = o.onLog ?? (() => {});
  const raw = { ...(o.config === 'tiny' ? tinyConfig('v2') : PRESETS[o.config]) };
  if (o.layers !== undefined) {
    if (!Number.isSafeInteger(o.layers) || o.layers < 1 || o.layers > (raw.num_hidden_layers as number)) {
      throw new Dsv2Error('E_RANGE', `layers = ${o.layers} must be in [1, ${raw.num_hidden_layers}]`);
    }
    raw.num_hidden_layers = o.layers;
  }
  const c = parseConfig(raw);
  const prefill = o.prefill ?? [1024, 4096];
  const batches = o.batch ?? [1, 8, 64];
  const context = o.context ?? 512;
  const steps = o.decodeSteps ?? 32;
  const kv = o.kvCache ?? 'bf16';
  const maxB = Math.max(1, ...batches);
  const maxPrefill = Math.max(1, ...prefill);
  const maxSeqlen = Math.max(maxPrefill, context + steps + 1);
  const pageSize = 64;
  const pagesPerSeq = Math.ceil(maxSeqlen / pageSize);
  const i = await info();
  if (o.device === 'cuda' && !i.cuda.usable) throw new Dsv2Error('E_UNSUPPORTED', `device 'cuda': CUDA is not usable here (${i.cuda.reason})`);
  const deviceName = o.device === 'cuda' ? (i.cuda.devices[0]?.name ?? 'cuda') : `cpu (${i.cpu.threads} threads, ${i.cpu.isa})`;
  log(`e2e: ${o.config} (${c.numLayers} layers) on ${deviceName}, ${kv} cache`);
  const bw = o.device === 'cuda' ? await cudaCopyBandwidth() : await copyBandwidth();
  log(`e2e: copy bandwidth ${(bw / 1e9).toFixed(1)} GB/s`);
  const cache = await KvCache.create({ layers: c.numLayers, pages: pagesPerSeq * maxB, dC: c.kvLoraRank, dR: c.qkRopeHeadDim, dtype: kv, pageSize, device: o.device });
  const rope = await ops.ropeTable({ dim: c.rope.dim, maxPositions: maxSeqlen, theta: c.rope.theta, yarn: c.rope.yarn });
  let engine: NativeEngine | null = null;
  try {
    log('e2e: making random weights on the device');
    engine = await NativeEngine.create(c, { random: o.seed ?? 1 }, cache, rope, o.device,
      { maxTokens: Math.max(maxPrefill, maxB), maxSeqs: maxB, maxSeqlen });
    const mem = engine.memory();
    const pages = Array.from({ length: maxB }, () => Array.from(cache.raw().allocPages(pagesPerSeq)));
    const tok = (n: number, salt: number) => Array.from({ length: n }, (_, k) => (k * 7919 + salt * 104729 + 1) % c.vocabSize);
    const rows: E2eRow[] = [];
    const m = model(c);
    const hq = c.numHeads;
    for (const n of prefill) {
      const seq = [{ tokens: tok(n, 0), pos0: 0, pages: pages[0] }];
      await engine.step(seq, 'prefill', 'last'); // warm-up
      const reps = 3;
      const t0 = performance.now();
      for (let r = 0; r < reps; r++) await engine.step(seq, 'prefill', 'last');
      const ms = (performance.now() - t0) / reps;
      const active = m.dense + c.numExpertsPerTok * m.perExpert * m.moeLayers;
      const attn = c.numLayers * 2 * hq * (qHeadDim(c) + c.vHeadDim) * (n * (n + 1)) / 2;
      const flops = 2 * active * n + attn;
      rows.push({ phase: 'prefill', size: n, ms, tokensPerS: (n / ms) * 1e3, tflops: flops / (ms * 1e-3) / 1e12 });
      log(`e2e: prefill ${n}: ${ms.toFixed(2)} ms`);
    }
    // Decode: every sequence holds `context` tokens first (prefilled in steps of the engine's limit).
    for (let s = 0; s < maxB; s++) {
      await engine.step([{ tokens: tok(context, s + 1), pos0: 0, pages: pages[s] }], 'prefill', 'none');
    }
    const kvBytesPerToken = cache.bytesPerToken * c.numLayers;
    for (const b of batches) {
      const seeds = Array.from({ length: b }, (_, k) => BigInt(k));
      const sampling = { temperature: 0, topK: 0, topP: 1, seeds };
      let next = Array.from({ length: b }, (_, k) => (k + 11) % c.vocabSize);
      const run = async (pos: number) => {
        const r = await engine!.step(next.map((t, k) => ({ tokens: [t], pos0: pos, pages: pages[k] })), 'decode', 'none', sampling);
        next = Array.from(r.tokens!);
      };
      await run(context); // warm-up (overwritten below: same positions)
      const t0 = performance.now();
      for (let st = 0; st < steps; st++) await run(context + st);
      const ms = (performance.now() - t0) / steps;
      const E = c.nRoutedExperts ?? 0;
      const touched = E > 0 ? E * (1 - (1 - c.numExpertsPerTok / E) ** b) : 0;
      const bytes = 2 * (m.dense + b * m.embedRow + touched * m.perExpert * m.moeLayers) + b * (context + steps / 2) * kvBytesPerToken;
      const gbs = bytes / (ms * 1e-3) / 1e9;
      rows.push({ phase: 'decode', size: b, ms, tokensPerS: (b / ms) * 1e3, bytes, gbPerS: gbs, pctRoofline: (100 * gbs * 1e9) / bw });
      log(`e2e: decode batch ${b}: ${ms.toFixed(3)} ms/step`);
    }
    return {
      config: o.config, layers: c.numLayers, device: o.device, deviceName, kvCache: kv, copyBandwidth: bw,
      weightBytes: mem.weights, memory: { weights: mem.weights, cache: mem.cache, workspace: mem.workspace },
      graphs: engine.memory().graphs, rows,
    };
  } finally {
    engine?.dispose();
    cache.dispose();
  }
}
