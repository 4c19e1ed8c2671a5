/**
 * Model.load and generate on a checkpoint of DeepSeek-V2-Lite's widths (hidden 2048, 16 heads,
 * kv_lora 512, dense layer 10,944 wide, 64 routed experts of 1,408 + 2 shared; the vocabulary cut
 * to 32,000 and the depth to 2 layers — one dense, one MoE — so that the file is 1.5 GB, not
 * 31 GB) never stall the event loop for more than 50 ms, and the load's peak host memory stays
 * within 1.3× the weights loaded.
 *
 * The stall is measured twice: perf_hooks.monitorEventLoopDelay's max and a 5 ms interval's
 * largest gap, in two places:
 * - in a plain Node process (the built dist/, as an application runs it): the limit is the
 *   goal, 50 ms, when DSV2_STRICT_STALLS=1 — CI runs this file alone that way; on a quiet
 *   machine the max is ~20 ms;
 * - inside jest (the API, with the memory and progress checks): 500 ms. jest's own heap
 *   (ts-jest, the TypeScript compiler) makes each V8 major GC 30–40 ms, and within the whole
 *   suite both measures also count time the OS did not run an idle JS thread (CPU profiles
 *   show 35–160 ms gaps with the JS thread idle). A JS-side block (the expert stacking this
 *   test was written against held the thread for 6.9 s) fails either limit.
 */
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { Model, info } from '../../lib';
import { rmDir, tmpDir, writeBigCheckpoint } from './util';

jest.setTimeout(300_000);
const LIMIT_MS = process.env.DSV2_STRICT_STALLS === '1' ? 50 : 500;
const JEST_LIMIT_MS = 500;

const LITE = JSON.parse(fs.readFileSync(path.join(__dirname, '../fixtures/configs/deepseek-v2-lite.json'), 'utf8'));
const raw = { ...LITE, num_hidden_layers: 2, vocab_size: 32000, bos_token_id: 0, eos_token_id: 1 };

const root = tmpDir('eventloop');
const dir = path.join(root, 'lite-2l');
let weightBytes = 0;
afterAll(() => rmDir(root));

/** Runs fn while watching the event loop and the RSS. */
async function watch<T>(fn: () => Promise<T>): Promise<{ value: T; maxDelayMs: number; p99Ms: number; maxGapMs: number; peakRss: number; rss0: number }> {
  const h = monitorEventLoopDelay({ resolution: 5 });
  const rss0 = process.memoryUsage.rss();
  let peakRss = rss0;
  let last = performance.now();
  let maxGapMs = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    maxGapMs = Math.max(maxGapMs, now - last - 5);
    last = now;
    peakRss = Math.max(peakRss, process.memoryUsage.rss());
  }, 5);
  h.enable();
  try {
    const value = await fn();
    return { value, maxDelayMs: h.max / 1e6, p99Ms: h.percentile(99) / 1e6, maxGapMs, peakRss: Math.max(peakRss, process.memoryUsage.rss()), rss0 };
  } finally {
    h.disable();
    clearInterval(timer);
  }
}

beforeAll(async () => {
  weightBytes = await writeBigCheckpoint(dir, raw);
  await info(); // the addon loaded (dlopen, once per process) before the watch
  expect(weightBytes).toBeGreaterThan(1.4e9);
});

