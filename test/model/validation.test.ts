/**
 * Validation of what a checkpoint directory holds, from a fuzzing report: config.json sizes,
 * types and ranges; the safetensors layout (the format's own rule: the tensors' bytes fill the
 * data section contiguously, in offset order, from offset 0 to the end of the file); the
 * checkpoint directory and its shard index. Every refusal is a Dsv2Error with a stable code
 * (E_CHECKPOINT unless the value is valid but unsupported) whose message names the key, tensor
 * or file and the value — raised before anything big is allocated. Valid inputs (the published
 * configs, zero-size tensors, padded headers) are accepted.
 *
 * The published configs are read from test/fixtures/configs (copies), so the suite needs
 * nothing beside the checkout.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Checkpoint, Dsv2Error, Model, SafetensorsFile, Tensor, makeTiny, ops, parseConfig, writeSafetensors } from '../../lib';
import { PRESETS } from '../../lib/model/presets';
import { tinyConfig, TINY_KINDS } from '../../lib/model/tiny';
import { expectRejects } from '../ops/util';
import { rmDir, tmpDir } from './util';

const FIXTURES = path.resolve(__dirname, '../fixtures/configs');
const root = tmpDir('validation');
afterAll(() => rmDir(root));

type Json = Record<string, unknown>;

/** fn() must throw a Dsv2Error with `code` whose message contains every mention. */
function expectThrows(fn: () => unknown, code: string, mentions: readonly (string | RegExp)[], ctx?: unknown): Dsv2Error {
  let err: unknown = null;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  const where = ctx === undefined ? '' : ` (case ${JSON.stringify(ctx)})`;
  if (err === null) throw new Error(`did not throw; expected ${code}${where}`);
  if (!(err instanceof Dsv2Error)) throw new Error(`threw a non-Dsv2Error ${String(err)}${where}`);
  if (err.code !== code) throw new Error(`threw ${err.code} (${err.message}), expected ${code}${where}`);
  for (const m of mentions) {
    const ok = typeof m === 'string' ? err.message.includes(m) : m.test(err.message);
    if (!ok) throw new Error(`error message ${JSON.stringify(err.message)} does not mention ${String(m)}${where}`);
  }
  return err;
}

/** The tiny V2-Lite config with `patch` applied (a key set to undefined is removed). */
function lite(patch: Json = {}): Json {
  const c: Json = { ...tinyConfig('v2-lite'), ...patch };
  for (const [k, v] of Object.entries(patch)) if (v === undefined) delete c[k];
  return c;
}

/** The tiny V2-Lite config with rope_scaling fields patched. */
function yarn(patch: Json): Json {
  const c = tinyConfig('v2-lite');
  return { ...c, rope_scaling: { ...(c.rope_scaling as Json), ...patch } };
}

describe('config.json: sizes are bounded before anything is made from them', () => {
  test.each<[string, unknown]>([
    ['n_routed_experts', 10000000],
    ['n_routed_experts', 1e308],
    ['vocab_size', 2 ** 23],
    ['hidden_size', 1048576],
    ['intermediate_size', 2 ** 30],
    ['moe_intermediate_size', 10000000],
    ['num_attention_heads', 100000],
    ['num_hidden_layers', 100000],
    ['kv_lora_rank', 1000000],
    ['q_lora_rank', 1000000],
    ['qk_nope_head_dim', 100000],
    ['qk_rope_head_dim', 100000],
    ['v_head_dim', 100000],
    ['num_experts_per_tok', 1000000],
    ['n_shared_experts', 1000000],
    ['n_group', 1000000],
    ['topk_group', 1000000],
    ['max_position_embeddings', 2 ** 30],
    ['first_k_dense_replace', 1000000],
    ['moe_layer_freq', 1000000],
  ])('%s = %p → E_CHECKPOINT naming the key and value', (key, value) => {
    const t0 = Date.now();
    expectThrows(() => parseConfig(lite({ [key]: value })), 'E_CHECKPOINT', [key, JSON.stringify(value)]);
    expect(Date.now() - t0).toBeLessThan(1000);
  });

  test('negative, zero, fractional and string sizes', () => {
    for (const [key, value] of [['hidden_size', -64], ['num_hidden_layers', 0], ['vocab_size', 320.5], ['kv_lora_rank', '32'],
      ['n_routed_experts', 0]] as const) {
      expectThrows(() => parseConfig(lite({ [key]: value })), 'E_CHECKPOINT', [key, JSON.stringify(value)], { key, value });
    }
  });

  test('each size at its limit parses (the others tiny): the limits themselves are accepted', () => {
    for (const [key, value] of [['vocab_size', 2 ** 22], ['hidden_size', 65536], ['intermediate_size', 2 ** 18], ['moe_intermediate_size', 65536],
      ['num_hidden_layers', 1024], ['num_attention_heads', 1024], ['kv_lora_rank', 65536], ['q_lora_rank', 65536], ['qk_nope_head_dim', 4096],
      ['qk_rope_head_dim', 4096], ['v_head_dim', 4096], ['n_routed_experts', 4096], ['n_shared_experts', 256], ['max_position_embeddings', 2 ** 24],
      ['moe_layer_freq', 1024], ['first_k_dense_replace', 2]] as const) {
      try {
        parseConfig(lite({ [key]: value }));
      } catch (e) {
        throw new Error(`${key} = ${value}: ${(e as Error).message}`);
      }
    }
  });

  test('sizes each within limits whose product is an impossible model: the parameter total', () => {
    const e = expectThrows(() => parseConfig(lite({ hidden_size: 65536, n_routed_experts: 4096, moe_intermediate_size: 65536, num_hidden_layers: 1024 })),
      'E_CHECKPOINT', ['parameters', '2^40']);
    expect(e.message).toMatch(/MoE 1023 × /);
  });

  test('tiny sizes but 4096 experts × 1024 layers: the tensor-count total', () => {
    expectThrows(() => parseConfig(lite({ n_routed_experts: 4096, num_hidden_layers: 1024, hidden_size: 8, moe_intermediate_size: 1 })),
      'E_CHECKPOINT', ['tensors', '2^20', 'num_hidden_layers 1024', 'n_routed_experts 4096']);
  });

  test('Model.load refuses n_routed_experts 10000000 at once, naming the file, key and value', async () => {
    const dir = path.join(root, 'huge-experts');
    await makeTiny(dir, { kind: 'v2-lite', seed: 1 });
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8')) as Json;
    fs.writeFileSync(path.join(dir, 'config.json'), JSON.stringify({ ...cfg, n_routed_experts: 10000000 }));
    const t0 = Date.now();
    await expectRejects(() => Model.load(dir, { device: 'cpu' }), 'E_CHECKPOINT', [path.join(dir, 'config.json'), 'n_routed_experts', '10000000']);
    expect(Date.now() - t0).toBeLessThan(2000);
  });
});

