/**
 * The published config.json of DeepSeek-V2 and DeepSeek-V2-Lite (the Hugging Face model
 * cards' files, verbatim but for fields the runtime ignores), for benchmarks with random
 * weights — no checkpoint needed. Every shape the runtime uses comes from these objects
 * through parseConfig, as from a checkpoint's config.json.
 */
const ROPE_SCALING = {
  type: 'yarn', factor: 40, original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1, mscale: 0.707,
  mscale_all_dim: 0.707,
};

const COMMON = {
  architectures: ['DeepseekV2ForCausalLM'], model_type: 'deepseek_v2', vocab_size: 102400, kv_lora_rank: 512,
  qk_rope_head_dim: 64, v_head_dim: 128, qk_nope_head_dim: 128, n_shared_experts: 2, moe_layer_freq: 1,
  first_k_dense_replace: 1, norm_topk_prob: false, scoring_func: 'softmax', hidden_act: 'silu',
  max_position_embeddings: 163840, rms_norm_eps: 1e-6, bos_token_id: 100000, eos_token_id: 100001,
  tie_word_embeddings: false, rope_theta: 10000, rope_scaling: ROPE_SCALING, attention_bias: false, torch_dtype: 'bfloat16',
};

export const PRESETS: Record<'v2' | 'v2-lite', Record<string, unknown>> = {
  v2: {
    ...COMMON, hidden_size: 5120, intermediate_size: 12288, moe_intermediate_size: 1536, num_hidden_layers: 60,
    num_attention_heads: 128, num_key_value_heads: 128, n_routed_experts: 160, routed_scaling_factor: 16.0,
    q_lora_rank: 1536, topk_method: 'group_limited_greedy', n_group: 8, topk_group: 3, num_experts_per_tok: 6,
  },
  'v2-lite': {
    ...COMMON, hidden_size: 2048, intermediate_size: 10944, moe_intermediate_size: 1408, num_hidden_layers: 27,
    num_attention_heads: 16, num_key_value_heads: 16, n_routed_experts: 64, routed_scaling_factor: 1.0,
    q_lora_rank: null, topk_method: 'greedy', n_group: 1, topk_group: 1, num_experts_per_tok: 6,
  },
};

export type PresetName = keyof typeof PRESETS;
export const PRESET_NAMES = Object.keys(PRESETS) as PresetName[];
