/**
 * Clients that go away (before an answer, mid-stream, while queued) abort their generations:
 * the KV pages come back and the server keeps answering. Graceful shutdown: close() lets a
 * running stream finish and refuses new requests; past the grace period it aborts them. The
 * CLI: `dsv2 serve` prints its URL, answers, and exits 0 on SIGTERM.
 */
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Model } from '../../lib';
import { Rng } from '../reference/rng';
import { http, pagesSettle, serve, sleep, slowModel, sseEvents, tinyModel, type Served } from './util';

let model: Model;
let dir: string;
let root: string;

beforeAll(async () => {
  ({ model, dir, root } = await tinyModel('serve-life'));
});
afterAll(async () => {
  await model?.dispose();
  fs.rmSync(root, { recursive: true, force: true });
});
afterEach(async () => {
  expect(await pagesSettle(model)).toBe(0);
});

const aborted = (e: unknown) => (e as Error)?.name === 'APIUserAbortError' || (e as Error)?.name === 'AbortError' || /abort/i.test(String((e as Error)?.message));

describe('clients that disconnect', () => {
  let s: Served;
  beforeAll(async () => {
    s = await serve(slowModel(model, 3), { maxRunning: 4 });
  });
  afterAll(async () => {
    await s?.server.close();
  });

  test('at random points (before the answer, mid-stream): pages return to 0, the server still answers', async () => {
    const rng = new Rng('disconnects');
    const runs = Array.from({ length: 16 }, async (_, i) => {
      const ac = new AbortController();
      const stream = i % 4 !== 0;
      const afterMs = rng.ints(1, 0, 60)[0];
      const afterChunks = rng.ints(1, 0, 20)[0];
      const t = setTimeout(() => ac.abort(), stream ? 5000 : afterMs);
      try {
        if (!stream) {
          await s.client.completions.create({ model: 'x', prompt: `p${i}`, max_tokens: 60, temperature: 0, ignore_eos: true } as any, { signal: ac.signal });
          return 'completed';
        }
        const st = await s.client.chat.completions.create({ model: 'x', messages: [{ role: 'user', content: `m${i}` }], max_tokens: 60, temperature: 0, ignore_eos: true, stream: true } as any, { signal: ac.signal });
        let n = 0;
        for await (const _c of st as any) {
          if (++n > afterChunks) {
            ac.abort();
            break;
          }
        }
        return 'left';
      } catch (e) {
        if (!aborted(e)) throw e;
        return 'aborted';
      } finally {
        clearTimeout(t);
      }
    });
    const outcomes = await Promise.all(runs);
    expect(outcomes.filter((o) => o !== 'completed').length).toBeGreaterThan(8);
    expect(await pagesSettle(model)).toBe(0);
    expect(s.server.load()).toEqual({ waiting: 0, running: 0 });
    const r = await s.client.chat.completions.create({ model: 'x', messages: [{ role: 'user', content: 'still there?' }], max_tokens: 3, temperature: 0 });
    expect(r.choices[0].message.content).toEqual(expect.any(String));
    const m = (await http(`${s.url}/metrics`)).text;
    expect(m).toMatch(/dsv2_requests_total\{endpoint="\/v1\/chat\/completions",status="499"\} \d+/);
  });

  test('while queued: the waiting request is dropped, the running ones go on', async () => {
    const q = await serve(slowModel(model, 20), { maxRunning: 1 });
    const until = async (f: () => boolean) => {
      for (let i = 0; i < 500 && !f(); i++) await sleep(10);
      expect(f()).toBe(true);
    };
    try {
      const first = q.client.completions.create({ model: 'x', prompt: 'first', max_tokens: 50, temperature: 0, ignore_eos: true } as any);
      await until(() => q.server.load().running === 1);
      const ac = new AbortController();
      const second = q.client.completions.create({ model: 'x', prompt: 'second', max_tokens: 20 }, { signal: ac.signal });
      await until(() => q.server.load().waiting === 1);
      ac.abort();
      await expect(second).rejects.toBeTruthy();
      await until(() => q.server.load().waiting === 0);
      expect(q.server.load().running).toBe(1);
      expect((await first).usage!.completion_tokens).toBe(50);
    } finally {
      await q.server.close();
    }
  });
});