function readFixture(name: string): Json {
  return JSON.parse(fs.readFileSync(path.join(FIXTURES, name), 'utf8')) as Json;
}

describe('config.json: the published configs and the built-in ones parse', () => {
  test.each([
    ['deepseek-v2.json', { vocabSize: 102400, numLayers: 60, nRoutedExperts: 160, qLoraRank: 1536, bosTokenId: 100000, eosTokenId: 100001 }],
    ['deepseek-v2-lite.json', { vocabSize: 102400, numLayers: 27, nRoutedExperts: 64, qLoraRank: null, bosTokenId: 100000, eosTokenId: 100001 }],
    ['deepseek-v3.json', { vocabSize: 129280, numLayers: 61, nRoutedExperts: 256, qLoraRank: 1536, bosTokenId: 0, eosTokenId: 1 }],
  ])('%s', (file, want) => {
    const c = parseConfig(readFixture(file));
    expect(c).toMatchObject(want);
    expect(c.tieWordEmbeddings).toBe(false);
    expect(Number.isFinite(c.softmaxScale) && c.softmaxScale > 0).toBe(true);
    expect(c.rope.yarn).toMatchObject({ factor: 40, originalMaxPositionEmbeddings: 4096, betaFast: 32, betaSlow: 1 });
  });

  test('the fixtures are the published configs (byte-identical copies when ../shared/configs is present)', () => {
    const shared = path.resolve(__dirname, '../../../shared/configs');
    for (const f of ['deepseek-v2.json', 'deepseek-v2-lite.json', 'deepseek-v3.json']) {
      if (fs.existsSync(path.join(shared, f))) expect(fs.readFileSync(path.join(FIXTURES, f), 'utf8')).toBe(fs.readFileSync(path.join(shared, f), 'utf8'));
    }
  });

  test('V2 softmax scale: 192^-0.5 · (0.1·0.707·ln 40 + 1)²', () => {
    expect(parseConfig(readFixture('deepseek-v2.json')).softmaxScale).toBeCloseTo(0.11472139, 8);
  });

  test('presets and tiny kinds', () => {
    for (const raw of [...Object.values(PRESETS), ...TINY_KINDS.map((k) => tinyConfig(k))]) expect(() => parseConfig(raw)).not.toThrow();
  });

  test('optional fields absent or null take their defaults; eos may be a list', () => {
    const c = parseConfig(lite({ tie_word_embeddings: undefined, norm_topk_prob: null, bos_token_id: null, eos_token_id: [257, 0, 319],
      rope_scaling: null, rms_norm_eps: undefined, topk_method: undefined, hidden_act: null }));
    expect(c).toMatchObject({ tieWordEmbeddings: false, normTopkProb: false, bosTokenId: null, eosTokenId: [257, 0, 319], rmsNormEps: 1e-6,
      topkMethod: 'greedy', rope: { yarn: null } });
    expect(parseConfig(lite({ tie_word_embeddings: true, norm_topk_prob: true })).tieWordEmbeddings).toBe(true);
  });
});

