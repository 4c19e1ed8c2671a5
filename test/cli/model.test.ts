/**
 * The model commands of the CLI: generate / logits --json say what the API says (tokens
 * equal, logits exactly equal: JSON prints each f32 value as the shortest decimal that reads
 * back to the same double, so parsing must give the f32 value itself), kv-table reproduces
 * the DeepSeek-V2 paper's Table 1 arithmetic for the published config, make-tiny writes the
 * same loadable checkpoint as makeTiny(), and failures exit non-zero with `dsv2: E_CODE` on
 * stderr and nothing on stdout.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { run } from './run';
import { Model, makeTiny } from '../../lib';
import { checkEqual } from '../reference/compare';
import { BOS, randomPrompt, rmDir, tmpDir } from '../model/util';

const ROOT = path.resolve(__dirname, '../..');
const BIN = path.join(ROOT, 'dist/lib/cli/main.js');
// The published configs (copies of ../shared/configs in test/fixtures: npm test needs nothing beside the repo).
const V2_CONFIG = path.join(ROOT, 'test', 'fixtures', 'configs', 'deepseek-v2.json');
const V2_LITE_CONFIG = path.join(ROOT, 'test', 'fixtures', 'configs', 'deepseek-v2-lite.json');


/** A successful --json run: exit 0 and exactly one JSON document on stdout. */
async function runJson(argv: string[]): Promise<any> {
  const r = await run(argv);
  if (r.code !== 0) throw new Error(`dsv2 ${argv.join(' ')} exited ${r.code}: ${r.err}`);
  expect(r.out.endsWith('\n')).toBe(true);
  return JSON.parse(r.out);
}

const root = tmpDir('cli');
const dir = path.join(root, 'cli-tiny');
afterAll(() => rmDir(root));

let model: Model;
const tokens = randomPrompt('cli', 9);

beforeAll(async () => {
  const r = await run(['make-tiny', '--out', dir, '--kind', 'v2-lite', '--seed', '4', '--dtype', 'f32', '--shards', '2']);
  if (r.code !== 0) throw new Error(`make-tiny failed: ${r.err}`);
  model = await Model.load(dir, { device: 'cpu' });
});
afterAll(async () => model?.dispose());

describe('dsv2 make-tiny', () => {
  test('writes the same files as makeTiny() with the same options, and they load', async () => {
    const api = path.join(root, 'api-tiny');
    await makeTiny(api, { kind: 'v2-lite', seed: 4, dtype: 'f32', shards: 2 });
    const files = fs.readdirSync(dir).sort();
    expect(files).toEqual(fs.readdirSync(api).sort());
    expect(files).toEqual(expect.arrayContaining(['config.json', 'model.safetensors.index.json', 'tokenizer.json', 'tokenizer_config.json',
      'model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors']));
    for (const f of files) expect([f, fs.readFileSync(path.join(dir, f)).equals(fs.readFileSync(path.join(api, f)))]).toEqual([f, true]);
    expect(model.config.architecture).toBe('DeepseekV2ForCausalLM');
    expect(model.config.qLoraRank).toBeNull();
    expect(model.tokenizer).not.toBeNull();
  });

  test('bad options: exit 2, nothing on stdout', async () => {
    for (const argv of [['make-tiny', '--out', path.join(root, 'x'), '--kind', 'v4'], ['make-tiny', '--out', path.join(root, 'x'), '--dtype', 'f16'],
      ['make-tiny', '--kind', 'v2']]) {
      const r = await run(argv);
      expect([argv, r.code, r.out]).toEqual([argv, 2, '']);
      expect(r.err.length).toBeGreaterThan(0);
    }
    expect(fs.existsSync(path.join(root, 'x'))).toBe(false);
  });
});

