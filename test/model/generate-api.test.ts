/**
 * Model.generate as an API: every bad option is a Dsv2Error with a code that names the value
 * (never a TypeError from deep inside), abort rejects with the signal's reason when it has one,
 * and streamed text costs O(1) decoding per token while the chunks still join to exactly the
 * text of decode(all tokens).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Dsv2Error, Model, makeTiny, type GenerateOptions } from '../../lib';
import { TextStream } from '../../lib/model/tokenizer';
import { BOS, randomPrompt, rmDir, tmpDir } from './util';

const root = tmpDir('gen-api');
const dir = path.join(root, 'tiny');
let model: Model;

beforeAll(async () => {
  await makeTiny(dir, { kind: 'v2', seed: 11 });
  model = await Model.load(dir, { device: 'cpu' });
});
afterAll(async () => {
  await model?.dispose();
  rmDir(root);
});

async function codeOf(p: () => Promise<unknown>): Promise<[string, string]> {
  try {
    await p();
  } catch (e) {
    if (!(e instanceof Dsv2Error)) throw new Error(`not a Dsv2Error: ${(e as Error)?.stack ?? String(e)}`);
    return [e.code, e.message];
  }
  throw new Error('no error');
}

describe('bad generate() options: a coded error naming the value', () => {
  const tokens = [BOS, 5, 6];
  test.each<[string, unknown, string, RegExp]>([
    ['no options at all', undefined, 'E_ARG', /options object/],
    ['null', null, 'E_ARG', /options object/],
    ['no prompt', {}, 'E_ARG', /one of prompt, messages or tokens/],
    ['two prompts', { prompt: 'a', tokens }, 'E_ARG', /prompt and tokens/],
    ['prompt not a string', { prompt: 5 }, 'E_ARG', /prompt must be a string, got 5/],
    ['tokens not an array', { tokens: '1,2' }, 'E_ARG', /tokens must be an array/],
    ['seed 1.5', { tokens, seed: 1.5 }, 'E_RANGE', /seed = 1.5/],
    ['seed NaN', { tokens, seed: NaN }, 'E_RANGE', /seed = NaN/],
    ['seed "abc"', { tokens, seed: 'abc' }, 'E_ARG', /seed must be an integer or a bigint, got "abc"/],
    ['seed -1', { tokens, seed: -1 }, 'E_RANGE', /seed = -1/],
    ['seed 2^64', { tokens, seed: 1n << 64n }, 'E_RANGE', /seed = 18446744073709551616/],
    ['stop as a string', { tokens, stop: 'x' }, 'E_ARG', /stop must be an array of strings, got "x" \(write \["x"\]\)/],
    ['stop with a number', { tokens, stop: ['a', 3] }, 'E_ARG', /stop must be an array of strings/],
    ['messages not an array', { messages: 'hi' }, 'E_ARG', /messages must be an array/],
    ['messages empty', { messages: [] }, 'E_ARG', /messages is empty/],
    ['a message that is a string', { messages: ['hi'] }, 'E_ARG', /messages\[0\] must be an object/],
    ['a bad role', { messages: [{ role: 'robot', content: 'x' }] }, 'E_ARG', /messages\[0\]\.role = "robot"/],
    ['content not a string', { messages: [{ role: 'user', content: 'a' }, { role: 'user', content: { text: 'x' } }] }, 'E_ARG', /messages\[1\]\.content must be a string/],
    ['maxNewTokens -1', { tokens, maxNewTokens: -1 }, 'E_RANGE', /maxNewTokens = -1/],
    ['maxNewTokens "5"', { tokens, maxNewTokens: '5' }, 'E_ARG', /maxNewTokens must be a number, got "5"/],
    ['temperature NaN', { tokens, temperature: NaN }, 'E_RANGE', /temperature = NaN/],
    ['topP 0', { tokens, topP: 0 }, 'E_RANGE', /topP = 0 must be in \(0, 1\]/],
    ['topK 2.5', { tokens, topK: 2.5 }, 'E_RANGE', /topK = 2.5/],
    ['signal not an AbortSignal', { tokens, signal: {} }, 'E_ARG', /signal must be an AbortSignal/],
  ])('%s', async (_n, opts, code, msg) => {
    const [c, m] = await codeOf(() => model.generate(opts as GenerateOptions).result);
    expect([c, m]).toEqual([code, expect.stringMatching(msg)]);
    expect(model.cache.pagesFree).toBe(model.cache.pages); // nothing held
  });

  test('a chat template that fails to render: E_TEMPLATE', async () => {
    const d = path.join(root, 'bad-template');
    fs.cpSync(dir, d, { recursive: true });
    const cfgFile = path.join(d, 'tokenizer_config.json');
    const cfg = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
    cfg.chat_template = "{% for m in messages %}{{ m.content.no_such_method() }}{% endfor %}";
    fs.writeFileSync(cfgFile, JSON.stringify(cfg));
    const m = await Model.load(d, { device: 'cpu' });
    try {
      const [c, msg] = await codeOf(() => m.generate({ messages: [{ role: 'user', content: 'hi' }] }).result);
      expect(c).toBe('E_TEMPLATE');
      expect(msg).toMatch(/chat template failed to render/);
    } finally {
      await m.dispose();
    }
  });
});

describe('abort', () => {
  const opts = { tokens: randomPrompt('abort', 8), maxNewTokens: 100000 };
  test('AbortSignal.timeout(): rejects with its TimeoutError', async () => {
    const signal = AbortSignal.timeout(1);
    await new Promise((r) => setTimeout(r, 20)); // fired: the reason is set, whatever the model's speed
    const r = model.generate({ ...opts, signal }).result;
    await expect(r).rejects.toMatchObject({ name: 'TimeoutError' });
    expect(model.cache.pagesFree).toBe(model.cache.pages);
  });
  test('abort(reason): rejects with that reason', async () => {
    const ac = new AbortController();
    const mine = new Error('mine');
    const gen = model.generate({ ...opts, signal: ac.signal });
    let n = 0;
    await expect((async () => {
      for await (const _ of gen) if (++n === 3) ac.abort(mine);
    })()).rejects.toBe(mine);
    expect(n).toBe(3);
  });
  test('abort() without a reason: E_ABORTED', async () => {
    const ac = new AbortController();
    ac.abort();
    const [c, m] = await codeOf(() => model.generate({ ...opts, signal: ac.signal }).result);
    expect([c, m]).toEqual(['E_ABORTED', 'the generation was aborted']);
  });
});

describe('streamed text', () => {
  test('chunks join to result.text = decode(tokens), decoding O(1) ids per token', async () => {
    const tok = model.tokenizer!;
    const spy = jest.spyOn(tok, 'decode');
    try {
      // Sampled at temperature 1.5 from a random model: many byte tokens that are not valid
      // UTF-8 on their own, so multi-byte characters and replacement characters both occur.
      const gen = model.generate({ tokens: randomPrompt('stream', 5), maxNewTokens: 400, temperature: 1.5, seed: 3 });
      let joined = '';
      for await (const c of gen) joined += c.text;
      const r = await gen.result;
      expect(r.tokens).toHaveLength(400);
      expect(joined).toBe(r.text);
      const calls = spy.mock.calls.map(([ids]) => ids.length);
      spy.mockRestore();
      expect(r.text).toBe(tok.decode(r.tokens));
      // The old code decoded all tokens every step: Σ = n²/2 = 80,000 ids here. The window
      // restarts whenever the text ends on a complete character, so the ids decoded per token
      // stay a small constant (random bytes leave a character incomplete now and then).
      const total = calls.reduce((a, b) => a + b, 0);
      expect(total).toBeLessThan(20 * 400);
      expect(Math.max(...calls)).toBeLessThan(64);
    } finally {
      spy.mockRestore();
    }
  });

  test('TextStream: multi-byte characters split across byte tokens are held until complete', () => {
    const tok = model.tokenizer!;
    const text = 'héllo wörld — 世界 🙂 done';
    const ids = tok.encode(text, { addBos: false });
    const bytes = Buffer.from(text, 'utf8');
    // Byte-level: each byte is its own token id here unless merged; split every token into bytes' worth.
    const s = new TextStream((x) => tok.decode(x));
    const pieces = ids.map((id) => s.push(id));
    pieces.push(s.flush());
    expect(pieces.join('')).toBe(text);
    expect(pieces.every((p) => !p.includes('\uFFFD'))).toBe(true);
    expect(bytes.length).toBeGreaterThan(text.length); // the case is really multi-byte
    // A lone continuation byte at the end is flushed as U+FFFD (what decode gives), not dropped.
    const s2 = new TextStream((x) => tok.decode(x));
    const cut = tok.encode('a\u00e9', { addBos: false });
    const parts = cut.slice(0, -1).map((id) => s2.push(id));
    parts.push(s2.flush());
    expect(parts.join('')).toBe(tok.decode(cut.slice(0, -1)));
  });
});