describe('config.json: wrong types and impossible values → E_CHECKPOINT naming the key and value', () => {
  test.each<[string, Json, (string | RegExp)[]]>([
    ['tie_word_embeddings "false" (Boolean("false") is true)', { tie_word_embeddings: 'false' }, ['tie_word_embeddings = "false" must be true or false']],
    ['tie_word_embeddings 0', { tie_word_embeddings: 0 }, ['tie_word_embeddings = 0', 'true or false']],
    ['norm_topk_prob "yes"', { norm_topk_prob: 'yes' }, ['norm_topk_prob = "yes"', 'true or false']],
    ['rms_norm_eps -1', { rms_norm_eps: -1 }, ['rms_norm_eps = -1', '(0, 1)']],
    ['rms_norm_eps 0', { rms_norm_eps: 0 }, ['rms_norm_eps = 0']],
    ['rms_norm_eps 1', { rms_norm_eps: 1 }, ['rms_norm_eps = 1']],
    ['rms_norm_eps "1e-6"', { rms_norm_eps: '1e-6' }, ['rms_norm_eps = "1e-6"', 'finite number']],
    ['routed_scaling_factor -1', { routed_scaling_factor: -1 }, ['routed_scaling_factor = -1']],
    ['routed_scaling_factor 0', { routed_scaling_factor: 0 }, ['routed_scaling_factor = 0']],
    ['rope_theta 0', { rope_theta: 0 }, ['rope_theta = 0', '> 1']],
    ['rope_theta -10000', { rope_theta: -10000 }, ['rope_theta = -10000']],
    ['rope_theta Infinity (JSON 1e999)', { rope_theta: JSON.parse('1e999') as number }, ['rope_theta', 'finite']],
    ['rope_theta "10000"', { rope_theta: '10000' }, ['rope_theta = "10000"']],
    ['bos_token_id = vocab_size', { bos_token_id: 320 }, ['bos_token_id = 320', '[0, 320)']],
    ['bos_token_id -1', { bos_token_id: -1 }, ['bos_token_id = -1']],
    ['bos_token_id 1.5', { bos_token_id: 1.5 }, ['bos_token_id = 1.5']],
    ['bos_token_id "256"', { bos_token_id: '256' }, ['bos_token_id = "256"']],
    ['eos_token_id 400', { eos_token_id: 400 }, ['eos_token_id = 400', '[0, 320)']],
    ['eos_token_id [257, 320]', { eos_token_id: [257, 320] }, ['eos_token_id = [257,320]', 'entry 320']],
    ['eos_token_id [257, "x"]', { eos_token_id: [257, 'x'] }, ['eos_token_id', 'entry "x"']],
    ['eos_token_id {}', { eos_token_id: {} }, ['eos_token_id = {}']],
    ['topk_method ["greedy"] (String(["greedy"]) is "greedy")', { topk_method: ['greedy'] }, ['topk_method = ["greedy"] must be a string']],
    ['scoring_func ["softmax"]', { scoring_func: ['softmax'] }, ['scoring_func = ["softmax"] must be a string']],
    ['hidden_act ["silu"]', { hidden_act: ['silu'] }, ['hidden_act = ["silu"] must be a string']],
    ['num_experts_per_tok 65 > n_routed_experts 64', { num_experts_per_tok: 65 }, ['num_experts_per_tok = 65', 'n_routed_experts = 64']],
    ['first_k_dense_replace 3 > num_hidden_layers 2', { first_k_dense_replace: 3 }, ['first_k_dense_replace = 3', 'num_hidden_layers = 2']],
    ['moe_layer_freq 0', { moe_layer_freq: 0 }, ['moe_layer_freq = 0']],
    ['n_group 128 > n_routed_experts 64', { n_group: 128, topk_method: 'group_limited_greedy' }, ['n_group = 128', 'n_routed_experts = 64']],
    ['architectures "DeepseekV2ForCausalLM" (not a list)', { architectures: 'DeepseekV2ForCausalLM' }, ['architectures = "DeepseekV2ForCausalLM"', 'list']],
    ['model_type 2', { architectures: undefined, model_type: 2 }, ['model_type = 2']],
    ['quantization_config "fp8"', { quantization_config: 'fp8' }, ['quantization_config = "fp8"', 'object']],
    ['weight_block_size [128, 1e9]', { quantization_config: { quant_method: 'fp8', fmt: 'e4m3', weight_block_size: [128, 1e9] } },
      ['weight_block_size = [128,1000000000]']],
  ])('%s', (_n, patch, mentions) => {
    expectThrows(() => parseConfig(lite(patch)), 'E_CHECKPOINT', mentions);
  });

  test.each<[string, Json, (string | RegExp)[]]>([
    ['mscale_all_dim 1e308', { mscale_all_dim: 1e308 }, ['rope_scaling.mscale_all_dim = 1e+308', '<= 10']],
    ['mscale_all_dim -20 (mscale² → 0 or negative base)', { mscale_all_dim: -20 }, ['rope_scaling.mscale_all_dim = -20', '>= 0']],
    ['mscale 1e308', { mscale: 1e308 }, ['rope_scaling.mscale = 1e+308']],
    ['mscale "0.707"', { mscale: '0.707' }, ['rope_scaling.mscale = "0.707"', 'finite number']],
    ['factor 0.5 (< 1)', { factor: 0.5 }, ['rope_scaling.factor = 0.5', '>= 1']],
    ['factor 1e9', { factor: 1e9 }, ['rope_scaling.factor = 1000000000', '<= 65536']],
    ['factor missing', { factor: undefined }, ['rope_scaling.factor is missing']],
    ['beta_fast -1', { beta_fast: -1 }, ['rope_scaling.beta_fast = -1', '> 0']],
    ['beta_slow 0', { beta_slow: 0 }, ['rope_scaling.beta_slow = 0', '> 0']],
    ['beta_fast 0.5 < beta_slow 1', { beta_fast: 0.5 }, ['rope_scaling.beta_fast = 0.5', 'rope_scaling.beta_slow = 1']],
    ['original_max_position_embeddings 4096.5', { original_max_position_embeddings: 4096.5 }, ['rope_scaling.original_max_position_embeddings = 4096.5', 'integer']],
    ['original_max_position_embeddings 0', { original_max_position_embeddings: 0 }, ['rope_scaling.original_max_position_embeddings = 0']],
    ['type ["yarn"]', { type: ['yarn'] }, ['rope_scaling.type = ["yarn"]', 'string']],
  ])('rope_scaling.%s', (_n, patch, mentions) => {
    const raw = yarn(patch);
    const rs = raw.rope_scaling as Json;
    for (const [k, v] of Object.entries(patch)) if (v === undefined) delete rs[k];
    expectThrows(() => parseConfig(raw), 'E_CHECKPOINT', mentions);
    // ops' own readers of a raw config check the same
    expectThrows(() => ops.softmaxScale(raw), 'E_CHECKPOINT', mentions);
    expectThrows(() => ops.ropeFromConfig(raw), 'E_CHECKPOINT', mentions);
  });

  test('rope_scaling "yarn" (not an object) → E_CHECKPOINT; type "linear" → E_UNSUPPORTED', () => {
    expectThrows(() => parseConfig(lite({ rope_scaling: 'yarn' })), 'E_CHECKPOINT', ['rope_scaling = "yarn"', 'object']);
    expectThrows(() => parseConfig(lite({ rope_scaling: ['yarn'] })), 'E_CHECKPOINT', ['rope_scaling = ["yarn"]']);
    expectThrows(() => parseConfig(yarn({ type: 'linear' })), 'E_UNSUPPORTED', ['rope_scaling.type = "linear"']);
  });

  test('within the bounds, the softmax scale and rope tables are finite and positive', async () => {
    for (const [factor, m] of [[65536, 10], [65536, 0], [1, 10]] as const) {
      const c = parseConfig(yarn({ factor, mscale: m, mscale_all_dim: m }));
      expect(Number.isFinite(c.softmaxScale) && c.softmaxScale > 0).toBe(true);
      const t = await ops.ropeTable({ dim: c.rope.dim, maxPositions: 4, theta: c.rope.theta, yarn: c.rope.yarn });
      expect((t.cos.data as Float32Array).every((x) => Number.isFinite(x))).toBe(true);
    }
  });

  test('a config that is not an object', () => {
    expectThrows(() => parseConfig([] as unknown as Json), 'E_CHECKPOINT', ['[]', 'not a JSON object']);
    expectThrows(() => parseConfig(null as unknown as Json), 'E_CHECKPOINT', ['null', 'not a JSON object']);
  });

  test('Model.load: tie_word_embeddings "false" is refused, naming the file, key and value', async () => {
    const dir = path.join(root, 'tie-string');
    await makeTiny(dir, { kind: 'v2-lite', seed: 1 });
    const f = path.join(dir, 'config.json');
    fs.writeFileSync(f, JSON.stringify({ ...JSON.parse(fs.readFileSync(f, 'utf8')), tie_word_embeddings: 'false' }));
    await expectRejects(() => Model.load(dir, { device: 'cpu' }), 'E_CHECKPOINT', [f, 'tie_word_embeddings = "false" must be true or false']);
  });
});

