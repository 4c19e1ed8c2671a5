/**
 * Tiny random-weight checkpoints in exactly the published layout (config.json, safetensors,
 * tokenizer.json, tokenizer_config.json): the test fixtures and the built-in default model,
 * since no machine here can download real weights. Shapes are small but keep each kind's
 * structure: V2 (q_lora, 160 experts in 8 groups, device-limited top-6 of 3 groups, ×16),
 * V2-Lite (no q_lora, 64 experts, greedy), V3 (sigmoid + bias noaux_tc over 256 experts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Dsv2Error } from '../errors';
import * as ops from '../ops';
import { Tensor } from '../tensor';
import { parseConfig } from './config';
import { writeSafetensors } from './safetensors';
import { expectedTensors } from './weights';

export type TinyKind = 'v2' | 'v2-lite' | 'v3';
export const TINY_KINDS: readonly TinyKind[] = ['v2', 'v2-lite', 'v3'];

const YARN = { type: 'yarn', factor: 40, original_max_position_embeddings: 4096, beta_fast: 32, beta_slow: 1 };

/** The config.json of each tiny kind. */
export function tinyConfig(kind: TinyKind): Record<string, unknown> {
  const common = {
    model_type: 'deepseek_v2', architectures: ['DeepseekV2ForCausalLM'], vocab_size: 320, hidden_size: 64,
    intermediate_size: 96, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 4,
    kv_lora_rank: 32, qk_nope_head_dim: 16, qk_rope_head_dim: 8, v_head_dim: 16, moe_layer_freq: 1,
    first_k_dense_replace: 1, hidden_act: 'silu', max_position_embeddings: 2048, rms_norm_eps: 1e-6,
    rope_theta: 10000, bos_token_id: 256, eos_token_id: 257, tie_word_embeddings: false, attention_bias: false,
    torch_dtype: 'bfloat16',
  };
  switch (kind) {
    case 'v2':
      return { ...common, q_lora_rank: 48, n_routed_experts: 160, n_shared_experts: 2, moe_intermediate_size: 16,
        num_experts_per_tok: 6, topk_method: 'group_limited_greedy', n_group: 8, topk_group: 3, norm_topk_prob: false,
        routed_scaling_factor: 16.0, scoring_func: 'softmax', rope_scaling: { ...YARN, mscale: 0.707, mscale_all_dim: 0.707 } };
    case 'v2-lite':
      return { ...common, q_lora_rank: null, n_routed_experts: 64, n_shared_experts: 2, moe_intermediate_size: 16,
        num_experts_per_tok: 6, topk_method: 'greedy', n_group: 1, topk_group: 1, norm_topk_prob: false,
        routed_scaling_factor: 1.0, scoring_func: 'softmax', rope_scaling: { ...YARN, mscale: 0.707, mscale_all_dim: 0.707 } };
    case 'v3':
      return { ...common, model_type: 'deepseek_v3', architectures: ['DeepseekV3ForCausalLM'], q_lora_rank: 48,
        n_routed_experts: 256, n_shared_experts: 1, moe_intermediate_size: 16, num_experts_per_tok: 8,
        topk_method: 'noaux_tc', n_group: 8, topk_group: 4, norm_topk_prob: true, routed_scaling_factor: 2.5,
        scoring_func: 'sigmoid', rope_scaling: { ...YARN, mscale: 1.0, mscale_all_dim: 1.0 } };
  }
}

/** GPT-2's byte ↔ printable-unicode map that byte-level BPE vocabularies use. */
function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const out: string[] = new Array(256);
  bs.forEach((b, i) => { out[b] = String.fromCodePoint(cs[i]); });
  return out;
}

export const TINY_BOS = '<｜begin▁of▁sentence｜>';
export const TINY_EOS = '<｜end▁of▁sentence｜>';