describe('dsv2 generate --json = Model.generate', () => {
  test.each<[string, string[], Parameters<Model['generate']>[0]]>([
    ['greedy, token prompt', ['--tokens', tokens.join(',')], { tokens }],
    ['sampled with top-k / top-p and a seed', ['--tokens', tokens.join(','), '--temperature', '0.8', '--top-k', '40', '--top-p', '0.9', '--seed', '123'],
      { tokens, temperature: 0.8, topK: 40, topP: 0.9, seed: 123 }],
    ['text prompt', ['--prompt', 'hello there'], { prompt: 'hello there' }],
    ['chat message (template applied)', ['--chat', 'hi, who are you?'], { messages: [{ role: 'user', content: 'hi, who are you?' }] }],
  ])('%s', async (_n, args, opts) => {
    const j = await runJson(['generate', '--model', dir, '--max-new-tokens', '10', '--json', ...args]);
    expect(Object.keys(j).sort()).toEqual(['finishReason', 'promptTokens', 'text', 'tokens']);
    const r = await model.generate({ ...opts, maxNewTokens: 10 }).result;
    expect(j).toEqual({ tokens: r.tokens, text: r.text, finishReason: r.finishReason, promptTokens: r.promptTokens });
  });

  test('--kv-cache fp8 / f32 = a model loaded with that cache', async () => {
    for (const kv of ['fp8', 'f32'] as const) {
      const j = await runJson(['generate', '--model', dir, '--tokens', tokens.join(','), '--max-new-tokens', '12', '--temperature', '1', '--seed', '9', '--kv-cache', kv, '--json']);
      const m = await Model.load(dir, { device: 'cpu', kvCache: kv });
      try {
        expect(j.tokens).toEqual((await m.generate({ tokens, maxNewTokens: 12, temperature: 1, seed: 9 }).result).tokens);
      } finally {
        await m.dispose();
      }
    }
  });

  test('--max-new-tokens 0 gives no tokens', async () => {
    const j = await runJson(['generate', '--model', dir, '--tokens', tokens.join(','), '--max-new-tokens', '0', '--json']);
    expect(j).toEqual({ tokens: [], text: '', finishReason: 'length', promptTokens: tokens.length });
  });

  test('--stop (repeatable) = the API\'s stop; the text ends before the earliest stop string', async () => {
    const free = await model.generate({ tokens, maxNewTokens: 16 }).result;
    // Two stop strings taken from the free-running text: the one that occurs first wins.
    const a = free.text.slice(6, 8);
    const b = free.text.slice(3, 5);
    const j = await runJson(['generate', '--model', dir, '--tokens', tokens.join(','), '--max-new-tokens', '16', '--stop', a, '--stop', b, '--json']);
    const r = await model.generate({ tokens, maxNewTokens: 16, stop: [a, b] }).result;
    expect(j).toEqual({ tokens: r.tokens, text: r.text, finishReason: 'stop', promptTokens: tokens.length });
    expect(r.text).toBe(free.text.slice(0, Math.min(free.text.indexOf(a), free.text.indexOf(b))));
  });

  test('sampling flags = the API\'s options (penalties, min-p, bias, stop ids, ignore-eos, logprobs)', async () => {
    const j = await runJson(['generate', '--model', dir, '--tokens', tokens.join(','), '--max-new-tokens', '8', '--temperature', '0.9', '--seed', '4',
      '--presence-penalty', '0.5', '--frequency-penalty', '1', '--repetition-penalty', '1.2', '--min-p', '0.05', '--logit-bias', '7=3',
      '--logit-bias', '9=-2.5', '--stop-token-id', '3', '--ignore-eos', '--logprobs', '2', '--json']);
    const opts = { tokens, maxNewTokens: 8, temperature: 0.9, seed: 4, presencePenalty: 0.5, frequencyPenalty: 1, repetitionPenalty: 1.2, minP: 0.05,
      logitBias: { 7: 3, 9: -2.5 }, stopTokenIds: [3], ignoreEos: true, logprobs: 2 };
    const chunks = [];
    for await (const c of model.generate(opts)) if (c.token !== null) chunks.push({ token: c.token, logprob: c.logprob, top: c.topLogprobs });
    expect(j.tokens).toEqual(chunks.map((c) => c.token));
    expect(j.logprobs).toEqual(chunks);
    const bad = await run(['generate', '--model', dir, '--tokens', '1', '--logit-bias', '7=500']);
    expect(bad.code).toBe(2);
  });

  test('--system goes before --chat as a system message', async () => {
    const j = await runJson(['generate', '--model', dir, '--system', 'be brief', '--chat', 'hi', '--max-new-tokens', '6', '--json']);
    const messages = [{ role: 'system' as const, content: 'be brief' }, { role: 'user' as const, content: 'hi' }];
    const r = await model.generate({ messages, maxNewTokens: 6 }).result;
    expect(j.tokens).toEqual(r.tokens);
    expect(j.promptTokens).toBe(model.tokenizer!.encodeChat(messages).length);
    expect(j.promptTokens).toBeGreaterThan(model.tokenizer!.encodeChat([messages[1]]).length);
  });
});