// ---------------------------------------------------------------------------------------------
// safetensors

interface Spec {
  dtype: unknown;
  shape: unknown;
  data_offsets: unknown;
}

/**
 * A safetensors file from a header object (or raw header text) and data bytes. `pad` spaces
 * follow the JSON (default: to 8-byte alignment); `lenDelta` is added to the length field.
 */
function writeRaw(name: string, header: Json | string, data: Buffer, o: { pad?: number; lenDelta?: number; raw?: Buffer } = {}): string {
  const file = path.join(root, name);
  let json = o.raw ?? Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const pad = o.pad ?? (8 - (json.length % 8)) % 8;
  json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length + (o.lenDelta ?? 0)));
  fs.writeFileSync(file, Buffer.concat([len, json, data]));
  return file;
}

/** a: F32 [2, 3] (24 bytes), b: BF16 [4] (8 bytes), c: F32 [1] (4 bytes), contiguous: 36 data bytes. */
function abc(): { header: Record<string, Spec>; data: Buffer } {
  const data = Buffer.alloc(36);
  for (let i = 0; i < 36; i++) data[i] = i;
  return {
    header: {
      a: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] },
      b: { dtype: 'BF16', shape: [4], data_offsets: [24, 32] },
      c: { dtype: 'F32', shape: [1], data_offsets: [32, 36] },
    },
    data,
  };
}

async function openOk(file: string): Promise<SafetensorsFile> {
  return SafetensorsFile.open(file);
}

let fileNo = 0;
const fname = (tag: string) => `${tag}-${fileNo++}.safetensors`;

