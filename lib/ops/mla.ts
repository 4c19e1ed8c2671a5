/**
 * MLA ops: absorbed decode over the paged latent cache, naive prefill, the per-head
 * projections around decode, and FP8 quantization.
 */
import { Dsv2Error, native } from '../errors';
import type { KvCache } from '../kv-cache';
import { binding } from '../native';
import { Tensor } from '../tensor';
import { implArg, numberArg, tensorArg, type OpOptions } from './args';

function layerArg(layer: unknown): number {
  if (typeof layer !== 'number') throw new Dsv2Error('E_ARG', `layer must be a number, got ${typeof layer}`);
  return layer;
}

function cacheArg(cache: unknown) {
  const c = cache as KvCache | null;
  if (!c || typeof c.raw !== 'function') throw new Dsv2Error('E_ARG', 'cache must be a KvCache');
  return c.raw('cache');
}

/**
 * Per-head projection `y[t, h, :] = x[t, h, :] · w[h]ᵀ`: q_nope·W_UK (with W_UK stored as
 * [h, dC, dNope]) before absorbed decode, and out·W_UVᵀ (W_UV [h, dV, dC]) after it.
 * @param x f32 [T, h, K]  @param w [h, N, K] f32 | bf16 | f16  @returns f32 [T, h, N]
 */
export async function headsGemm(x: Tensor, w: Tensor, opts?: OpOptions): Promise<Tensor> {
  const b = binding();
  return Tensor.fromRaw(await native(b.headsGemm(tensorArg(x, 'x'), tensorArg(w, 'weight'), implArg(opts))));
}

export interface MlaDecodeOptions extends OpOptions {
  /** Softmax scale: ops.softmaxScale(config) — (dNope + dR)^-0.5 · mscale² under YaRN. */
  scale: number;
  /** Keys per split of the split-KV decomposition; 0 or absent: chosen from the batch. */
  splitTokens?: number;
}

/**
 * Absorbed MLA decode over the paged latent cache (one KV head of dC + dR dims).
 *
 * Sequence i has `seqlens[i]` cached tokens, the last s_q of which are its queries (append
 * them first): query j attends keys t ≤ s_k − s_q + j. `score = scale·(q[:dC]·c_kv + q[dC:]·k_pe)`,
 * `out = softmax(score)·c_kv` in the latent space, `lse = ln Σ exp(score)`. A query that sees
 * no key gets out 0 and lse +Infinity. Block-table entries past a sequence's end are not read.
 * @param q f32 [b, s_q, h_q, dC + dR]: [q_nope·W_UK ; q_pe] per head.
 * @param blockTable i32 [b, maxBlocks]  @param seqlens i32 [b]
 * @returns `{out: f32 [b, s_q, h_q, dC], lse: f32 [b, s_q, h_q]}`
 */
export async function mlaDecode(q: Tensor, cache: KvCache, layer: number, blockTable: Tensor, seqlens: Tensor,
  opts: MlaDecodeOptions): Promise<{ out: Tensor; lse: Tensor }> {
  const b = binding();
  const [out, lse] = await native(b.mlaDecode(
    tensorArg(q, 'q'), cacheArg(cache), layerArg(layer), tensorArg(blockTable, 'blockTable'), tensorArg(seqlens, 'seqlens'),
    numberArg(opts?.scale, 'scale', NaN), numberArg(opts?.splitTokens, 'splitTokens', 0), implArg(opts)));
  return { out: Tensor.fromRaw(out), lse: Tensor.fromRaw(lse) };
}

export interface MlaPrefillOptions extends OpOptions {
  /** Softmax scale (see MlaDecodeOptions.scale). */
  scale: number;
  /** config.json qk_nope_head_dim. */
  dNope: number;
  /** config.json v_head_dim. */
  dV: number;
}

/**
 * MLA prefill, naive form: each sequence's keys are read from the cache (a cached prefix
 * included: chunked prefill) and expanded per head with kv_b_proj into k_nope and v; then
 * causal attention over [k_nope ; k_pe]. Sequence i's queries are q rows
 * cuSeqlensQ[i]..cuSeqlensQ[i+1], the last of its seqlens[i] keys.
 * On a cuda cache at DeepSeek-V2 dims (dNope 128, dR 64, dV 128) the tensor-core flash kernel
 * runs and rounds q, K, V and the softmax probabilities to bf16 (f32 accumulation); other dims
 * take a generic all-f32 kernel.
 * @param q f32 [T, h, dNope + dR]  @param kvB kv_b_proj.weight [h·(dNope + dV), dC], f32 | bf16 | f16
 * @returns f32 [T, h, dV]
 */