describe('dsv2 tokenize = model.tokenizer', () => {
  test('--text and --chat (with --system), --json and plain', async () => {
    const tok = model.tokenizer!;
    expect(await runJson(['tokenize', '--model', dir, '--text', 'hello there', '--json'])).toEqual({ tokens: tok.encode('hello there') });
    const messages = [{ role: 'system' as const, content: 'sys' }, { role: 'user' as const, content: 'hi' }];
    expect(await runJson(['tokenize', '--model', dir, '--system', 'sys', '--chat', 'hi', '--json'])).toEqual({ tokens: tok.encodeChat(messages) });
    const r = await run(['tokenize', '--model', dir, '--text', 'abc']);
    expect(r).toMatchObject({ code: 0, out: `${tok.encode('abc').join(',')}\n` });
    expect(tok.count('hello there')).toBe(tok.encode('hello there').length);
  });
});

describe('dsv2 logits --json = Model.logits, exactly', () => {
  test.each(['prefill', 'decode'] as const)('%s', async (mode) => {
    const j = await runJson(['logits', '--model', dir, '--tokens', tokens.join(','), '--mode', mode, '--json']);
    const l = await model.logits(tokens, { mode });
    const V = model.config.vocabSize;
    expect(j.logits).toHaveLength(tokens.length);
    for (const row of j.logits) expect(row).toHaveLength(V);
    const parsed = Float64Array.from((j.logits as number[][]).flat());
    // exact: the shortest round-trip decimal of an f32 value parses back to that value
    const msg = checkEqual(parsed, Float64Array.from(l.data as Float32Array), { label: `logits ${mode}` });
    if (msg) throw new Error(msg);
  });

  test('--kv-cache f32 = a model with an f32 cache; the default (bf16) differs from it', async () => {
    const j = await runJson(['logits', '--model', dir, '--tokens', tokens.join(','), '--kv-cache', 'f32', '--json']);
    const m = await Model.load(dir, { device: 'cpu', kvCache: 'f32' });
    try {
      const l = Float64Array.from((await m.logits(tokens)).data as Float32Array);
      expect(checkEqual(Float64Array.from((j.logits as number[][]).flat()), l)).toBeNull();
      const def = Float64Array.from((await model.logits(tokens)).data as Float32Array);
      expect(checkEqual(def, l)).not.toBeNull();
    } finally {
      await m.dispose();
    }
  });

  test('without --json: one line per position (token and top ids)', async () => {
    const r = await run(['logits', '--model', dir, '--tokens', tokens.join(',')]);
    expect(r.code).toBe(0);
    const lines = r.out.trimEnd().split('\n');
    expect(lines).toHaveLength(tokens.length);
    lines.forEach((line, i) => expect(line.split('\t').slice(0, 2)).toEqual([String(i), String(tokens[i])]));
  });
});

