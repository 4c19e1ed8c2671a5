/**
 * Load benchmark of `dsv2 serve`: at each concurrency C (--clients 1,8,32), C clients send R
 * streamed chat requests in all (default R = 4·C, at most 128; each asks for exactly
 * --max-tokens tokens: ignore_eos) and the run reports request and token throughput, time to
 * first token and inter-token latency (p50 / p90 / p99) as seen by the clients, the server's
 * mean decode batch and the prefix-cache hit rate (every request shares a system prompt of
 * about --prompt-tokens characters, as a deployment's requests do; the user turn differs).
 * In-process (a server on 127.0.0.1, port 0, over --model or the built-in demo model), or
 * against a running server with --url. Bounded: R requests per level, each with a timeout.
 *
 *   node dist/scripts/bench/serve.js [--model DIR] [--device cpu|cuda|auto] [--clients 1,8,32]
 *     [--requests R] [--max-tokens 64] [--prompt-tokens 512] [--max-batch 32] [--url URL] [--json] [--save]
 *
 * --save writes bench/results/serve-<device>-<date>.json (in-process runs). Never asserts;
 * exits 1 when a request failed.
 */
import { Model } from '../../lib/model/model';
import { defaultModelDir } from '../../lib/model/default';
import { createServer } from '../../lib/serve';
import { table, writeResults } from './common';

interface Args {
  model?: string;
  device: 'auto' | 'cpu' | 'cuda';
  clients: number[];
  requests: number | null;
  maxTokens: number;
  promptTokens: number;
  maxBatch: number;
  url?: string;
  json: boolean;
  save: boolean;
}

function parse(argv: string[]): Args {
  const a: Args = { device: 'auto', clients: [1, 8, 32], requests: null, maxTokens: 64, promptTokens: 512, maxBatch: 32, json: false, save: false };
  for (let i = 0; i < argv.length; i++) {
    const k = argv[i];
    const v = () => {
      const s = argv[++i];
      if (s === undefined) throw new Error(`${k} needs a value`);
      return s;
    };
    const n = (name: string) => {
      const x = Number(v());
      if (!Number.isSafeInteger(x) || x < 1) throw new Error(`${name} must be a positive integer`);
      return x;
    };
    switch (k) {
      case '--model': a.model = v(); break;
      case '--device': a.device = v() as Args['device']; break;
      case '--clients': {
        a.clients = v().split(',').map(Number);
        if (!a.clients.every((c) => Number.isSafeInteger(c) && c >= 1 && c <= 1024)) throw new Error('--clients must be a comma-separated list of integers in [1, 1024]');
        break;
      }
      case '--requests': a.requests = n(k); break;
      case '--max-tokens': a.maxTokens = n(k); break;
      case '--prompt-tokens': a.promptTokens = n(k); break;
      case '--max-batch': a.maxBatch = n(k); break;
      case '--url': a.url = v(); break;
      case '--json': a.json = true; break;
      case '--save': a.save = true; break;
      default: throw new Error(`unknown argument ${k}`);
    }
  }
  return a;
}

const pct = (xs: number[], p: number) => {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};

interface One { ttft: number; itl: number[]; tokens: number; seconds: number; error?: string }

/** One streamed request; times measured at the client as SSE events arrive. */
async function one(url: string, i: number, a: Args): Promise<One> {
  // A shared system prompt of about promptTokens characters, and a user turn of its own.
  const system = 'You are a helpful assistant. Answer in the words of the King James Bible. '.repeat(Math.ceil(a.promptTokens / 74)).slice(0, a.promptTokens);
  const t0 = performance.now();
  const res = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, signal: AbortSignal.timeout(600_000),
    body: JSON.stringify({ messages: [{ role: 'system', content: system }, { role: 'user', content: `request ${i}: and what did they say?` }], max_tokens: a.maxTokens, temperature: 0, ignore_eos: true, stream: true, stream_options: { include_usage: true } }),
  });
  if (!res.ok || !res.body) return { ttft: NaN, itl: [], tokens: 0, seconds: (performance.now() - t0) / 1000, error: `HTTP ${res.status}: ${await res.text()}` };
  const dec = new TextDecoder();
  let buf = '';
  let ttft = NaN;
  let last = 0;
  const itl: number[] = [];
  let tokens = 0;
  for await (const part of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += dec.decode(part, { stream: true });
    let k: number;
    while ((k = buf.indexOf('\n\n')) >= 0) {
      const ev = buf.slice(0, k);
      buf = buf.slice(k + 2);
      if (!ev.startsWith('data: ') || ev === 'data: [DONE]') continue;
      const o = JSON.parse(ev.slice(6));
      if (o.usage) tokens = o.usage.completion_tokens;
      if (o.error) return { ttft, itl, tokens, seconds: (performance.now() - t0) / 1000, error: o.error.message };
      if (o.choices?.[0]?.delta?.content) {
        const now = performance.now();
        if (Number.isNaN(ttft)) ttft = (now - t0) / 1000;
        else itl.push((now - last) / 1000);
        last = now;
      }
    }
  }
  return { ttft, itl, tokens, seconds: (performance.now() - t0) / 1000 };
}