export async function mlaPrefill(q: Tensor, cache: KvCache, layer: number, blockTable: Tensor, seqlens: Tensor,
  cuSeqlensQ: Tensor, kvB: Tensor, opts: MlaPrefillOptions): Promise<Tensor> {
  const b = binding();
  return Tensor.fromRaw(await native(b.mlaPrefill(
    tensorArg(q, 'q'), cacheArg(cache), layerArg(layer), tensorArg(blockTable, 'blockTable'), tensorArg(seqlens, 'seqlens'),
    tensorArg(cuSeqlensQ, 'cuSeqlensQ'), tensorArg(kvB, 'kvB'), numberArg(opts?.scale, 'scale', NaN),
    numberArg(opts?.dNope, 'dNope', NaN), numberArg(opts?.dV, 'dV', NaN), implArg(opts))));
}

export interface MlaPrefillBenchOptions extends MlaPrefillOptions {
  /** Timed calls (CUDA events); 1..10000. */
  iters: number;
  /** Also time one [n, n]·[n, n]ᵀ cuda gemm with bf16 weights (the run's dense rate); 0 or absent: not run. */
  gemmSize?: number;
}

export interface MlaPrefillBench {
  /** Milliseconds per whole op (gather + K/V expansion + attention, every sequence). */
  ms: number;
  /** Milliseconds of the attention kernels alone (summed over sequences). */
  attendMs: number;
  /** Milliseconds per dense gemm of `gemmSize` (0 when not run). */
  gemmMs: number;
  /** The attention kernel the dispatch chose for these dims. */
  kernel: string;
  gemmKernel: string;
}

/**
 * Kernel-only timing of {@link mlaPrefill} on a cuda cache (inputs copied to the device once,
 * no output copied back): same arguments as mlaPrefill plus the iteration count.
 */
export async function benchMlaPrefillCuda(q: Tensor, cache: KvCache, layer: number, blockTable: Tensor, seqlens: Tensor,
  cuSeqlensQ: Tensor, kvB: Tensor, opts: MlaPrefillBenchOptions): Promise<MlaPrefillBench> {
  const b = binding();
  return native(b.benchMlaPrefillCuda(
    tensorArg(q, 'q'), cacheArg(cache), layerArg(layer), tensorArg(blockTable, 'blockTable'), tensorArg(seqlens, 'seqlens'),
    tensorArg(cuSeqlensQ, 'cuSeqlensQ'), tensorArg(kvB, 'kvB'), numberArg(opts?.scale, 'scale', NaN),
    numberArg(opts?.dNope, 'dNope', NaN), numberArg(opts?.dV, 'dV', NaN), numberArg(opts?.iters, 'iters', NaN),
    numberArg(opts?.gemmSize, 'gemmSize', 0)));
}

export type Fp8Granularity = 'tensor' | 'token' | 'tile';

export interface Fp8Options extends OpOptions {
  /** One scale for the tensor, per token (row), or per `tileSize` elements of a row. */
  granularity: Fp8Granularity;
  /** Elements per tile scale; default 128. */
  tileSize?: number;
}

/**
 * FP8 E4M3 quantization with explicit scales: scale = amax/448 per group over finite values
 * (power of two with `pow2Scale`; 1 for an all-zero group), code = e4m3(x / scale), round to
 * nearest even, saturating at ±448 (±inf too), NaN → 0x7F.
 * `scales` (same shape as the returned scales, each finite and > 0) quantizes statically with
 * the caller's scales instead (e.g. DeepSeek-V3's 128×128 weight blocks, replicated per row).
 * @param x f32 [..., n]  @returns codes fp8_e4m3 (x's shape) and scales f32: tensor [1],
 * token [rows], tile [rows, ceil(n / tileSize)].
 */
export async function fp8Quantize(x: Tensor, opts: Fp8Options & { pow2Scale?: boolean; scales?: Tensor | null }): Promise<{ codes: Tensor; scales: Tensor }> {
  const b = binding();
  const [codes, scales] = await native(b.fp8Quantize(tensorArg(x, 'x'), String(opts?.granularity),
    numberArg(opts?.tileSize, 'tileSize', 128), opts?.pow2Scale ?? false, implArg(opts),
    opts?.scales ? tensorArg(opts.scales, 'scales') : null));
  return { codes: Tensor.fromRaw(codes), scales: Tensor.fromRaw(scales) };
}

/** `decode(code) · scale` per element (the inverse of fp8Quantize up to e4m3 rounding). */
export async function fp8Dequantize(codes: Tensor, scales: Tensor, opts: Fp8Options): Promise<Tensor> {
  const b = binding();
  return Tensor.fromRaw(await native(b.fp8Dequantize(tensorArg(codes, 'codes'), tensorArg(scales, 'scales'),
    String(opts?.granularity), numberArg(opts?.tileSize, 'tileSize', 128), implArg(opts))));
}