describe('safetensors: valid files are accepted', () => {
  test('written by writeSafetensors (header padded with spaces): read back exactly', async () => {
    const file = path.join(root, fname('written'));
    const a = Tensor.from(Float32Array.of(1, 2, 3, 4, 5, 6), [2, 3]);
    const z = Tensor.zeros([0, 4], 'f32');
    await writeSafetensors(file, { z, a, é: Tensor.from(Float32Array.of(7), [1]) }, { format: 'pt' });
    const buf = fs.readFileSync(file);
    const n = Number(buf.readBigUInt64LE(0));
    expect((8 + n) % 8).toBe(0); // aligned, counted in bytes (the name é is 2 bytes)
    const st = await openOk(file);
    try {
      expect(st.metadata).toEqual({ format: 'pt' });
      expect([...(await st.read('a')).data]).toEqual([1, 2, 3, 4, 5, 6]);
      expect((await st.read('z')).shape).toEqual([0, 4]);
      expect([...(await st.read('é')).data]).toEqual([7]);
    } finally {
      await st.close();
    }
  });

  test.each([0, 1, 7, 8, 13])('header padded with %i trailing spaces', async (pad) => {
    const { header, data } = abc();
    const st = await openOk(writeRaw(fname('pad'), header, data, { pad }));
    expect([...(await st.read('c')).data]).toEqual([Buffer.from([32, 33, 34, 35]).readFloatLE(0)]);
    await st.close();
  });

  test('zero-size tensors at [0, 0], in the middle, at the end, and of shape [3, 0]', async () => {
    const { header, data } = abc();
    const h: Json = {
      z0: { dtype: 'F32', shape: [0], data_offsets: [0, 0] },
      ...header,
      zmid: { dtype: 'BF16', shape: [3, 0], data_offsets: [24, 24] },
      zin: { dtype: 'I64', shape: [0, 5], data_offsets: [10, 10] }, // inside a's bytes: it takes none of them
      zend: { dtype: 'F8_E4M3', shape: [0], data_offsets: [36, 36] },
    };
    const st = await openOk(writeRaw(fname('zero'), h, data));
    try {
      for (const n of ['z0', 'zmid', 'zin', 'zend']) expect((await st.read(n)).numel).toBe(0);
      expect((await st.read('zmid')).shape).toEqual([3, 0]);
      expect([...(await st.read('b')).data]).toHaveLength(4);
    } finally {
      await st.close();
    }
  });

  test('only zero-size tensors and no data; an empty header {}; __metadata__ null', async () => {
    await (await openOk(writeRaw(fname('only-zero'), { z: { dtype: 'F32', shape: [0], data_offsets: [0, 0] } }, Buffer.alloc(0)))).close();
    await (await openOk(writeRaw(fname('empty'), {}, Buffer.alloc(0)))).close();
    await (await openOk(writeRaw(fname('meta-null'), { __metadata__: null, ...abc().header }, abc().data))).close();
  });

  test('tensors listed out of offset order in the header', async () => {
    const { header, data } = abc();
    const st = await openOk(writeRaw(fname('order'), { c: header.c, a: header.a, b: header.b }, data));
    expect([...st.entries.keys()]).toEqual(['c', 'a', 'b']);
    await st.close();
  });
});