export async function benchServe(argv: string[]): Promise<number> {
  const a = parse(argv);
  let url = a.url;
  let model: Model | null = null;
  let server: ReturnType<typeof createServer> | null = null;
  if (!url) {
    const dir = a.model ?? (await defaultModelDir());
    model = await Model.load(dir, { device: a.device, maxBatch: a.maxBatch, maxTokens: Math.max(4096, a.maxBatch * (a.promptTokens + a.maxTokens + 64)) });
    server = createServer(model, { maxRunning: a.maxBatch, maxQueue: 256 });
    url = (await server.listen('127.0.0.1', 0)).url;
  }
  const rss0 = process.memoryUsage.rss();
  try {
    const levels = [];
    for (const clients of a.clients) {
      const requests = a.requests ?? Math.min(128, 4 * clients);
      const b0 = model?.batchStats();
      const p0 = model?.prefixCacheStats();
      let next = 0;
      const results: One[] = [];
      const t0 = performance.now();
      await Promise.all(Array.from({ length: Math.min(clients, requests) }, async () => {
        while (next < requests) results.push(await one(url!, next++, a));
      }));
      const wall = (performance.now() - t0) / 1000;
      const ok = results.filter((r) => !r.error);
      const tokens = ok.reduce((s, r) => s + r.tokens, 0);
      const ttft = ok.map((r) => r.ttft).filter((x) => !Number.isNaN(x));
      const itl = ok.flatMap((r) => r.itl);
      const b1 = model?.batchStats();
      const p1 = model?.prefixCacheStats();
      levels.push({
        clients, requests, ok: ok.length, errors: results.length - ok.length, seconds: wall,
        requestsPerS: ok.length / wall, tokensPerS: tokens / wall,
        ttftP50: pct(ttft, 50), ttftP90: pct(ttft, 90), ttftP99: pct(ttft, 99),
        itlP50: pct(itl, 50), itlP90: pct(itl, 90), itlP99: pct(itl, 99),
        meanDecodeBatch: b0 && b1 && b1.steps > b0.steps ? (b1.tokens - b0.tokens) / (b1.steps - b0.steps) : null,
        prefixCacheHitRate: p0 && p1 && p1.queriedTokens > p0.queriedTokens ? (p1.hitTokens - p0.hitTokens) / (p1.queriedTokens - p0.queriedTokens) : null,
        firstError: results.find((r) => r.error)?.error ?? null,
      });
    }
    // A soak's figures (in-process): RSS growth over the run, and pages no one owns afterwards
    // (every generation has ended: the cache should hold only the prefix cache's pages).
    global.gc?.();
    const leakedPages = model ? model.cache.pagesUsed - (model.prefixCacheStats()?.pages ?? 0) : null;
    const summary = {
      device: model?.device ?? 'remote', model: model?.dir ?? a.url, maxTokens: a.maxTokens, promptTokens: a.promptTokens, maxBatch: a.maxBatch, levels,
      rssStartMiB: rss0 / 2 ** 20, rssEndMiB: process.memoryUsage.rss() / 2 ** 20, leakedPages,
    };
    if (a.json) console.log(JSON.stringify(summary));
    else {
      table(levels.map((l) => ({
        device: summary.device, clients: l.clients, requests: `${l.ok}/${l.requests}`, 'req/s': l.requestsPerS, 'tok/s': l.tokensPerS,
        'ttft p50 ms': l.ttftP50 * 1000, 'ttft p99 ms': l.ttftP99 * 1000, 'itl p50 ms': l.itlP50 * 1000, 'itl p99 ms': l.itlP99 * 1000,
        batch: l.meanDecodeBatch ?? NaN, 'prefix hit': l.prefixCacheHitRate ?? NaN,
      })));
      for (const l of levels) if (l.firstError) console.log(`clients ${l.clients}: first error: ${l.firstError}`);
      console.log(`RSS ${summary.rssStartMiB.toFixed(0)} → ${summary.rssEndMiB.toFixed(0)} MiB; pages owned by no one afterwards: ${leakedPages ?? 'n/a (remote)'}`);
    }
    if (model && a.save) console.error(`wrote ${writeResults('serve', model.device, summary)}`);
    return levels.some((l) => l.errors) || (leakedPages ?? 0) > 0 ? 1 : 0;
  } finally {
    await server?.close();
    await model?.dispose();
  }
}

if (require.main === module) {
  benchServe(process.argv.slice(2)).then((c) => { process.exitCode = c; }, (e) => {
    console.error(e instanceof Error ? e.message : String(e));
    process.exitCode = 2;
  });
}
