/**
 * Bad checkpoints, aborts, concurrency and bad token ids: every failure is a Dsv2Error with
 * the documented code whose message names the file / tensor and the values that disagree;
 * nothing crashes, and the model and its KV cache stay usable and clean afterwards.
 *
 * The corrupt checkpoints are a good tiny V2-Lite checkpoint edited at the byte level (our own
 * header reader/writer below, not the library's).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Dsv2Error, Model, makeTiny, type Tensor } from '../../lib';
import { expectRejects } from '../ops/util';
import { checkEqual } from '../reference/compare';
import { BOS as BOS_ID, randomPrompt, rmDir, tmpDir } from './util';

const root = tmpDir('checkpoint');
const base = path.join(root, 'base');
afterAll(() => rmDir(root));

interface StEntry {
  dtype: string;
  shape: number[];
  data_offsets: [number, number];
}
interface StFile {
  header: Record<string, StEntry | Record<string, string>>;
  data: Buffer;
}

function readSt(file: string): StFile {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  return { header: JSON.parse(buf.subarray(8, 8 + n).toString('utf8')), data: buf.subarray(8 + n) };
}

/** Writes header + data; `rawHeader` replaces the JSON text, `headerLen` the length field. */
function writeSt(file: string, st: StFile, o: { rawHeader?: string; headerLen?: bigint } = {}): void {
  const json = Buffer.from(o.rawHeader ?? JSON.stringify(st.header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(o.headerLen ?? BigInt(json.length));
  fs.writeFileSync(file, Buffer.concat([len, json, st.data]));
}

function entry(st: StFile, name: string): StEntry {
  const e = st.header[name] as StEntry | undefined;
  if (!e) throw new Error(`fixture: no tensor ${name}`);
  return e;
}

/** The tensor whose bytes end last in the file. */
function lastTensor(st: StFile): string {
  let best = '';
  let end = -1;
  for (const [k, v] of Object.entries(st.header)) {
    if (k === '__metadata__') continue;
    const e = v as StEntry;
    if (e.data_offsets[1] > end) {
      end = e.data_offsets[1];
      best = k;
    }
  }
  return best;
}

let counter = 0;
/** A copy of the base checkpoint, edited by `edit(dir)`. */
function variant(edit: (dir: string) => void): string {
  const dir = path.join(root, `v${counter++}`);
  fs.cpSync(base, dir, { recursive: true });
  edit(dir);
  return dir;
}

function editSt(edit: (st: StFile, file: string) => void, o?: (st: StFile) => { rawHeader?: string; headerLen?: bigint }): string {
  return variant((dir) => {
    const file = path.join(dir, 'model.safetensors');
    const st = readSt(file);
    edit(st, file);
    writeSt(file, st, o?.(st));
  });
}

function editConfig(edit: (c: Record<string, unknown>) => void): string {
  return variant((dir) => {
    const f = path.join(dir, 'config.json');
    const c = JSON.parse(fs.readFileSync(f, 'utf8')) as Record<string, unknown>;
    edit(c);
    fs.writeFileSync(f, JSON.stringify(c));
  });
}

const f32 = (t: Tensor): Float32Array => t.data as Float32Array;
const bits = (a: Float32Array): Uint32Array => new Uint32Array(a.buffer, a.byteOffset, a.length);

let model: Model;
const prompt = randomPrompt('checkpoint', 9);
let baseLogits: Float32Array;

beforeAll(async () => {
  await makeTiny(base, { kind: 'v2-lite', seed: 21 });
  model = await Model.load(base, { device: 'cpu' });
  baseLogits = f32(await model.logits(prompt));
});
afterAll(async () => model.dispose());

describe('bad checkpoints → E_CHECKPOINT naming the file, tensor and values', () => {
  const load = (dir: string) => () => Model.load(dir, { device: 'cpu' });

  test('truncated file: the last tensor runs past the end', async () => {
    let name = '';
    let size = 0;
    const dir = variant((d) => {
      const f = path.join(d, 'model.safetensors');
      name = lastTensor(readSt(f));
      size = fs.statSync(f).size - 100;
      fs.truncateSync(f, size);
    });
    await expectRejects(load(dir), 'E_CHECKPOINT', ['model.safetensors', name]);
  });

  test('file shorter than the 8-byte length field', async () => {
    const dir = variant((d) => fs.writeFileSync(path.join(d, 'model.safetensors'), Buffer.from([1, 2, 3])));
    await expectRejects(load(dir), 'E_CHECKPOINT', ['model.safetensors', '3 bytes']);
  });

  test('header length past the end of the file', async () => {
    let fileSize = 0;
    const dir = editSt(() => {}, (st) => {
      const n = BigInt(Buffer.byteLength(JSON.stringify(st.header)) + st.data.length + 1);
      fileSize = 8 + Number(n) - 1;
      return { headerLen: n };
    });
    await expectRejects(load(dir), 'E_CHECKPOINT', ['model.safetensors', 'header length', String(fileSize)]);
  });

  test('header length of 2^64 − 1 (no allocation attempted)', async () => {
    const dir = editSt(() => {}, () => ({ headerLen: (1n << 64n) - 1n }));
    await expectRejects(load(dir), 'E_CHECKPOINT', ['model.safetensors', 'header length', '18446744073709551615']);
  });

  test('invalid JSON header', async () => {
    const dir = editSt(() => {}, (st) => {
      const n = Buffer.byteLength(JSON.stringify(st.header));
      return { rawHeader: `{"model.embed_tokens.weight": {"dtype": "BF16",${' '.repeat(n - 48)}` };
    });
    await expectRejects(load(dir), 'E_CHECKPOINT', ['model.safetensors', /JSON/]);
  });

  test('header that is JSON but not an object', async () => {
    const dir = editSt(() => {}, (st) => ({ rawHeader: `[1, 2, 3]${' '.repeat(Buffer.byteLength(JSON.stringify(st.header)) - 9)}` }));
    await expectRejects(load(dir), 'E_CHECKPOINT', ['model.safetensors', /object/]);
  });

  test('overlapping data offsets', async () => {
    const a = 'model.layers.0.input_layernorm.weight';
    const b = 'model.layers.0.post_attention_layernorm.weight';
    const dir = editSt((st) => {
      const ea = entry(st, a);
      const eb = entry(st, b);
      const len = eb.data_offsets[1] - eb.data_offsets[0];
      eb.data_offsets = [ea.data_offsets[0] + 64, ea.data_offsets[0] + 64 + len];
    });
    await expectRejects(load(dir), 'E_CHECKPOINT', ['model.safetensors', a, b, 'overlap']);
  });

  test('data offsets out of range', async () => {
    const name = 'model.layers.1.mlp.experts.3.down_proj.weight';
    let end = 0;
    const dir = editSt((st) => {
      const e = entry(st, name);
      const len = e.data_offsets[1] - e.data_offsets[0];
      e.data_offsets = [st.data.length, st.data.length + len];
      end = st.data.length + len;
    });
    await expectRejects(load(dir), 'E_CHECKPOINT', ['model.safetensors', name, String(end)]);
  });

  test('data offsets that disagree with dtype × shape', async () => {
    const name = 'model.norm.weight';
    const dir = editSt((st) => {
      const e = entry(st, name);
      e.data_offsets = [e.data_offsets[0], e.data_offsets[1] - 2];
    });
    // [64] BF16 needs 128 bytes; the range holds 126
    await expectRejects(load(dir), 'E_CHECKPOINT', ['model.safetensors', name, '126', '128']);
  });

  test('unknown dtype', async () => {
    const name = 'model.layers.0.self_attn.o_proj.weight';
    const dir = editSt((st) => {
      entry(st, name).dtype = 'Q7_K';
    });
    await expectRejects(load(dir), 'E_CHECKPOINT', ['model.safetensors', name, 'Q7_K']);
  });

  test('a non-float dtype for a weight (I32, offsets consistent)', async () => {
    const name = 'model.layers.0.self_attn.kv_a_layernorm.weight'; // [32]
    const dir = editSt((st) => {
      const e = entry(st, name);
      // its old bytes stay held (by a tensor the config does not use): the data section has no gap
      st.header['unused.filler'] = { dtype: e.dtype, shape: e.shape, data_offsets: e.data_offsets };
      e.dtype = 'I32';
      e.data_offsets = [st.data.length, st.data.length + 32 * 4];
      st.data = Buffer.concat([st.data, Buffer.alloc(32 * 4)]);
    });
    await expectRejects(load(dir), 'E_CHECKPOINT', [name, 'I32']);
  });

  test('bad shape entries (negative, non-integer)', async () => {
    for (const shape of [[-1, 64], [1.5, 64]]) {
      const name = 'model.layers.0.self_attn.o_proj.weight';
      const dir = editSt((st) => {
        entry(st, name).shape = shape;
      });
      await expectRejects(load(dir), 'E_CHECKPOINT', ['model.safetensors', name], { shape });
    }
  });

  test('a shape that contradicts config.json (same byte count)', async () => {
    const name = 'model.layers.0.self_attn.kv_a_proj_with_mqa.weight'; // [dC + dR, H] = [40, 64]
    const dir = editSt((st) => {
      entry(st, name).shape = [64, 40];
    });
    await expectRejects(load(dir), 'E_CHECKPOINT', [name, '[64, 40]', '[40, 64]']);
  });

  test('a missing tensor', async () => {
    const name = 'model.layers.1.mlp.experts.5.up_proj.weight';
    const dir = editSt((st) => {
      // renamed, not deleted: its bytes stay held, so the file itself is valid
      st.header[`${name}.renamed`] = st.header[name];
      delete st.header[name];
    });
    await expectRejects(load(dir), 'E_CHECKPOINT', [name, 'missing']);
  });

  test.each<[string, (c: Record<string, unknown>) => void, (string | RegExp)[]]>([
    ['hidden_size 64 → 72', (c) => { c.hidden_size = 72; }, ['model.embed_tokens.weight', '[320, 64]', '[320, 72]']],
    ['kv_lora_rank 32 → 24', (c) => { c.kv_lora_rank = 24; }, ['kv_a_proj_with_mqa', '[40, 64]', '[32, 64]']],
    ['num_hidden_layers 2 → 3', (c) => { c.num_hidden_layers = 3; }, ['model.layers.2.', 'missing']],
    ['n_routed_experts 64 → 96', (c) => { c.n_routed_experts = 96; }, ['mlp.gate.weight', '[64, 64]', '[96, 64]']],
    ['q_lora_rank null → 48 (V2-Lite has q_proj)', (c) => { c.q_lora_rank = 48; }, ['q_a_proj', 'missing']],
    ['vocab_size 320 → 400', (c) => { c.vocab_size = 400; }, ['model.embed_tokens.weight', '[320, 64]', '[400, 64]']],
  ])('config.json contradicting the weights: %s', async (_n, edit, mentions) => {
    await expectRejects(load(editConfig(edit)), 'E_CHECKPOINT', mentions);
  });

  test('config.json missing, not JSON, or with an invalid value', async () => {
    await expectRejects(load(variant((d) => fs.rmSync(path.join(d, 'config.json')))), 'E_CHECKPOINT', ['config.json']);
    await expectRejects(load(variant((d) => fs.writeFileSync(path.join(d, 'config.json'), '{"hidden_size": 64,'))), 'E_CHECKPOINT', ['config.json', /JSON/]);
    await expectRejects(load(editConfig((c) => { c.hidden_size = -64; })), 'E_CHECKPOINT', ['hidden_size', '-64']);
    await expectRejects(load(editConfig((c) => { c.num_attention_heads = 'four'; })), 'E_CHECKPOINT', ['num_attention_heads', 'four']);
  });

  test('not a directory; no weights at all', async () => {
    await expectRejects(load(path.join(root, 'does-not-exist')), 'E_CHECKPOINT', ['does-not-exist']);
    await expectRejects(load(path.join(base, 'config.json')), 'E_CHECKPOINT', ['config.json']);
    await expectRejects(load(variant((d) => fs.rmSync(path.join(d, 'model.safetensors')))), 'E_CHECKPOINT', ['safetensors']);
  });

  test('sharded: index naming a missing shard; a tensor in two shards; invalid index JSON', async () => {
    const sharded = path.join(root, 'sharded');
    await makeTiny(sharded, { kind: 'v2-lite', seed: 21, shards: 2 });
    const missing = path.join(root, 'sharded-missing');
    fs.cpSync(sharded, missing, { recursive: true });
    fs.rmSync(path.join(missing, 'model-00002-of-00002.safetensors'));
    await expectRejects(load(missing), 'E_CHECKPOINT', ['model-00002-of-00002.safetensors']);

    const dup = path.join(root, 'sharded-dup');
    fs.cpSync(sharded, dup, { recursive: true });
    // copy a tensor of shard 1 into shard 2 as well (header entry + its bytes appended)
    const s1 = readSt(path.join(dup, 'model-00001-of-00002.safetensors'));
    const f2 = path.join(dup, 'model-00002-of-00002.safetensors');
    const s2 = readSt(f2);
    const name = 'model.embed_tokens.weight';
    const e = entry(s1, name);
    const bytes = s1.data.subarray(e.data_offsets[0], e.data_offsets[1]);
    s2.header[name] = { ...e, data_offsets: [s2.data.length, s2.data.length + bytes.length] };
    s2.data = Buffer.concat([s2.data, bytes]);
    writeSt(f2, s2);
    await expectRejects(load(dup), 'E_CHECKPOINT', [name, 'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']);

    const badIndex = path.join(root, 'sharded-bad-index');
    fs.cpSync(sharded, badIndex, { recursive: true });
    fs.writeFileSync(path.join(badIndex, 'model.safetensors.index.json'), '{"weight_map": ');
    await expectRejects(load(badIndex), 'E_CHECKPOINT', ['model.safetensors.index.json']);
  });

  test('an unreadable tokenizer.json fails the load; a missing one only fails text prompts', async () => {
    await expectRejects(load(variant((d) => fs.writeFileSync(path.join(d, 'tokenizer.json'), '{"model": '))), 'E_CHECKPOINT', ['tokenizer.json']);
    const dir = variant((d) => fs.rmSync(path.join(d, 'tokenizer.json')));
    const m = await Model.load(dir, { device: 'cpu' });
    try {
      expect(m.tokenizer).toBeNull();
      await expectRejects(() => m.generate({ prompt: 'hello', maxNewTokens: 2 }).result, 'E_CHECKPOINT', ['tokenizer.json']);
      await expectRejects(() => m.generate({ messages: [{ role: 'user', content: 'hi' }], maxNewTokens: 2 }).result, 'E_CHECKPOINT', ['tokenizer.json']);
      // token prompts need no tokenizer; the text is empty without one
      const r = await m.generate({ tokens: prompt, maxNewTokens: 3 }).result;
      expect(r.tokens).toHaveLength(3);
      expect(r.text).toBe('');
      expect(m.cache.pagesUsed).toBe(0);
    } finally {
      await m.dispose();
    }
  });

  test('the loaded model is unaffected by all of the above', async () => {
    expect(checkEqual(bits(f32(await model.logits(prompt))), bits(baseLogits), { hex: true })).toBeNull();
  });
});

describe('extra tensors', () => {
  test('tensors the config does not use are reported in extraTensors, and change nothing', async () => {
    const extras = ['model.layers.2.eh_proj.weight', 'model.layers.2.enorm.weight', 'something.else'];
    const dir = editSt((st) => {
      for (const [i, name] of extras.entries()) {
        const bytes = Buffer.alloc(16 * 2 * (i + 1), 0x3f);
        st.header[name] = { dtype: 'BF16', shape: [16 * (i + 1)], data_offsets: [st.data.length, st.data.length + bytes.length] };
        st.data = Buffer.concat([st.data, bytes]);
      }
    });
    const m = await Model.load(dir, { device: 'cpu' });
    try {
      expect([...m.extraTensors]).toEqual([...extras].sort());
      expect(checkEqual(bits(f32(await m.logits(prompt))), bits(baseLogits), { hex: true })).toBeNull();
    } finally {
      await m.dispose();
    }
    expect([...model.extraTensors]).toEqual([]);
  });
});

describe('abort', () => {
  test('a signal aborted before load → E_ABORTED', async () => {
    const ac = new AbortController();
    ac.abort();
    await expectRejects(() => Model.load(base, { device: 'cpu', signal: ac.signal }), 'E_ABORTED');
  });

  test('aborted while loading (from the progress callback) → E_ABORTED; progress is monotone up to the total', async () => {
    const ac = new AbortController();
    let calls = 0;
    await expectRejects(() => Model.load(base, {
      device: 'cpu',
      signal: ac.signal,
      onProgress: () => {
        if (++calls === 5) ac.abort();
      },
    }), 'E_ABORTED');
    expect(calls).toBeGreaterThanOrEqual(5);
    // ... and a normal load reports monotone progress that ends at the total
    const seen: [number, number][] = [];
    const m = await Model.load(base, { device: 'cpu', onProgress: (d, t) => seen.push([d, t]) });
    await m.dispose();
    expect(seen.length).toBeGreaterThan(10);
    const total = seen[0][1];
    for (let i = 1; i < seen.length; i++) {
      expect(seen[i][1]).toBe(total);
      expect(seen[i][0]).toBeGreaterThanOrEqual(seen[i - 1][0]);
    }
    expect(seen[seen.length - 1][0]).toBe(total);
  });

  test('aborted during generation → E_ABORTED from the stream and the result; every cache page is free', async () => {
    const ac = new AbortController();
    const g = model.generate({ tokens: prompt, maxNewTokens: 40, temperature: 0, signal: ac.signal });
    const got: number[] = [];
    let err: unknown = null;
    try {
      for await (const c of g) {
        if (c.token !== null) got.push(c.token);
        if (got.length === 3) ac.abort();
      }
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(Dsv2Error);
    expect((err as Dsv2Error).code).toBe('E_ABORTED');
    expect(got).toHaveLength(3);
    await expectRejects(() => g.result, 'E_ABORTED');
    expect(model.cache.pagesUsed).toBe(0);
    expect(model.cache.pagesFree).toBe(model.cache.pages);
  });

  test('aborted before generation starts → E_ABORTED, no pages held', async () => {
    const ac = new AbortController();
    ac.abort();
    await expectRejects(() => model.generate({ tokens: prompt, maxNewTokens: 5, signal: ac.signal }).result, 'E_ABORTED');
    expect(model.cache.pagesUsed).toBe(0);
  });

  test('leaving the loop early (break) frees the pages; result rejects E_ABORTED', async () => {
    const g = model.generate({ tokens: prompt, maxNewTokens: 40 });
    let n = 0;
    for await (const _c of g) {
      if (++n === 2) break;
    }
    await expectRejects(() => g.result, 'E_ABORTED');
    expect(model.cache.pagesUsed).toBe(0);
  });
});

describe('concurrency', () => {
  test('two concurrent generate calls on one model give the tokens each gives alone', async () => {
    const a = { tokens: prompt, maxNewTokens: 12, temperature: 0 };
    const b = { tokens: randomPrompt('other', 30), maxNewTokens: 12, temperature: 0.9, seed: 77 };
    const aloneA = await model.generate(a).result;
    const aloneB = await model.generate(b).result;
    const [ca, cb] = await Promise.all([model.generate(a).result, model.generate(b).result]);
    expect(ca.tokens).toEqual(aloneA.tokens);
    expect(cb.tokens).toEqual(aloneB.tokens);
    // and interleaved with logits calls in prefill and decode mode
    const [la, lb, gc] = await Promise.all([model.logits(prompt, { mode: 'decode' }), model.logits(prompt), model.generate(a).result]);
    expect(checkEqual(bits(f32(lb)), bits(baseLogits), { hex: true })).toBeNull();
    expect(la.shape).toEqual([prompt.length, 320]);
    expect(gc.tokens).toEqual(aloneA.tokens);
    expect(model.cache.pagesUsed).toBe(0);
  });
});

describe('bad token ids → E_RANGE', () => {
  test.each<[string, number[]]>([
    ['= vocab_size', [BOS_ID, 320]],
    ['negative', [BOS_ID, -1]],
    ['fractional', [BOS_ID, 1.5]],
    ['NaN', [BOS_ID, NaN]],
    ['Infinity', [BOS_ID, Infinity]],
    ['2^32 + 5 (wraps to 5 in an Int32Array)', [BOS_ID, 2 ** 32 + 5]],
    ['−2^32 + 3 (wraps to 3 in an Int32Array)', [BOS_ID, -(2 ** 32) + 3]],
  ])('%s', async (_n, tokens) => {
    const bad = String(tokens[1]);
    await expectRejects(() => model.logits(tokens), 'E_RANGE', [bad], { tokens });
    await expectRejects(() => model.logits(tokens, { mode: 'decode' }), 'E_RANGE', [bad], { tokens });
    await expectRejects(() => model.generate({ tokens, maxNewTokens: 2 }).result, 'E_RANGE', [bad], { tokens });
    expect(model.cache.pagesUsed).toBe(0);
  });

  test('an empty prompt → E_RANGE for generate; logits of nothing is [0, V]', async () => {
    await expectRejects(() => model.generate({ tokens: [], maxNewTokens: 2 }).result, 'E_RANGE');
    expect((await model.logits([])).shape).toEqual([0, 320]);
  });

  test('a sequence longer than the model\'s token limit is refused with the sizes, and leaves the cache clean', async () => {
    const m = await Model.load(base, { device: 'cpu', maxTokens: 64 });
    try {
      const long = randomPrompt('long', 65);
      // maxTokens 64: one 64-token page and a 64-row rope table; 65 tokens exceed both
      await expectRejects(() => m.logits(long), 'E_RANGE', ['65', '64']);
      expect(m.cache.pagesUsed).toBe(0);
      await expectRejects(() => m.logits(long, { mode: 'decode' }), 'E_RANGE', ['65', '64']);
      expect(m.cache.pagesUsed).toBe(0);
      // a generation that reaches the limit part-way finishes with 'length': 60 prompt tokens
      // fill positions 0..59, new tokens take 60..63, and the 5th new token is never fed back
      const r = await m.generate({ tokens: long.slice(0, 60), maxNewTokens: 10 }).result;
      expect(r.finishReason).toBe('length');
      expect(r.tokens.length).toBe(5);
      // nothing is held (the 60-token prompt fills no page the prefix cache would keep)
      expect(m.cache.pagesUsed).toBe(0);
      expect(m.prefixCacheStats()!.pages).toBe(0);
      // still usable
      expect((await m.logits(prompt)).shape).toEqual([prompt.length, 320]);
    } finally {
      await m.dispose();
    }
  });

  test('after every error above the model still computes the same logits', async () => {
    expect(checkEqual(bits(f32(await model.logits(prompt))), bits(baseLogits), { hex: true })).toBeNull();
    expect(model.cache.pagesUsed).toBe(0);
  });
});

describe('generation edge cases: nothing generated is not an error', () => {
  test('maxNewTokens 0: no tokens, empty text, finishReason length', async () => {
    const r = await model.generate({ tokens: prompt, maxNewTokens: 0 }).result;
    expect(r).toEqual({ tokens: [], text: '', finishReason: 'length', promptTokens: prompt.length });
    expect(model.cache.pagesUsed).toBe(0);
  });

  /** Runs fn on a copy of the base model whose config.json names `eos` as its EOS id. */
  async function withEos(eos: number | number[], fn: (m: Model) => Promise<void>): Promise<void> {
    const m = await Model.load(editConfig((c) => { c.eos_token_id = eos; }), { device: 'cpu' });
    try {
      await fn(m);
    } finally {
      await m.dispose();
    }
  }

  test('config eos_token_id ends generation: finishReason eos, EOS not returned', async () => {
    const greedy = (await model.generate({ tokens: prompt, maxNewTokens: 6, temperature: 0 }).result).tokens;
    // the first greedy token from the third on that does not occur earlier becomes the EOS id
    const k = greedy.findIndex((t, i) => i >= 2 && !greedy.slice(0, i).includes(t));
    await withEos(greedy[k], async (m) => {
      const r = await m.generate({ tokens: prompt, maxNewTokens: 6, temperature: 0 }).result;
      expect({ tokens: r.tokens, finishReason: r.finishReason }).toEqual({ tokens: greedy.slice(0, k), finishReason: 'eos' });
      expect(r.text).toBe(m.tokenizer!.decode(greedy.slice(0, k)));
      expect(m.cache.pagesUsed).toBe(0);
    });
  });

  test('EOS as the very first generated token (eos_token_id a list): no tokens, empty text, finishReason eos', async () => {
    const first = (await model.generate({ tokens: prompt, maxNewTokens: 1, temperature: 0 }).result).tokens[0];
    await withEos([319, first], async (m) => {
      const r = await m.generate({ tokens: prompt, maxNewTokens: 6, temperature: 0 }).result;
      expect(r).toEqual({ tokens: [], text: '', finishReason: 'eos', promptTokens: prompt.length });
      expect(m.cache.pagesUsed).toBe(0);
    });
  });
});

describe('disposed model', () => {
  test('logits / generate after dispose → E_DISPOSED', async () => {
    const m = await Model.load(base, { device: 'cpu' });
    await m.dispose();
    await expectRejects(() => m.logits(prompt), 'E_DISPOSED');
    await expectRejects(() => m.generate({ tokens: prompt }).result, 'E_DISPOSED');
    await m.dispose(); // idempotent
  });
});