/** A byte-level BPE tokenizer.json: 256 byte tokens, 2 specials, and merges of common pairs. */
export function tinyTokenizer(vocabSize: number): { tokenizer: Record<string, unknown>; config: Record<string, unknown> } {
  const b2u = bytesToUnicode();
  const vocab: Record<string, number> = {};
  b2u.forEach((u, b) => { vocab[u] = b; });
  const sp = b2u[0x20];
  const pairs = [['h', 'e'], [sp, 't'], [sp, 'a'], ['i', 'n'], ['e', 'r'], [sp, 's'], ['o', 'n'], ['r', 'e'], [sp, 'w'],
    ['l', 'l'], [sp + 't', 'he'], ['a', 'n'], ['o', 'r'], [sp, 'o'], ['e', 'n'], ['l', 'o'], ['he', 'llo'], ['e', 'd']];
  const merges: string[] = [];
  let next = 258;
  for (const [a, b] of pairs) {
    if (next >= vocabSize) break;
    if (vocab[a] === undefined || vocab[b] === undefined || vocab[a + b] !== undefined) continue;
    merges.push(`${a} ${b}`);
    vocab[a + b] = next++;
  }
  const special = (id: number, content: string) => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(256, TINY_BOS), special(257, TINY_EOS)],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: false, byte_fallback: false, vocab, merges },
  };
  // The chat format of DeepSeek-V2's chat models: "User: …\n\nAssistant: …<eos>".
  const chatTemplate = "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    + '{{ bos_token }}{% for message in messages %}'
    + "{% if message['role'] == 'user' %}{{ 'User: ' + message['content'] + '\\n\\n' }}"
    + "{% elif message['role'] == 'assistant' %}{{ 'Assistant: ' + message['content'] + eos_token }}"
    + "{% elif message['role'] == 'system' %}{{ message['content'] + '\\n\\n' }}{% endif %}{% endfor %}"
    + "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";
  const config = { add_bos_token: true, add_eos_token: false, bos_token: TINY_BOS, eos_token: TINY_EOS,
    model_max_length: 2048, tokenizer_class: 'LlamaTokenizerFast', chat_template: chatTemplate };
  return { tokenizer, config };
}

/** Deterministic normal(0, 1) stream (mulberry32 + Box-Muller). */
function normals(seed: number): () => number {
  const { sqrt, log, cos, PI, imul } = Math; // local: global lookups are slow inside vm contexts (jest)
  let s = seed >>> 0;
  const u = () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = imul(t ^ (t >>> 15), t | 1);
    t ^= t + imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return () => sqrt(-2 * log(u() + 1e-12)) * cos(2 * PI * u());
}

export interface MakeTinyOptions {
  kind?: TinyKind;
  seed?: number;
  /**
   * Weight dtype; default bf16 (as published). fp8: DeepSeek-V3's layout — the linear layers'
   * weights as F8_E4M3 with an f32 `weight_scale_inv` per 128×128 block (and a
   * quantization_config in config.json); norms, embeddings, router and lm_head stay bf16.
   */
  dtype?: 'bf16' | 'f32' | 'fp8';
  /** Split the weights over this many shards with an index; default 1 (model.safetensors). */
  shards?: number;
}

const FP8_BLOCK = 128;
/** The weights DeepSeek-V3 stores in FP8: every linear layer inside the decoder layers. */
const FP8_LINEAR = /\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj|gate_proj|up_proj|down_proj)\.weight$/;

/** FP8 with one scale per 128×128 block (scale = block amax / 448), V3's weight format. */
async function quantizeBlocks(t: Tensor): Promise<{ codes: Tensor; scaleInv: Tensor }> {
  const [r, c] = t.shape;
  const v = t.data as Float32Array;
  const sr = Math.ceil(r / FP8_BLOCK);
  const sc = Math.ceil(c / FP8_BLOCK);
  const block = new Float32Array(sr * sc);
  for (let i = 0; i < r; i++) {
    for (let j = 0; j < c; j++) {
      const k = Math.floor(i / FP8_BLOCK) * sc + Math.floor(j / FP8_BLOCK);
      const a = Math.abs(v[i * c + j]);
      if (Number.isFinite(a) && a > block[k]) block[k] = a;
    }
  }
  for (let k = 0; k < block.length; k++) block[k] = block[k] > 0 ? block[k] / 448 : 1;
  // fp8Quantize's tile scales are per (row, 128 columns): the block scale repeated over its rows.
  const perTile = new Float32Array(r * sc);
  for (let i = 0; i < r; i++) for (let j = 0; j < sc; j++) perTile[i * sc + j] = block[Math.floor(i / FP8_BLOCK) * sc + j];
  const { codes } = await ops.fp8Quantize(t, { granularity: 'tile', tileSize: FP8_BLOCK, scales: Tensor.from(perTile, [r, sc]) });
  return { codes, scaleInv: Tensor.from(block, [sr, sc]) };
}