describe('safetensors: the layout rule → E_CHECKPOINT naming the file, tensors and bytes', () => {
  test('header length shortened by its padding (every tensor shifted): bytes left after the last tensor', async () => {
    const { header, data } = abc();
    const file = writeRaw(fname('short'), header, data, { pad: 6, lenDelta: -6 });
    // the JSON still parses; the data section gains the 6 padding bytes at its start
    await expectRejects(() => SafetensorsFile.open(file), 'E_CHECKPOINT', [path.basename(file), '6 bytes follow the last tensor c', 'header length']);
  });

  test('bytes appended after the last tensor', async () => {
    const { header, data } = abc();
    const file = writeRaw(fname('tail'), header, Buffer.concat([data, Buffer.from([1, 2, 3])]));
    await expectRejects(() => SafetensorsFile.open(file), 'E_CHECKPOINT', [path.basename(file), '3 bytes follow the last tensor c (data_offsets end 36)', '39 bytes']);
  });

  test('data but no non-empty tensor', async () => {
    const file = writeRaw(fname('no-tensor'), { z: { dtype: 'F32', shape: [0], data_offsets: [0, 0] } }, Buffer.alloc(16));
    await expectRejects(() => SafetensorsFile.open(file), 'E_CHECKPOINT', [path.basename(file), '16 bytes follow']);
  });

  test('a gap between two tensors', async () => {
    const { header, data } = abc();
    const h = { ...header, b: { ...header.b, data_offsets: [28, 36] }, c: { ...header.c, data_offsets: [36, 40] } };
    const file = writeRaw(fname('gap'), h, Buffer.concat([data, Buffer.alloc(4)]));
    await expectRejects(() => SafetensorsFile.open(file), 'E_CHECKPOINT', [path.basename(file), '[24, 28)', 'between tensors a and b']);
  });

  test('the first tensor not at offset 0', async () => {
    const { header, data } = abc();
    const h = { a: { ...header.a, data_offsets: [4, 28] }, b: { ...header.b, data_offsets: [28, 36] }, c: { ...header.c, data_offsets: [36, 40] } };
    const file = writeRaw(fname('lead'), h, Buffer.concat([data, Buffer.alloc(4)]));
    await expectRejects(() => SafetensorsFile.open(file), 'E_CHECKPOINT', [path.basename(file), '[0, 4)', 'before the first tensor a']);
  });

  test('overlap (reported as such, before any gap it leaves)', async () => {
    const { header, data } = abc();
    const h = { ...header, b: { ...header.b, data_offsets: [20, 28] } };
    const file = writeRaw(fname('overlap'), h, data);
    await expectRejects(() => SafetensorsFile.open(file), 'E_CHECKPOINT', [path.basename(file), 'a [0, 24)', 'b [20, 28)', 'overlap']);
  });

  test('two tensors sharing one byte range', async () => {
    const { header, data } = abc();
    const file = writeRaw(fname('alias'), { ...header, d: header.c }, data);
    await expectRejects(() => SafetensorsFile.open(file), 'E_CHECKPOINT', [path.basename(file), 'c [32, 36)', 'd [32, 36)', 'overlap']);
  });

  test('a zero-size tensor past the end of the data', async () => {
    const { header, data } = abc();
    const file = writeRaw(fname('zero-past'), { ...header, z: { dtype: 'F32', shape: [0], data_offsets: [40, 40] } }, data);
    await expectRejects(() => SafetensorsFile.open(file), 'E_CHECKPOINT', [path.basename(file), 'tensor z', '40', '36 data bytes']);
  });

  test('Model.load of a checkpoint whose header length lost its padding', async () => {
    const dir = path.join(root, 'short-header');
    await makeTiny(dir, { kind: 'v2-lite', seed: 1 });
    const f = path.join(dir, 'model.safetensors');
    const buf = fs.readFileSync(f);
    const n = Number(buf.readBigUInt64LE(0));
    const json = buf.subarray(8, 8 + n).toString('utf8').trimEnd();
    const data = buf.subarray(8 + n);
    // re-padded with 8 spaces (loads), then the length field without them (refused)
    const ok = writeRaw('tiny-padded.safetensors', json, data, { raw: Buffer.from(json), pad: 8 });
    await (await SafetensorsFile.open(ok)).close();
    fs.renameSync(writeRaw('tiny-short.safetensors', json, data, { raw: Buffer.from(json), pad: 8, lenDelta: -8 }), f);
    await expectRejects(() => Model.load(dir, { device: 'cpu' }), 'E_CHECKPOINT', ['model.safetensors', '8 bytes follow the last tensor', 'header length']);
  });
});