describe('dsv2 kv-table (DeepSeek-V2 paper, Table 1)', () => {
  // V2: n_h = 128 heads, d_h = 128, d_c = kv_lora_rank = 512, d_R = qk_rope_head_dim = 64, 60 layers.
  const L = 60;
  const expected: Record<string, [number, number]> = {
    // mechanism: [elements per token per layer, bytes per token per layer (bf16: 2 / element)]
    'MHA (128 heads)': [2 * 128 * 128, 2 * 2 * 128 * 128],
    'GQA (8 groups)': [2 * 8 * 128, 2 * 2 * 8 * 128],
    'GQA (4 groups)': [2 * 4 * 128, 2 * 2 * 4 * 128],
    'GQA (2 groups)': [2 * 2 * 128, 2 * 2 * 2 * 128],
    MQA: [2 * 128, 2 * 2 * 128],
    // d_c + d_R = 576 = 4.5·d_h elements (the paper's "(d_c + d_h^R)·l ≈ 4.5 d_h·l")
    'MLA bf16': [576, 1152],
    // e4m3 latent (512 B) + one f32 scale per 128-element tile (4 × 4 B) + bf16 k_pe (128 B)
    'MLA fp8': [576, 512 + 4 * 4 + 2 * 64],
  };

  test.each([4096, 128000])('--context %i from the published config.json', async (context) => {
    const j = await runJson(['kv-table', '--model', V2_CONFIG, '--context', String(context), '--json']);
    expect(j.dH).toBe(128);
    expect(j.context).toBe(context);
    const rows = new Map<string, any>((j.rows as any[]).map((r) => [r.mechanism, r]));
    expect([...rows.keys()].sort()).toEqual(Object.keys(expected).sort());
    for (const [mech, [el, b]] of Object.entries(expected)) {
      const r = rows.get(mech);
      expect({ mech, el: r.elementsPerTokenPerLayer, b: r.bytesPerTokenPerLayer }).toEqual({ mech, el, b });
      expect(r.bytesPerToken).toBe(b * L);
      expect(r.bytesAtContext).toBe(b * L * context);
      expect(r.reductionVsMha).toBeCloseTo((2 * 2 * 128 * 128) / b, 12);
    }
    expect(rows.get('MLA bf16').elementsPerTokenPerLayer).toBe(4.5 * 128);
    // MLA's cache equals GQA with 2.25 groups (the paper's comparison)
    expect(rows.get('MLA bf16').elementsPerTokenPerLayer / (2 * 128)).toBe(2.25);
  });

  test('a checkpoint directory works like its config.json', async () => {
    const d = path.join(root, 'v2-config-dir');
    fs.mkdirSync(d, { recursive: true });
    fs.copyFileSync(V2_CONFIG, path.join(d, 'config.json'));
    const a = await runJson(['kv-table', '--model', d, '--json']);
    const b = await runJson(['kv-table', '--model', V2_CONFIG, '--json']);
    expect(a).toEqual(b);
    expect(a.context).toBe(4096);
  });

  test('V2-Lite: 16 heads, the same 576-element latent', async () => {
    const j = await runJson(['kv-table', '--model', V2_LITE_CONFIG, '--json']);
    const rows = new Map<string, any>((j.rows as any[]).map((r) => [r.mechanism, r]));
    expect(rows.get('MHA (16 heads)').bytesPerTokenPerLayer).toBe(2 * 2 * 16 * 128);
    expect(rows.get('MLA bf16').bytesPerTokenPerLayer).toBe(1152);
    expect(rows.get('MLA fp8').bytesPerTokenPerLayer).toBe(656);
    expect(rows.get('MLA bf16').bytesPerToken).toBe(1152 * 27);
  });
});