/** Writes a tiny checkpoint of `kind` into `dir` (created if needed). */
export async function makeTiny(dir: string, opts: MakeTinyOptions = {}): Promise<void> {
  const kind = opts.kind ?? 'v2';
  if (!TINY_KINDS.includes(kind)) throw new Dsv2Error('E_ARG', `kind '${kind}' is not one of ${TINY_KINDS.join(', ')}`);
  await writeRandomCheckpoint(dir, tinyConfig(kind), opts);
}

/**
 * Writes a random-weight checkpoint for any DeepSeek config.json object (tiny models,
 * benchmark slices of real configs): every tensor the config implies, std 1/sqrt(fan_in)
 * (embedding and router std 1), norms ≈ 1, plus the tiny byte-level tokenizer.
 */
export async function writeRandomCheckpoint(dir: string, raw: Record<string, unknown>, opts: Omit<MakeTinyOptions, 'kind'> = {}): Promise<void> {
  if (opts.dtype === 'fp8') {
    raw = { ...raw, quantization_config: { activation_scheme: 'dynamic', fmt: 'e4m3', quant_method: 'fp8', weight_block_size: [FP8_BLOCK, FP8_BLOCK] } };
  }
  const cfg = parseConfig(raw);
  try {
    fs.mkdirSync(dir, { recursive: true }); // first: a bad --out fails before any weight is made
    fs.accessSync(dir, fs.constants.W_OK);
  } catch (e) {
    throw new Dsv2Error('E_IO', `cannot write a checkpoint into ${dir} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`, { cause: e });
  }
  const rand = normals(opts.seed ?? 0);
  const tensors: Record<string, Tensor> = {};
  for (const [name, shape] of expectedTensors(cfg)) {
    const n = shape.reduce((a, b) => a * b, 1);
    const v = new Float32Array(n);
    if (name.endsWith('norm.weight')) for (let i = 0; i < n; i++) v[i] = 1 + 0.1 * rand();
    else if (name.endsWith('e_score_correction_bias')) for (let i = 0; i < n; i++) v[i] = 0.05 * rand();
    else {
      // Scaled so activations stay O(1) through the layers: std = 1/sqrt(fan_in); the
      // embedding and router a little larger so logits and routing are far from ties.
      const fanIn = shape[shape.length - 1];
      const std = name.includes('embed_tokens') || name.endsWith('mlp.gate.weight') ? 1 : 1 / Math.sqrt(fanIn);
      for (let i = 0; i < n; i++) v[i] = std * rand();
    }
    const t = Tensor.from(v, shape);
    if (opts.dtype === 'fp8' && FP8_LINEAR.test(name)) {
      const { codes, scaleInv } = await quantizeBlocks(t);
      tensors[name] = codes;
      tensors[`${name}_scale_inv`] = scaleInv;
    } else {
      tensors[name] = opts.dtype === 'f32' || name.endsWith('e_score_correction_bias') ? t : await ops.cast(t, 'bf16');
    }
  }
  fs.writeFileSync(path.join(dir, 'config.json'), `${JSON.stringify(raw, null, 2)}\n`);
  const shards = Math.max(1, opts.shards ?? 1);
  const names = Object.keys(tensors);
  if (shards === 1) {
    await writeSafetensors(path.join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  } else {
    const weightMap: Record<string, string> = {};
    const per = Math.ceil(names.length / shards);
    for (let s = 0; s < shards; s++) {
      const file = `model-${String(s + 1).padStart(5, '0')}-of-${String(shards).padStart(5, '0')}.safetensors`;
      const part: Record<string, Tensor> = {};
      for (const n of names.slice(s * per, (s + 1) * per)) {
        part[n] = tensors[n];
        weightMap[n] = file;
      }
      await writeSafetensors(path.join(dir, file), part, { format: 'pt' });
    }
    const totalSize = Object.values(tensors).reduce((a, t) => a + t.nbytes, 0);
    fs.writeFileSync(path.join(dir, 'model.safetensors.index.json'),
      `${JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2)}\n`);
  }
  const tok = tinyTokenizer(cfg.vocabSize);
  fs.writeFileSync(path.join(dir, 'tokenizer.json'), `${JSON.stringify(tok.tokenizer)}\n`);
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), `${JSON.stringify(tok.config, null, 2)}\n`);
}