describe('safetensors: header values → E_CHECKPOINT naming the file, tensor and value', () => {
  const bad = (tag: string, edit: (h: Json) => void, o: { pad?: number } = {}) => {
    const { header, data } = abc();
    const h: Json = { ...header };
    edit(h);
    return writeRaw(fname(tag), h, data, o);
  };

  test.each<[string, (h: Json) => void, (string | RegExp)[]]>([
    ['dtype ["BF16"] (String(["BF16"]) is "BF16")', (h) => { h.b = { ...(h.b as Spec), dtype: ['BF16'] }; }, ['tensor b', 'dtype ["BF16"] must be a string']],
    ['dtype 7', (h) => { h.b = { ...(h.b as Spec), dtype: 7 }; }, ['tensor b', 'dtype 7 must be a string']],
    ['dtype "constructor" (a name every object has)', (h) => { h.b = { ...(h.b as Spec), dtype: 'constructor' }; }, ['tensor b', '"constructor" is not supported']],
    ['dtype missing', (h) => { h.b = { shape: [4], data_offsets: [24, 32] }; }, ['tensor b', 'dtype undefined']],
    ['shape [2.5]', (h) => { h.c = { ...(h.c as Spec), shape: [2.5] }; }, ['tensor c', 'shape [2.5]']],
    ['shape ["1"]', (h) => { h.c = { ...(h.c as Spec), shape: ['1'] }; }, ['tensor c', 'shape ["1"]']],
    ['shape [-1]', (h) => { h.c = { ...(h.c as Spec), shape: [-1] }; }, ['tensor c', 'shape [-1]']],
    ['shape "1"', (h) => { h.c = { ...(h.c as Spec), shape: '1' }; }, ['tensor c', 'shape "1"']],
    ['data_offsets [32.5, 36]', (h) => { h.c = { ...(h.c as Spec), data_offsets: [32.5, 36] }; }, ['tensor c', 'data_offsets [32.5,36]']],
    ['data_offsets [36, 32]', (h) => { h.c = { ...(h.c as Spec), data_offsets: [36, 32] }; }, ['tensor c', 'data_offsets [36,32]']],
    ['an entry that is not an object', (h) => { h.c = 5; }, ['tensor c', 'entry 5']],
    ['__metadata__ a string', (h) => { h.__metadata__ = 'pt'; }, ['__metadata__ = "pt"', 'object of strings']],
    ['__metadata__ a list', (h) => { h.__metadata__ = ['pt']; }, ['__metadata__ = ["pt"]']],
    ['__metadata__ with a number', (h) => { h.__metadata__ = { format: 'pt', total: 36 }; }, ['__metadata__.total = 36', 'string']],
  ])('%s', async (_n, edit, mentions) => {
    const file = bad('hdr', edit);
    await expectRejects(() => SafetensorsFile.open(file), 'E_CHECKPOINT', [path.basename(file), ...mentions]);
  });

  test('a tensor name twice in the header (JSON.parse would keep the last silently)', async () => {
    const { data } = abc();
    const text = '{"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}, "b": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]},'
      + ' "c": {"dtype": "F32", "shape": [1], "data_offsets": [32, 36]}, "a": {"dtype": "F32", "shape": [6], "data_offsets": [0, 24]}}';
    const file = writeRaw(fname('dup'), text, data);
    await expectRejects(() => SafetensorsFile.open(file), 'E_CHECKPOINT', [path.basename(file), 'tensor "a" appears more than once']);
  });

  test('names with escapes, braces and commas inside strings are not duplicates', async () => {
    const { data } = abc();
    const text = JSON.stringify({ '__metadata__': { 'x,"y": {': '}, "a": [' }, 'a\\"{,': { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] },
      'b"}': { dtype: 'BF16', shape: [4], data_offsets: [24, 32] }, '\u00e9\\': { dtype: 'F32', shape: [1], data_offsets: [32, 36] } });
    await (await SafetensorsFile.open(writeRaw(fname('escapes'), text, data))).close();
  });

  test('header not valid UTF-8', async () => {
    const { data } = abc();
    const raw = Buffer.concat([Buffer.from('{"__metadata__": {"k": "'), Buffer.from([0xff, 0xfe]), Buffer.from('"}, '),
      Buffer.from(JSON.stringify(abc().header).slice(1))]);
    const file = writeRaw(fname('utf8'), '', data, { raw });
    await expectRejects(() => SafetensorsFile.open(file), 'E_CHECKPOINT', [path.basename(file), 'not valid UTF-8']);
  });

  test('header not beginning with "{" (leading spaces)', async () => {
    const { header, data } = abc();
    const file = writeRaw(fname('lead-space'), `  ${JSON.stringify(header)}`, data);
    await expectRejects(() => SafetensorsFile.open(file), 'E_CHECKPOINT', [path.basename(file), "0x20, not '{'"]);
  });

  test('header JSON that is not an object', async () => {
    const file = writeRaw(fname('array'), '[1, 2]', Buffer.alloc(0));
    await expectRejects(() => SafetensorsFile.open(file), 'E_CHECKPOINT', [path.basename(file), 'not a JSON object', '[1,2]']);
  });

  test('a path that is a directory, or missing', async () => {
    const d = path.join(root, 'dir.safetensors');
    fs.mkdirSync(d);
    await expectRejects(() => SafetensorsFile.open(d), 'E_CHECKPOINT', [d, 'directory']);
    await expectRejects(() => SafetensorsFile.open(path.join(root, 'nope.safetensors')), 'E_CHECKPOINT', [path.join(root, 'nope.safetensors'), 'no such file']);
  });
});

// ---------------------------------------------------------------------------------------------
// checkpoint directories