describe('errors: exit 1, `dsv2: E_CODE` on stderr, nothing on stdout', () => {
  test.each<[string, () => string[], string]>([
    ['missing checkpoint (logits)', () => ['logits', '--model', path.join(root, 'nope'), '--tokens', '1,2', '--json'], 'E_CHECKPOINT'],
    ['missing checkpoint (generate)', () => ['generate', '--model', path.join(root, 'nope'), '--tokens', '1,2', '--json'], 'E_CHECKPOINT'],
    ['token id outside the vocabulary', () => ['logits', '--model', dir, '--tokens', `${BOS},999`, '--json'], 'E_RANGE'],
    ['generate with a token outside the vocabulary', () => ['generate', '--model', dir, '--tokens', '5,320', '--json'], 'E_RANGE'],
    ['make-tiny --out under a file', () => {
      const f = path.join(root, 'a-file');
      fs.writeFileSync(f, 'x');
      return ['make-tiny', '--out', path.join(f, 'sub')];
    }, 'E_IO'],
    ['device cuda (no CUDA runtime for models)', () => ['generate', '--model', dir, '--tokens', '1', '--device', 'cuda', '--json'], 'E_UNSUPPORTED'],
    ['kv-table of a missing config', () => ['kv-table', '--model', path.join(root, 'nope.json'), '--json'], 'E_CHECKPOINT'],
    ['a text prompt without tokenizer.json', () => {
      const d = path.join(root, 'no-tokenizer');
      if (!fs.existsSync(d)) {
        fs.cpSync(dir, d, { recursive: true });
        fs.rmSync(path.join(d, 'tokenizer.json'));
      }
      return ['generate', '--model', d, '--prompt', 'hello', '--json'];
    }, 'E_CHECKPOINT'],
  ])('%s', async (_n, argv, code) => {
    const r = await run(argv());
    expect({ code: r.code, out: r.out }).toEqual({ code: 1, out: '' });
    expect(r.err).toMatch(new RegExp(`^dsv2: ${code}: `, 'm'));
  });

  test.each<[string, string[]]>([
    ['--kv-cache fp16', ['logits', '--model', 'x', '--tokens', '1', '--kv-cache', 'fp16']],
    ['--tokens a,b', ['logits', '--model', 'x', '--tokens', 'a,b']],
    ['--tokens -1', ['generate', '--model', 'x', '--tokens', '-1']],
    ['--mode sideways', ['logits', '--model', 'x', '--tokens', '1', '--mode', 'sideways']],
    ['--top-p 1.5', ['generate', '--model', 'x', '--tokens', '1', '--top-p', '1.5']],
    ['--max-new-tokens -3', ['generate', '--model', 'x', '--tokens', '1', '--max-new-tokens', '-3']],
    ['logits without --tokens', ['logits', '--model', 'x']],
    ['generate without a prompt', ['generate', '--model', 'x', '--json']],
    ['generate with two prompts', ['generate', '--model', 'x', '--prompt', 'a', '--tokens', '1', '--json']],
    ['generate --system without --chat', ['generate', '--model', 'x', '--prompt', 'a', '--system', 's']],
    ['generate --top-p 0', ['generate', '--model', 'x', '--tokens', '1', '--top-p', '0']],
    ['tokenize without --text or --chat', ['tokenize', '--model', 'x']],
    ['tokenize with both', ['tokenize', '--model', 'x', '--text', 'a', '--chat', 'b']],
    ['an unknown command', ['frobnicate']],
  ])('usage error %s: exit 2, nothing on stdout', async (_n, argv) => {
    const r = await run(argv);
    expect({ code: r.code, out: r.out }).toEqual({ code: 2, out: '' });
    expect(r.err.length).toBeGreaterThan(0);
  });
});