test(`load (in jest): no event-loop stall over ${JEST_LIMIT_MS} ms, progress moves, peak host memory ≤ 1.3× the weights`, async () => {
  global.gc?.();
  const progress: number[] = [];
  const r = await watch(() => Model.load(dir, { device: 'cpu', maxTokens: 2048, onProgress: (d, t) => progress.push(d / t) }));
  const model = r.value;
  try {
    const mem = model.memory()!;
    const loaded = mem.weights;
    // eslint-disable-next-line no-console
    console.log(`load: max delay ${r.maxDelayMs.toFixed(1)} ms (p99 ${r.p99Ms.toFixed(1)}), max gap ${r.maxGapMs.toFixed(1)} ms, ` +
      `RSS +${((r.peakRss - r.rss0) / 2 ** 20).toFixed(0)} MiB for ${(loaded / 2 ** 20).toFixed(0)} MiB of weights, ${progress.length} progress calls`);
    expect(r.maxDelayMs).toBeLessThan(JEST_LIMIT_MS);
    expect(r.maxGapMs).toBeLessThan(JEST_LIMIT_MS);
    // Peak host memory: the engine's copy of the weights plus what loading holds on the way.
    expect(r.peakRss - r.rss0).toBeLessThan(1.3 * loaded);
    // Progress moves evenly: no step of more than 5% of the bytes.
    expect(progress.length).toBeGreaterThan(50);
    const steps = progress.slice(1).map((p, i) => p - progress[i]);
    expect(Math.max(...steps)).toBeLessThan(0.05);
    expect(progress[progress.length - 1]).toBe(1);

    const g = await watch(() => model.generate({ tokens: [0, 5, 6, 7, 8, 9, 10, 11], maxNewTokens: 8 }).result);
    // eslint-disable-next-line no-console
    console.log(`generate: max delay ${g.maxDelayMs.toFixed(1)} ms (p99 ${g.p99Ms.toFixed(1)}), max gap ${g.maxGapMs.toFixed(1)} ms`);
    expect(g.value.tokens).toHaveLength(8);
    expect(g.maxDelayMs).toBeLessThan(JEST_LIMIT_MS);
    expect(g.maxGapMs).toBeLessThan(JEST_LIMIT_MS);

    // Prefix caching at these widths: the same 1,500-token prompt again, then extended by a
    // few tokens — time to the first token ≤ 20% / 25% of the first request's, same logprobs.
    const prompt = Array.from({ length: 1500 }, (_, i) => 2 + ((i * 7919) % 31000));
    const ttft = async (tokens: number[]) => {
      const t0 = performance.now();
      const gen = model.generate({ tokens, maxNewTokens: 3, logprobs: 0 });
      let first = 0;
      const lp: number[] = [];
      for await (const c of gen) {
        if (!first) first = performance.now() - t0;
        lp.push(c.logprob!);
      }
      return { ms: first, lp, tokens: (await gen.result).tokens };
    };
    const cold = await ttft(prompt);
    const warm = await ttft(prompt);
    const ext = await ttft([...prompt, 11, 12, 13, 14, 15]);
    // eslint-disable-next-line no-console
    console.log(`TTFT, 1500-token prompt: ${cold.ms.toFixed(0)} ms cold, ${warm.ms.toFixed(0)} ms repeated (${(100 * warm.ms / cold.ms).toFixed(1)}%), ` +
      `${ext.ms.toFixed(0)} ms extended by 5 (${(100 * ext.ms / cold.ms).toFixed(1)}%); prefix cache ${JSON.stringify(model.prefixCacheStats())}`);
    expect(warm.ms).toBeLessThan(0.2 * cold.ms);
    expect(ext.ms).toBeLessThan(0.25 * cold.ms);
    expect(warm.tokens).toEqual(cold.tokens);
    expect(warm.lp).toEqual(cold.lp); // bit-identical logits (a 28-token suffix prefilled over 1,472 cached)
  } finally {
    await model.dispose();
  }
});

test(`load and generate in a plain Node process: no event-loop stall over ${LIMIT_MS} ms`, () => {
  const lib = path.resolve(__dirname, '../../dist/lib');
  const script = `
    const { Model } = require(${JSON.stringify(lib)});
    const { monitorEventLoopDelay } = require('node:perf_hooks');
    async function watch(fn) {
      const h = monitorEventLoopDelay({ resolution: 5 });
      let last = performance.now(), gap = 0;
      const t = setInterval(() => { const n = performance.now(); gap = Math.max(gap, n - last - 5); last = n; }, 5);
      h.enable();
      try { const v = await fn(); return { v, delay: h.max / 1e6, gap }; } finally { h.disable(); clearInterval(t); }
    }
    (async () => {
      await require(${JSON.stringify(lib)}).info(); // the addon loaded (once per process)
      const l = await watch(() => Model.load(${JSON.stringify(dir)}, { device: 'cpu', maxTokens: 256 }));
      const g = await watch(() => l.v.generate({ tokens: [0, 5, 6, 7, 8, 9, 10, 11], maxNewTokens: 16 }).result);
      await l.v.dispose();
      console.log(JSON.stringify({ load: { delay: l.delay, gap: l.gap }, generate: { delay: g.delay, gap: g.gap, tokens: g.v.tokens.length } }));
    })();`;
  const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', timeout: 240_000 });
  if (r.status !== 0) throw new Error(r.stderr);
  const m = JSON.parse(r.stdout);
  // eslint-disable-next-line no-console
  console.log(`plain Node: load max delay ${m.load.delay.toFixed(1)} ms (gap ${m.load.gap.toFixed(1)}), generate ${m.generate.delay.toFixed(1)} ms (gap ${m.generate.gap.toFixed(1)})`);
  expect(m.generate.tokens).toBe(16);
  for (const k of ['load', 'generate'] as const) {
    expect([k, m[k].delay < LIMIT_MS, m[k].gap < LIMIT_MS]).toEqual([k, true, true]);
  }
});
