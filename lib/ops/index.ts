/**
 * The ops, each `await`ed: validation happens once before the work (a bad argument is a
 * rejected promise with a Dsv2Error naming it), the work runs off the JS thread, and the
 * result is a new tensor. CPU tensors in this release; every shape comes from the caller.
 */
import { Dsv2Error, native } from '../errors';
import { binding } from '../native';
import { Tensor } from '../tensor';
import { deviceArg, implArg, numberArg, tensorArg, type DeviceOptions, type OpOptions } from './args';
import type { RopeTable, YarnConfig } from './rope';

export type { Impl, OpOptions, DeviceOptions } from './args';
export { ropeFromConfig, yarnGetMscale, softmaxScale, type RopeConfig, type RopeTable, type YarnConfig } from './rope';

/**
 * Token embedding lookup: `out[..., :] = table[ids[...], :]`.
 * @param ids i32 | i64, any shape of rank 1..4; each id in [0, vocab) or E_RANGE.
 * @param table [vocab, hidden], f32 | bf16 | f16.
 * @returns f32 [...ids.shape, hidden].
 */
export async function embedding(ids: Tensor, table: Tensor, opts?: OpOptions & DeviceOptions): Promise<Tensor> {
  const b = binding();
  return Tensor.fromRaw(await native(b.embedding(tensorArg(ids, 'ids'), tensorArg(table, 'table'), implArg(opts), deviceArg(opts))));
}

export interface RmsNormOptions extends OpOptions, DeviceOptions {
  /** Added to the mean square before the square root; config.json `rms_norm_eps`. Default 1e-6. */
  eps?: number;
}

/**
 * RMSNorm as DeepseekV2RMSNorm: `y = x / sqrt(mean(x²) + eps) * weight`, statistics in fp32 or better.
 * @param x f32 [..., dim].  @param weight [dim], f32 | bf16 | f16.  @returns f32, x's shape.
 */
export async function rmsNorm(x: Tensor, weight: Tensor, opts?: RmsNormOptions): Promise<Tensor> {
  const b = binding();
  const eps = numberArg(opts?.eps, 'eps', 1e-6);
  return Tensor.fromRaw(await native(b.rmsNorm(tensorArg(x, 'x'), tensorArg(weight, 'weight'), eps, implArg(opts), deviceArg(opts))));
}

export interface RopeTableOptions {
  /** Rotary dims (config.json `qk_rope_head_dim`, 64 in V2); even. */
  dim: number;
  /** Table rows: positions [0, maxPositions) can be rotated. */
  maxPositions: number;
  /** config.json `rope_theta`; default 10000. */
  theta?: number;
  /** YaRN scaling (config.json `rope_scaling` of type yarn); null or absent for plain RoPE. */
  yarn?: YarnConfig | null;
}

/**
 * cos/sin tables of DeepseekV2YarnRotaryEmbedding, computed in double, stored f32:
 * `cos[p, i] = cos(p · inv_freq[i]) · mscale(factor, mscale) / mscale(factor, mscaleAllDim)`.
 * @returns `{cos, sin}`, each f32 [maxPositions, dim / 2].
 */
export async function ropeTable(opts: RopeTableOptions): Promise<RopeTable> {
  const b = binding();
  const [cos, sin] = await native(b.ropeTable({
    dim: numberArg(opts?.dim, 'dim', NaN),
    maxPositions: numberArg(opts?.maxPositions, 'maxPositions', NaN),
    theta: numberArg(opts?.theta, 'theta', 10000),
    yarn: opts?.yarn ?? null,
  }));
  return { cos: Tensor.fromRaw(cos), sin: Tensor.fromRaw(sin) };
}

export interface RopeOptions extends OpOptions, DeviceOptions {
  /**
   * true (default): x stores rotary pairs interleaved, (x0, x1), (x2, x3), ..., as DeepSeek's
   * checkpoints do; false: halves, (x_i, x_{i+d/2}). The output is always in half-split
   * order, as the published modeling code produces it.
   */
  interleaved?: boolean;
}

/**
 * Rotary position embedding (DeepSeek's pair order, YaRN tables from ropeTable()).
 * @param x f32 [tokens, heads, dim] or [tokens, dim].
 * @param positions i32 | i64 [tokens], each in [0, table rows) or E_RANGE.
 * @returns f32, x's shape: `out[i] = a·cos − b·sin`, `out[i + dim/2] = b·cos + a·sin`.
 */
export async function rope(x: Tensor, positions: Tensor, table: RopeTable, opts?: RopeOptions): Promise<Tensor> {
  const b = binding();
  const interleaved = opts?.interleaved ?? true;
  return Tensor.fromRaw(await native(b.rope(
    tensorArg(x, 'x'), tensorArg(positions, 'positions'), tensorArg(table?.cos, 'table.cos'),
    tensorArg(table?.sin, 'table.sin'), interleaved, implArg(opts), deviceArg(opts))));
}

/**
 * SwiGLU's gating: `silu(gate) · up`.
 * @param gate f32 [..., inter]; or, when `up` is omitted, [..., 2·inter] holding [gate ; up].
 * @param up f32, gate's shape, or null/undefined.
 * @returns f32 [..., inter].
 */
export async function siluMul(gate: Tensor, up?: Tensor | null, opts?: OpOptions & DeviceOptions): Promise<Tensor> {
  const b = binding();
  const u = up === undefined || up === null ? null : tensorArg(up, 'up');
  return Tensor.fromRaw(await native(b.siluMul(tensorArg(gate, 'gate'), u, implArg(opts), deviceArg(opts))));
}