describe('checkpoint directory → E_CHECKPOINT from Model.load naming the path', () => {
  const single = path.join(root, 'ck-single');
  const sharded = path.join(root, 'ck-sharded');
  let n = 0;
  const copy = (src: string, edit: (dir: string) => void): string => {
    const dir = path.join(root, `ck-${n++}`);
    fs.cpSync(src, dir, { recursive: true });
    edit(dir);
    return dir;
  };
  const load = (dir: string) => () => Model.load(dir, { device: 'cpu' });
  const INDEX = 'model.safetensors.index.json';
  const editIndex = (edit: (ix: Json) => void) => copy(sharded, (d) => {
    const f = path.join(d, INDEX);
    const ix = JSON.parse(fs.readFileSync(f, 'utf8')) as Json;
    edit(ix);
    fs.writeFileSync(f, JSON.stringify(ix));
  });

  beforeAll(async () => {
    await makeTiny(single, { kind: 'v2-lite', seed: 5 });
    await makeTiny(sharded, { kind: 'v2-lite', seed: 5, shards: 2 });
  });

  test('the unedited checkpoints load (sanity)', async () => {
    for (const d of [single, sharded]) {
      const ck = await Checkpoint.open(d);
      await ck.close();
    }
  });

  test('model.safetensors is a directory (EISDIR)', async () => {
    const dir = copy(single, (d) => {
      fs.rmSync(path.join(d, 'model.safetensors'));
      fs.mkdirSync(path.join(d, 'model.safetensors'));
    });
    await expectRejects(load(dir), 'E_CHECKPOINT', [path.join(dir, 'model.safetensors'), 'directory']);
  });

  test('a shard named in the index is a directory', async () => {
    const dir = copy(sharded, (d) => {
      const f = path.join(d, 'model-00002-of-00002.safetensors');
      fs.rmSync(f);
      fs.mkdirSync(f);
    });
    await expectRejects(load(dir), 'E_CHECKPOINT', [path.join(dir, 'model-00002-of-00002.safetensors'), 'directory']);
  });

  test('a shard named in the index is missing', async () => {
    const dir = copy(sharded, (d) => fs.rmSync(path.join(d, 'model-00001-of-00002.safetensors')));
    await expectRejects(load(dir), 'E_CHECKPOINT', [path.join(dir, 'model-00001-of-00002.safetensors'), INDEX, 'does not exist']);
  });

  test.each<[string, (ix: Json) => void, (string | RegExp)[]]>([
    ['weight_map a list', (ix) => { ix.weight_map = ['model-00001-of-00002.safetensors']; }, ['weight_map = ["model-00001-of-00002.safetensors"]', 'must be an object']],
    ['weight_map a string', (ix) => { ix.weight_map = 'model.safetensors'; }, ['weight_map = "model.safetensors"', 'must be an object']],
    ['weight_map null', (ix) => { ix.weight_map = null; }, ['weight_map is missing']],
    ['weight_map missing', (ix) => { delete ix.weight_map; }, ['weight_map is missing']],
    ['weight_map empty', (ix) => { ix.weight_map = {}; }, ['names no shard']],
    ['a shard name that is not a string', (ix) => { (ix.weight_map as Json)['model.norm.weight'] = 3; }, ['weight_map names 3', 'model.norm.weight']],
    ['a shard name outside the directory', (ix) => { (ix.weight_map as Json)['model.norm.weight'] = '../x.safetensors'; }, ['"../x.safetensors"', 'model.norm.weight']],
    ['a tensor put in the wrong shard', (ix) => {
      const wm = ix.weight_map as Json;
      wm['model.embed_tokens.weight'] = wm['model.embed_tokens.weight'] === 'model-00001-of-00002.safetensors' ? 'model-00002-of-00002.safetensors' : 'model-00001-of-00002.safetensors';
    }, ['weight_map puts tensor model.embed_tokens.weight in', 'but it is in']],
    ['a tensor no shard holds', (ix) => { (ix.weight_map as Json)['model.nothing'] = 'model-00001-of-00002.safetensors'; }, ['model.nothing', 'no shard holds it']],
  ])('index: %s', async (_n, edit, mentions) => {
    const dir = editIndex(edit);
    await expectRejects(load(dir), 'E_CHECKPOINT', [path.join(dir, INDEX), ...mentions]);
  });

  test('index not JSON, not an object, or a directory', async () => {
    let dir = copy(sharded, (d) => fs.writeFileSync(path.join(d, INDEX), '{"weight_map": {'));
    await expectRejects(load(dir), 'E_CHECKPOINT', [path.join(dir, INDEX), /JSON/]);
    dir = copy(sharded, (d) => fs.writeFileSync(path.join(d, INDEX), '[]'));
    await expectRejects(load(dir), 'E_CHECKPOINT', [path.join(dir, INDEX), '[] is not an index object']);
    dir = copy(sharded, (d) => {
      fs.rmSync(path.join(d, INDEX));
      fs.mkdirSync(path.join(d, INDEX));
    });
    await expectRejects(load(dir), 'E_CHECKPOINT', [path.join(dir, INDEX), 'is a directory']);
  });

  test('config.json not JSON, not UTF-8, not an object, a directory, missing', async () => {
    const cfg = (d: string) => path.join(d, 'config.json');
    let dir = copy(single, (d) => fs.writeFileSync(cfg(d), '{"vocab_size": 320,'));
    await expectRejects(load(dir), 'E_CHECKPOINT', [cfg(dir), 'not valid JSON']);
    dir = copy(single, (d) => fs.writeFileSync(cfg(d), Buffer.concat([Buffer.from('{"model_type": "deepseek_v2'), Buffer.from([0xc3]), Buffer.from('"}')])));
    await expectRejects(load(dir), 'E_CHECKPOINT', [cfg(dir), 'not valid UTF-8']);
    dir = copy(single, (d) => fs.writeFileSync(cfg(d), 'null'));
    await expectRejects(load(dir), 'E_CHECKPOINT', [cfg(dir), 'null is not a JSON object']);
    dir = copy(single, (d) => {
      fs.rmSync(cfg(d));
      fs.mkdirSync(cfg(d));
    });
    await expectRejects(load(dir), 'E_CHECKPOINT', [cfg(dir), 'is a directory']);
    dir = copy(single, (d) => fs.rmSync(cfg(d)));
    await expectRejects(load(dir), 'E_CHECKPOINT', [cfg(dir), 'no such file']);
  });

  test('the checkpoint path itself: missing, or a file', async () => {
    await expectRejects(load(path.join(root, 'no-such-dir')), 'E_CHECKPOINT', [path.join(root, 'no-such-dir'), 'no such directory']);
    await expectRejects(load(path.join(single, 'model.safetensors')), 'E_CHECKPOINT', [path.join(single, 'model.safetensors'), 'not a directory']);
  });

  test('Checkpoint.readConfig names the path and keeps the code', () => {
    const dir = copy(single, (d) => {
      const f = path.join(d, 'config.json');
      fs.writeFileSync(f, JSON.stringify({ ...JSON.parse(fs.readFileSync(f, 'utf8')), hidden_act: 'gelu' }));
    });
    expectThrows(() => Checkpoint.readConfig(dir), 'E_UNSUPPORTED', [path.join(dir, 'config.json'), 'hidden_act "gelu"']);
  });
});