describe('graceful shutdown', () => {
  test('close() while a stream runs: it completes; new requests are refused; /health is not ok', async () => {
    const g = await serve(slowModel(model, 10));
    const st = await g.client.chat.completions.create({ model: 'x', messages: [{ role: 'user', content: 'long' }], max_tokens: 30, temperature: 0, ignore_eos: true, stream: true } as any);
    const it = (st as any)[Symbol.asyncIterator]();
    await it.next(); // the role chunk: it is running
    let closedAt = 0;
    const closing = g.server.close().then(() => { closedAt = Date.now(); });
    await sleep(20);
    // A new request: the listener is closed (connection refused), or a kept-alive connection gets 503.
    const health = await http(`${g.url}/health`).catch((e) => ({ status: 'refused', e }));
    expect([503, 'refused']).toContain(health.status);
    const fresh = await http(`${g.url}/v1/completions`, { body: { prompt: 'new', max_tokens: 2 } }).catch(() => ({ status: 'refused' }));
    expect([503, 'refused']).toContain(fresh.status);
    let text = '';
    let finish = null;
    for (;;) {
      const r = await it.next();
      if (r.done) break;
      text += r.value.choices[0]?.delta.content ?? '';
      finish = r.value.choices[0]?.finish_reason ?? finish;
    }
    const endedAt = Date.now();
    expect(finish).toBe('length');
    const want = await model.generate({ messages: [{ role: 'user', content: 'long' }], maxNewTokens: 30, ignoreEos: true } as any).result;
    expect(text).toBe(want.text);
    await closing;
    expect(closedAt).toBeGreaterThanOrEqual(endedAt - 50);
  });

  test('past the grace period the running request is aborted with an error event, and close() resolves', async () => {
    const g = await serve(slowModel(model, 20), { graceMs: 150 });
    const res = await fetch(`${g.url}/v1/chat/completions`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, signal: AbortSignal.timeout(20_000),
      body: JSON.stringify({ messages: [{ role: 'user', content: 'long' }], max_tokens: 200, temperature: 0, ignore_eos: true, stream: true }),
    });
    expect(res.status).toBe(200); // the headers come with the first token: it is running
    const started = Date.now();
    await g.server.close();
    expect(Date.now() - started).toBeLessThan(3000);
    const ev = sseEvents(await res.text());
    expect(ev[ev.length - 1]).toBe('[DONE]');
    expect(JSON.parse(ev[ev.length - 2]).error.code).toBe('E_ABORTED');
    expect(ev.length).toBeLessThan(100); // it did not run to its 200 tokens
  });

  test('a non-streamed request past the grace period: 503', async () => {
    const g = await serve(slowModel(model, 20), { graceMs: 100 });
    const p = http(`${g.url}/v1/completions`, { body: { prompt: 'long', max_tokens: 200, temperature: 0, ignore_eos: true } });
    for (let i = 0; i < 500 && g.server.load().running === 0; i++) await sleep(10);
    await g.server.close();
    const r = await p;
    expect(r.status).toBe(503);
    expect(r.json.error.code).toBe('E_ABORTED');
  });
});

describe('the CLI (dist/)', () => {
  const ROOT = path.resolve(__dirname, '../..');
  const MAIN = path.join(ROOT, 'dist/lib/cli/main.js');
  test('dsv2 serve --port 0: prints its URL, answers, exits 0 on SIGTERM', async () => {
    const args = ['serve', '--model', dir, '--port', '0', '--device', 'cpu', '--model-name', 'cli-tiny'];
    const child = spawn(process.execPath, [MAIN, ...args], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
    let err = '';
    child.stderr.on('data', (d) => { err += String(d); });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      const deadline = Date.now() + 30_000;
      let url: string | undefined;
      while (!url && Date.now() < deadline) {
        url = /dsv2: serving on (http:\/\/127\.0\.0\.1:\d+)/.exec(err)?.[1];
        if (!url) await sleep(50);
      }
      expect(url).toBeDefined();
      const r = await http(`${url}/v1/chat/completions`, { body: { messages: [{ role: 'user', content: 'hi' }], max_tokens: 4, temperature: 0 } });
      expect(r.status).toBe(200);
      expect(r.json.model).toBe('cli-tiny');
      expect(r.json.usage.completion_tokens).toBeGreaterThan(0);
      child.kill('SIGTERM');
      let timer: NodeJS.Timeout | undefined;
      const code = await Promise.race([exited, new Promise((r) => { timer = setTimeout(() => r('timeout'), 20_000); })]);
      clearTimeout(timer);
      expect({ code, err: code === 0 ? '' : err }).toEqual({ code: 0, err: '' });
      expect(err).toMatch(/SIGTERM: shutting down/);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  }, 60_000);
});