// The built bin (dist/): real exit codes and streams of a child process.
describe('the dsv2 bin (dist/)', () => {
  test('generate --json: exit 0, one JSON line; a bad checkpoint: exit 1, E_CHECKPOINT on stderr only', () => {
    const ok = spawnSync(process.execPath, [BIN, 'generate', '--model', dir, '--tokens', tokens.join(','), '--max-new-tokens', '4', '--json'], { encoding: 'utf8' });
    expect(ok.status).toBe(0);
    const j = JSON.parse(ok.stdout);
    expect(j.tokens).toHaveLength(4);
    expect(ok.stdout.trimEnd().split('\n')).toHaveLength(1);
    const bad = spawnSync(process.execPath, [BIN, 'logits', '--model', path.join(root, 'nope'), '--tokens', '1', '--json'], { encoding: 'utf8' });
    expect(bad.status).toBe(1);
    expect(bad.stdout).toBe('');
    expect(bad.stderr).toMatch(/^dsv2: E_CHECKPOINT: /m);
  });

  test('logits --json past V8\'s string limit (300 positions × 102,400 vocab ≈ 600 MB of JSON): streamed, complete', async () => {
    // One JSON.stringify of the whole answer throws RangeError: Invalid string length above
    // ~2^29 characters; row by row it streams. Counted by a streaming reader, not held.
    const big = path.join(root, 'big-vocab');
    const { tinyConfig, writeRandomCheckpoint } = await import('../../lib/model/tiny');
    await writeRandomCheckpoint(big, { ...tinyConfig('v2'), vocab_size: 102400 }, { seed: 1 });
    const ids = randomPrompt('big', 300).join(',');
    const counter = path.join(root, 'count.js');
    fs.writeFileSync(counter, `let n = 0, rows = 1, head = '', tail = '';
      process.stdin.setEncoding('latin1').on('data', (s) => {
        n += s.length;
        if (head.length < 12) head += s.slice(0, 12);
        const t = tail + s; // a "],[" may straddle two chunks
        for (let i = t.indexOf('],['); i >= 0; i = t.indexOf('],[', i + 1)) if (i + 3 > tail.length) rows++;
        tail = t.slice(-20);
      }).on('end', () => console.log(JSON.stringify({ n, rows, head: head.slice(0, 12), tail: tail.slice(-4) })));`);
    const r = spawnSync('bash', ['-c', `set -o pipefail; "${process.execPath}" "${BIN}" logits --model '${big}' --tokens ${ids} --json 2>"${root}/big-err.txt" | "${process.execPath}" "${counter}"`],
      { encoding: 'utf8', maxBuffer: 1 << 20 });
    expect([r.status, fs.readFileSync(path.join(root, 'big-err.txt'), 'utf8').match(/E_\w+|Error.*/)?.[0] ?? null]).toEqual([0, null]);
    const got = JSON.parse(r.stdout);
    expect(got.n).toBeGreaterThan(2 ** 29); // past the limit the old code died on
    expect(got).toMatchObject({ rows: 300, head: '{"logits":[[', tail: ']]}\n' });
  }, 300_000);

  test('a reader that goes away (| head -c 5, | head -n 1): exit 0, no stack trace', () => {
    for (const [args, reader] of [
      [['generate', '--model', dir, '--tokens', tokens.join(','), '--max-new-tokens', '200'], 'head -c 5'],
      // 150 positions × 320 logits ≈ 1 MB of JSON: well past a pipe's 64 KiB buffer.
      [['logits', '--model', dir, '--tokens', randomPrompt('epipe', 150).join(','), '--json'], 'head -c 100'],
      [['logits', '--model', dir, '--tokens', randomPrompt('epipe', 150).join(',')], 'head -n 1'],
    ] as const) {
      const cmd = `"${process.execPath}" "${BIN}" ${args.map((a) => `'${a}'`).join(' ')} 2>"${root}/err.txt" | ${reader} >/dev/null; echo "\${PIPESTATUS[0]}"`;
      const r = spawnSync('bash', ['-c', cmd], { encoding: 'utf8' });
      expect([args[0], reader, r.stdout.trim()]).toEqual([args[0], reader, '0']);
      const err = fs.readFileSync(path.join(root, 'err.txt'), 'utf8');
      expect(err).not.toMatch(/EPIPE|Error:|    at /);
    }
  });
});
