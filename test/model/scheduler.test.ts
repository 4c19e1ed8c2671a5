/**
 * Admission control and preemption: generations wait for KV pages instead of failing
 * mid-stream; a generation preempted for lack of pages rebuilds its cache and produces exactly
 * what it produces alone (tokens and logprobs, bit for bit); the waiting queue is bounded.
 */
import * as path from 'node:path';
import { Model, makeTiny, type GenerateOptions } from '../../lib';
import { randomPrompt, rmDir, tmpDir } from './util';

const root = tmpDir('sched');
const dir = path.join(root, 'tiny');
let solo: Model;
beforeAll(async () => {
  await makeTiny(dir, { kind: 'v2', seed: 12 });
  solo = await Model.load(dir, { device: 'cpu', prefixCache: false }); // 64 pages: never short
});
afterAll(async () => {
  await solo?.dispose();
  rmDir(root);
});

async function run(m: Model, opts: GenerateOptions): Promise<{ tokens: number[]; lp: number[]; finishReason: string }> {
  const lp: number[] = [];
  const gen = m.generate({ logprobs: 0, ...opts });
  for await (const c of gen) if (c.token !== null) lp.push(c.logprob!);
  const r = await gen.result;
  return { tokens: r.tokens, lp, finishReason: r.finishReason };
}

test('prompts that do not fit together wait their turn; each output is what it is alone', async () => {
  const m = await Model.load(dir, { device: 'cpu', maxTokens: 256 }); // 4 pages of 64
  try {
    const jobs = [0, 1, 2].map((k) => ({ tokens: randomPrompt(`adm${k}`, 150 + k), maxNewTokens: 30, temperature: k ? 0.9 : 0, seed: k }));
    const got = await Promise.all(jobs.map((j) => run(m, j)));
    for (let k = 0; k < jobs.length; k++) expect(got[k]).toEqual(await run(solo, jobs[k]));
    const s = m.schedulerStats();
    expect(s.waitingPeak).toBeGreaterThanOrEqual(1);
    expect(s).toMatchObject({ waiting: 0, running: 0, admitted: 3 });
    expect(m.cache.pagesUsed).toBe(m.prefixCacheStats()!.pages);
  } finally {
    await m.dispose();
  }
});

test('running generations that outgrow the cache: the newest is preempted, recomputed, and unchanged', async () => {
  for (const engine of ['native'] as const) {
    const m = await Model.load(dir, { device: 'cpu', maxTokens: 384 }); // 6 pages
    try {
      // Each starts in 1 page and grows to 4: both fit at first, not together at the end.
      const jobs = [0, 1].map((k) => ({ tokens: randomPrompt(`pre${k}`, 40), maxNewTokens: 200, temperature: k ? 0.7 : 0, seed: 3 + k, ignoreEos: true }));
      const got = await Promise.all(jobs.map((j) => run(m, j)));
      for (let k = 0; k < jobs.length; k++) {
        const alone = await run(solo, jobs[k]);
        expect([engine, k, got[k].tokens]).toEqual([engine, k, alone.tokens]);
        expect(got[k].lp).toEqual(alone.lp);
      }
      expect(m.schedulerStats().preemptions).toBeGreaterThanOrEqual(1);
      expect(m.cache.pagesUsed).toBe(m.prefixCacheStats()!.pages);
    } finally {
      await m.dispose();
    }
  }
});

test('the waiting queue is bounded (E_OVERLOADED); a waiting generation can be aborted', async () => {
  const m = await Model.load(dir, { device: 'cpu', maxTokens: 128, maxQueue: 1, prefixCache: false }); // 2 pages
  try {
    const long = m.generate({ tokens: randomPrompt('q0', 100), maxNewTokens: 20, ignoreEos: true }); // holds both pages
    const it = long[Symbol.asyncIterator]();
    await it.next(); // admitted and running
    const ac = new AbortController();
    const waiting = m.generate({ tokens: randomPrompt('q1', 100), maxNewTokens: 2, signal: ac.signal }).result;
    await new Promise((r) => setTimeout(r, 20));
    expect(m.schedulerStats().waiting).toBe(1);
    await expect(m.generate({ tokens: randomPrompt('q2', 100), maxNewTokens: 2 }).result).rejects.toMatchObject({ code: 'E_OVERLOADED' });
    ac.abort();
    await expect(waiting).rejects.toMatchObject({ code: 'E_ABORTED' });
    expect(m.schedulerStats().waiting).toBe(0);
    while (!(await it.next()).done);
    expect(m.cache.pagesUsed).toBe(0);
    // and now a new one is admitted at once
    expect((await m.generate({ tokens: randomPrompt('q3', 100), maxNewTokens: 2 }).result).tokens.length).toBeGreaterThan(0);
  } finally {
    await m.dispose();
  }
});

test('dispose() while generations wait for pages: they fail with E_DISPOSED, nothing hangs', async () => {
  const m = await Model.load(dir, { device: 'cpu', maxTokens: 128, prefixCache: false });
  const long = m.generate({ tokens: randomPrompt('d0', 100), maxNewTokens: 20, ignoreEos: true });
  const it = long[Symbol.asyncIterator]();
  await it.next();
  const waiting = m.generate({ tokens: randomPrompt('d1', 100), maxNewTokens: 2 }).result;
  await new Promise((r) => setTimeout(r, 20));
  await m.dispose();
  await expect(waiting).rejects.toMatchObject({ code: 'E_DISPOSED' });
  await expect(it.next()).rejects.toMatchObject({ code: 'E_DISPOSED' });
});