export interface GemmOptions extends OpOptions, DeviceOptions {
  /**
   * For 8-bit weights (i8 or fp8_e4m3 codes), their scales: f32 [ceil(N / 128), ceil(K / 128)],
   * one per 128 × 128 block (W = code · scale; `quantizeWeight` makes both).
   */
  scale?: Tensor;
}

/**
 * `y = x · Wᵀ` with fp32 accumulation (the nn.Linear weight layout). `device: 'cuda'` runs the
 * CUDA kernel (host tensors copied in and out; E_UNSUPPORTED where CUDA is not usable).
 * @param x f32 [..., K].  @param weight [N, K], f32 | bf16 | f16, or i8 | fp8_e4m3 with `scale`.
 * @returns f32 [..., N].
 */
export async function gemm(x: Tensor, weight: Tensor, opts?: GemmOptions): Promise<Tensor> {
  const b = binding();
  const scale = opts?.scale === undefined ? undefined : tensorArg(opts.scale, 'scale');
  return Tensor.fromRaw(await native(b.gemm(tensorArg(x, 'x'), tensorArg(weight, 'weight'), implArg(opts), deviceArg(opts), scale)));
}

/**
 * 8-bit weights from a float matrix W [n, k] (f32 | bf16 | f16), as `Model.load(dir, {weights})`
 * stores them: one f32 scale per 128 × 128 block, scale = amax / 127 (i8) or amax / 448
 * (fp8_e4m3) over the block's finite values (1 for an all-zero block), code = W / scale rounded
 * to nearest even (i8 clamped to ±127; e4m3 saturating at ±448).
 * @returns `{ codes: [n, k] of dtype, scale: f32 [ceil(n / 128), ceil(k / 128)] }`.
 */
export async function quantizeWeight(weight: Tensor, dtype: 'i8' | 'fp8_e4m3'): Promise<{ codes: Tensor; scale: Tensor }> {
  const [codes, scale] = await native(binding().quantizeWeight(tensorArg(weight, 'weight'), dtype));
  return { codes: Tensor.fromRaw(codes), scale: Tensor.fromRaw(scale) };
}

export interface SoftmaxOptions extends OpOptions, DeviceOptions {
  /** Multiplies x before the softmax; default 1. */
  scale?: number;
}

/**
 * `softmax(scale · x)` over the last dim, max-subtracted. A row of all −inf gives NaN (as
 * torch does); a NaN makes its row NaN.
 * @param x f32 [..., n].  @returns f32, x's shape.
 */
export async function softmax(x: Tensor, opts?: SoftmaxOptions): Promise<Tensor> {
  const b = binding();
  return Tensor.fromRaw(await native(b.softmax(tensorArg(x, 'x'), numberArg(opts?.scale, 'scale', 1), implArg(opts), deviceArg(opts))));
}

export interface SampleOptions extends OpOptions {
  /** 0 (default) is greedy: argmax, lowest id on ties. */
  temperature?: number;
  /** Keep only the k most likely tokens; 0 (default) keeps all. */
  topK?: number;
  /** Keep the smallest most-likely set whose probability reaches p; 1 (default) keeps all. */
  topP?: number;
  /** Seed of the draw (unsigned 64-bit); same seed, same tokens. Default 0. */
  seed?: bigint | number;
  /**
   * 'cuda': the GPU sampler the CUDA engine uses (the same definition; its sums are parallel,
   * so a draw within rounding of a boundary may pick a neighbour of the CPU's token).
   */
  device?: 'cpu' | 'cuda';
}

/**
 * Samples one token per row: temperature, then top-k, then top-p, then a reproducible draw
 * (the exact definition is in native/include/dsv2/dense.h, SampleParams).
 * @param logits f32 [rows, vocab] or [vocab]; NaN or +inf is E_RANGE.
 * @returns i32 [rows] (or a 0-d tensor for 1-d logits).
 */
export async function sample(logits: Tensor, opts?: SampleOptions): Promise<Tensor> {
  const b = binding();
  let seed: bigint;
  const s = opts?.seed ?? 0n;
  if (typeof s === 'bigint') seed = s;
  else if (typeof s === 'number' && Number.isSafeInteger(s) && s >= 0) seed = BigInt(s);
  else throw new Dsv2Error('E_RANGE', `seed = ${String(s)} must be a non-negative integer or bigint`);
  if (seed < 0n || seed >= 1n << 64n) {
    throw new Dsv2Error('E_RANGE', `seed = ${seed} must fit in 64 unsigned bits`);
  }
  const raw = await native(b.sample(tensorArg(logits, 'logits'), {
    temperature: numberArg(opts?.temperature, 'temperature', 0),
    topK: numberArg(opts?.topK, 'topK', 0),
    topP: numberArg(opts?.topP, 'topP', 1),
    seed,
    ...(opts?.device ? { device: opts.device } : {}),
  }, implArg(opts)));
  return Tensor.fromRaw(raw);
}

/**
 * Element-wise dtype conversion among f32, bf16 and f16 (round to nearest even; NaN stays
 * NaN; f16 overflow gives inf).
 */
export async function cast(x: Tensor, dtype: 'f32' | 'bf16' | 'f16', opts?: OpOptions): Promise<Tensor> {
  const b = binding();
  return Tensor.fromRaw(await native(b.cast(tensorArg(x, 'x'), dtype, implArg(opts))));
}

export { headsGemm, mlaDecode, mlaPrefill, fp8Quantize, fp8Dequantize, type MlaDecodeOptions, type MlaPrefillOptions,
  type Fp8Granularity, type Fp8Options } from './mla';
export { moeRoute, moeExperts, type MoeMethod, type MoeRouteOptions, type MoeRouting, type ExpertWeights,
  type SharedExpertWeights } from './moe';
