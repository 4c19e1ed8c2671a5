/**
 * Automatic prefix caching: a repeated or extended prompt reuses the cached pages of earlier
 * generations and computes only what is new — with results bit-identical to a model without
 * the cache (tokens, and the logits seen through logprobs); pages are owned by a sequence or by
 * the cache, never lost; LRU eviction makes room when the cache runs short.
 */
import * as path from 'node:path';
import { Model, makeTiny, type GenerateOptions } from '../../lib';
import { randomPrompt, rmDir, tmpDir } from './util';

const root = tmpDir('prefix');
const dir = path.join(root, 'tiny');
beforeAll(() => makeTiny(dir, { kind: 'v2', seed: 8 }));
afterAll(() => rmDir(root));

async function withModels(opts: { kvCache?: 'bf16' | 'fp8'; weights?: 'int8'; maxTokens?: number },
  fn: (cached: Model, plain: Model) => Promise<void>): Promise<void> {
  const cached = await Model.load(dir, { device: 'cpu', ...opts });
  const plain = await Model.load(dir, { device: 'cpu', ...opts, prefixCache: false });
  try {
    await fn(cached, plain);
    // Every page is owned: by the prefix cache, since no generation runs now.
    expect(cached.cache.pagesUsed).toBe(cached.prefixCacheStats()!.pages);
    cached.clearPrefixCache();
    expect(cached.cache.pagesUsed).toBe(0);
    expect(plain.cache.pagesUsed).toBe(0);
    expect(plain.prefixCacheStats()).toBeNull();
  } finally {
    await cached.dispose();
    await plain.dispose();
  }
}

/** Tokens and per-token logprobs (raw-logit log-softmax of every step: a bitwise view of the logits). */
async function run(m: Model, opts: GenerateOptions): Promise<{ tokens: number[]; lp: number[]; top: number[] }> {
  const lp: number[] = [];
  const top: number[] = [];
  const gen = m.generate({ logprobs: 3, ...opts });
  for await (const c of gen) {
    if (c.token === null) continue;
    lp.push(c.logprob!);
    top.push(...c.topLogprobs!.map((x) => x.logprob));
  }
  return { tokens: (await gen.result).tokens, lp, top };
}

describe.each([
  ['native engine, bf16 cache', { kvCache: 'bf16' as const }],
  ['native engine, fp8 cache', { kvCache: 'fp8' as const }],
  ['native engine, int8 weights', { weights: 'int8' as const }],
])('%s', (_n, opts) => {
  test('repeated and extended prompts: hits, and bit-identical results', async () => {
    await withModels(opts, async (cached, plain) => {
      const prompt = randomPrompt('prefix', 150);
      const first = await run(cached, { tokens: prompt, maxNewTokens: 50 });
      expect(first).toEqual(await run(plain, { tokens: prompt, maxNewTokens: 50 }));
      const s1 = cached.prefixCacheStats()!;
      expect(s1.hitTokens).toBe(0);
      expect(s1.pages).toBe(2); // the prompt's full pages (150 tokens: two of 64); decoded tokens are not cached

      // The same prompt again: two full pages of it are cached (at least one token is computed).
      const again = await run(cached, { tokens: prompt, maxNewTokens: 50 });
      expect(again).toEqual(first);
      expect(cached.prefixCacheStats()!.hitTokens - s1.hitTokens).toBe(128);

      // A chat's next turn: the prompt, the answer, more tokens — the prompt's two pages are
      // reused; this turn's prompt (answer included) is prefilled, so its three full pages are
      // cached for the turn after, which reuses them.
      const next = [...prompt, ...first.tokens, ...randomPrompt('turn', 9).slice(1)];
      let before = cached.prefixCacheStats()!.hitTokens;
      const ext = await run(cached, { tokens: next, maxNewTokens: 20, temperature: 0.8, seed: 5 });
      expect(cached.prefixCacheStats()!.hitTokens - before).toBe(128);
      expect(ext).toEqual(await run(plain, { tokens: next, maxNewTokens: 20, temperature: 0.8, seed: 5 }));
      const third = [...next, ...ext.tokens, ...randomPrompt('turn3', 5).slice(1)];
      before = cached.prefixCacheStats()!.hitTokens;
      const t3 = await run(cached, { tokens: third, maxNewTokens: 10 });
      expect(cached.prefixCacheStats()!.hitTokens - before).toBe(192);
      expect(t3).toEqual(await run(plain, { tokens: third, maxNewTokens: 10 }));
    });
  });
});

test('concurrent generations share a cached prefix (pinned), and still equal the plain model', async () => {
  await withModels({}, async (cached, plain) => {
    const prompt = randomPrompt('shared', 140);
    await cached.generate({ tokens: prompt, maxNewTokens: 4 }).result; // caches two pages
    const variants = [0, 1, 2, 3].map((k) => [...prompt, ...randomPrompt(`v${k}`, 6).slice(1)]);
    const got = await Promise.all(variants.map((t, k) => run(cached, { tokens: t, maxNewTokens: 12, temperature: k ? 1 : 0, seed: k })));
    for (let k = 0; k < variants.length; k++) {
      expect(got[k]).toEqual(await run(plain, { tokens: variants[k], maxNewTokens: 12, temperature: k ? 1 : 0, seed: k }));
    }
    expect(cached.prefixCacheStats()!.hitTokens).toBeGreaterThanOrEqual(4 * 128);
  });
});

test('a full cache evicts least recently used pages (leaves first) to make room', async () => {
  // 6 pages of 64 tokens in all.
  await withModels({ maxTokens: 384 }, async (cached, plain) => {
    const a = randomPrompt('lru-a', 130);
    const b = randomPrompt('lru-b', 130);
    await cached.generate({ tokens: a, maxNewTokens: 2 }).result; // 2 pages cached
    await cached.generate({ tokens: b, maxNewTokens: 2 }).result; // 2 more
    await cached.generate({ tokens: a, maxNewTokens: 2 }).result; // a used again: b is now the LRU
    expect(cached.prefixCacheStats()!.pages).toBe(4);
    // Needs 4 pages: 2 are free, b's 2 are evicted (its leaf first, then its root).
    const c = randomPrompt('lru-c', 250);
    const r = await run(cached, { tokens: c, maxNewTokens: 3 });
    expect(r).toEqual(await run(plain, { tokens: c, maxNewTokens: 3 }));
    const s = cached.prefixCacheStats()!;
    expect(s.evictedPages).toBe(2);
    const before = s.hitTokens;
    await cached.generate({ tokens: a, maxNewTokens: 1 }).result; // a survived
    expect(cached.prefixCacheStats()!.hitTokens - before).toBe(128);
  });
});

test('aborts and errors give their pages back (to the cache when full and valid, else freed)', async () => {
  await withModels({}, async (cached) => {
    const prompt = randomPrompt('abort', 200);
    const ac = new AbortController();
    let n = 0;
    await expect((async () => {
      for await (const _ of cached.generate({ tokens: prompt, maxNewTokens: 100, signal: ac.signal })) if (++n === 5) ac.abort();
    })()).rejects.toMatchObject({ code: 'E_ABORTED' });
    await expect(cached.generate({ tokens: [...prompt, 99999] }).result).rejects.toMatchObject({ code: 'E_RANGE' });
    expect(cached.prefixCacheStats()!.pages).toBe(3); // the 200-token prompt's three full pages
  });
});
