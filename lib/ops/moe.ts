/** DeepSeekMoE ops: gate routing and the SwiGLU experts (routed and shared). */
import { Dsv2Error, native } from '../errors';
import { binding } from '../native';
import { Tensor } from '../tensor';
import { implArg, numberArg, tensorArg, type OpOptions } from './args';

export type MoeMethod = 'greedy' | 'group_limited_greedy' | 'noaux_tc';

export interface MoeRouteOptions extends OpOptions {
  /** Experts per token, config.json num_experts_per_tok. */
  topK: number;
  /** config.json topk_method: greedy (V2-Lite), group_limited_greedy (V2), noaux_tc (V3). */
  method: MoeMethod;
  /** config.json scoring_func; default softmax. */
  scoring?: 'softmax' | 'sigmoid';
  /** config.json n_group; default 1. */
  nGroup?: number;
  /** config.json topk_group; default 1. */
  topkGroup?: number;
  /** config.json norm_topk_prob; default false. */
  normTopkProb?: boolean;
  /** config.json routed_scaling_factor; default 1. */
  routedScalingFactor?: number;
  /** e_score_correction_bias f32 [E]; noaux_tc only (and required there). */
  bias?: Tensor | null;
  /** cpu (default) or cuda: the fused one-launch routing kernel (host tensors are copied in and out). */
  device?: 'cpu' | 'cuda';
}

export interface MoeRouting {
  /** i32 [T, topK]: experts per token by descending score (ties: lower id); -1 for an unfillable slot. */
  ids: Tensor;
  /** f32 [T, topK]: routing weights (0 for -1 slots). */
  weights: Tensor;
  /** i32 [E]: (token, slot) pairs routed to each expert. */
  tokensPerExpert: Tensor;
  /** i32 [nGroup]: pairs routed into each group (device). */
  tokensPerGroup: Tensor;
}

/**
 * Routes tokens to experts from router logits (the gate GEMM's output), in one pass.
 * scores = softmax or sigmoid of the logits; greedy takes the topK best; group_limited_greedy
 * (DeepSeek-V2's device-limited routing) keeps the topkGroup groups with the best max score,
 * then the topK best experts in them; noaux_tc (DeepSeek-V3) selects on score + bias with
 * group score = sum of the group's top 2, weights from the unbiased scores. normTopkProb
 * divides by the sum (+1e-20); routedScalingFactor is applied as the published code does
 * (noaux_tc always; the V2 methods only without normalisation). NaN scores are never chosen.
 * @param logits f32 [T, E]
 */
export async function moeRoute(logits: Tensor, opts: MoeRouteOptions): Promise<MoeRouting> {
  const b = binding();
  if (typeof opts?.method !== 'string') throw new Dsv2Error('E_ARG', 'method must be a string');
  const raw = await native(b.moeRoute(tensorArg(logits, 'logits'), {
    topK: numberArg(opts.topK, 'topK', NaN),
    method: opts.method,
    scoring: opts.scoring ?? 'softmax',
    nGroup: numberArg(opts.nGroup, 'nGroup', 1),
    topkGroup: numberArg(opts.topkGroup, 'topkGroup', 1),
    normTopkProb: opts.normTopkProb ?? false,
    routedScalingFactor: numberArg(opts.routedScalingFactor, 'routedScalingFactor', 1),
    device: opts.device ?? 'cpu',
  }, opts.bias ? tensorArg(opts.bias, 'bias') : null, implArg(opts)));
  const [ids, weights, tokensPerExpert, tokensPerGroup] = raw.map((r) => Tensor.fromRaw(r));
  return { ids, weights, tokensPerExpert, tokensPerGroup };
}

export interface ExpertWeights {
  /** [E, 2I, H]: per expert gate_proj rows then up_proj rows; f32 | bf16 | f16 | fp8_e4m3 | i8. */
  gateUp: Tensor;
  /** [E, H, I]: per expert down_proj; same dtype as gateUp. */
  down: Tensor;
  /**
   * 8-bit weights only (fp8_e4m3 as DeepSeek-V3's weight_scale_inv, or i8): f32
   * [E, ceil(2I/128), ceil(H/128)], w[e, r, c] = value(gateUp[e, r, c]) · gateUpScale[e, r/128, c/128]
   * (value: the e4m3 number or the integer). The 128×128 blocks tile
   * the stacked [2I, H] matrix (gate rows then up rows), so for I % 128 == 0 it is the gate
   * scales followed by the up scales. Every scale finite and > 0.
   */
  gateUpScale?: Tensor | null;
  /** 8-bit weights only: f32 [E, ceil(H/128), ceil(I/128)] block scales of down. */
  downScale?: Tensor | null;
}

export interface SharedExpertWeights {
  /** [2·Is, H] with Is = moe_intermediate_size · n_shared_experts: gate rows then up rows. */
  gateUp: Tensor;
  /** [H, Is] */
  down: Tensor;
}

/**
 * The MoE layer's experts: for each token, Σ over its slots of weight · SwiGLU expert(x)
 * (slots with id -1 skipped), plus the shared experts as one SwiGLU. Tokens are grouped by
 * expert (one GEMM per expert) and each token's slots are summed in slot order, so the result
 * does not depend on threading. `device: 'cuda'`: on-device dispatch (counts → scan →
 * scatter), grouped SwiGLU expert kernels and a slot-order combine, with no host sync.
 * 8-bit routed experts (fp8_e4m3 or i8 gateUp/down with gateUpScale/downScale) are dequantised
 * on the fly, never widened whole; the shared experts stay f32 | bf16 | f16.
 * @param x f32 [T, H]  @param ids i32 [T, k]  @param weights f32 [T, k]  @returns f32 [T, H]
 */
export async function moeExperts(x: Tensor, ids: Tensor, weights: Tensor, experts: ExpertWeights,
  shared?: SharedExpertWeights | null, opts?: OpOptions & { device?: 'cpu' | 'cuda' }): Promise<Tensor> {
  const b = binding();
  return Tensor.fromRaw(await native(b.moeExperts(
    tensorArg(x, 'x'), tensorArg(ids, 'ids'), tensorArg(weights, 'weights'),
    tensorArg(experts?.gateUp, 'experts.gateUp'), tensorArg(experts?.down, 'experts.down'),
    shared ? tensorArg(shared.gateUp, 'shared.gateUp') : null, shared ? tensorArg(shared.down, 'shared.down') : null,
    implArg(opts), opts?.device ?? 'cpu',
    experts?.gateUpScale ? tensorArg(experts.gateUpScale, 'experts.gateUpScale') : null,
    experts?.downScale ? tensorArg(experts.downScale, 'experts.downScale') : null)));
}
