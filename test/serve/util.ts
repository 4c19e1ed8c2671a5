/**
 * Helpers of the server tests: a tiny model served in-process on 127.0.0.1 (port 0), the
 * official openai client pointed at it, raw HTTP requests, and a slowed model for tests that
 * need a generation to last (the queue limit, shutdown).
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import OpenAI from 'openai';
import { Model, makeTiny, type GenerateChunk, type GenerateOptions, type GenerateResult, type Generation } from '../../lib';
import { createServer, type Dsv2Server, type ServableModel, type ServerOptions } from '../../lib/serve';

export function tmpDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `dsv2-${tag}-`));
}

/** Makes the tiny v2 checkpoint (seed 1) in a fresh directory and loads it on the CPU. */
export async function tinyModel(tag: string, opts: { maxTokens?: number } = {}): Promise<{ model: Model; dir: string; root: string }> {
  const root = tmpDir(tag);
  const dir = path.join(root, 'tiny-v2');
  await makeTiny(dir, { kind: 'v2', seed: 1 });
  const model = await Model.load(dir, { device: 'cpu', maxTokens: opts.maxTokens });
  return { model, dir, root };
}

export interface Served {
  server: Dsv2Server;
  url: string;
  client: OpenAI;
}

export async function serve(model: ServableModel, opts: ServerOptions = {}, clientKey = 'none'): Promise<Served> {
  const server = createServer(model, opts);
  const { url } = await server.listen('127.0.0.1', 0);
  const client = new OpenAI({ baseURL: `${url}/v1`, apiKey: clientKey, maxRetries: 0, timeout: 30_000 });
  return { server, url, client };
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Pages held by generations: the cache's used pages less those the prefix cache keeps for
 * later prompts (those are no leak: evicted when pages run short).
 */
export function pagesHeld(model: Model): number {
  const m = model as Model & { prefixCacheStats?: () => { pages: number } | null };
  return model.cache.pagesUsed - (m.prefixCacheStats?.()?.pages ?? 0);
}

/** Waits (at most `ms`) until no generation holds KV pages; returns the pages held then. */
export async function pagesSettle(model: Model, ms = 3000): Promise<number> {
  const end = Date.now() + ms;
  while (pagesHeld(model) !== 0 && Date.now() < end) await sleep(10);
  return pagesHeld(model);
}

/** A raw HTTP request (fetch) with a JSON or raw-string body; the status, headers and parsed JSON (or text). */
export async function http(url: string, opts: { method?: string; body?: unknown; raw?: string; headers?: Record<string, string> } = {}):
Promise<{ status: number; json: any; text: string; headers: Headers }> {
  const init: RequestInit = { method: opts.method ?? (opts.body !== undefined || opts.raw !== undefined ? 'POST' : 'GET'), headers: { ...opts.headers }, signal: AbortSignal.timeout(30_000) };
  if (opts.raw !== undefined || opts.body !== undefined) {
    (init.headers as Record<string, string>)['content-type'] ??= 'application/json';
    init.body = opts.raw ?? JSON.stringify(opts.body);
  }
  const r = await fetch(url, init);
  const text = await r.text();
  let json: any = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON
  }
  return { status: r.status, json, text, headers: r.headers };
}

/** The SSE events (`data: ...` payloads) of a streamed answer. */
export function sseEvents(text: string): string[] {
  return text.split('\n\n').filter((b) => b.startsWith('data: ')).map((b) => b.slice(6));
}

/**
 * The model with every chunk delayed by `ms` (iteration, abort and page freeing are the
 * model's own): a generation that lasts, for the queue and shutdown tests.
 */
export function slowModel(model: Model, ms: number): ServableModel {
  return {
    dir: model.dir, config: model.config, tokenizer: model.tokenizer,
    get cache() { return model.cache; },
    generate(opts: GenerateOptions): Generation {
      const inner = model.generate(opts);
      let resolveR!: (r: GenerateResult) => void;
      let rejectR!: (e: unknown) => void;
      const result = new Promise<GenerateResult>((res, rej) => { resolveR = res; rejectR = rej; });
      result.catch(() => {});
      return {
        result,
        [Symbol.asyncIterator]() {
          const it = inner[Symbol.asyncIterator]();
          return {
            async next() {
              await sleep(ms);
              try {
                const r = await it.next();
                if (r.done) resolveR(r.value);
                return r;
              } catch (e) {
                rejectR(e);
                throw e;
              }
            },
            async return(v?: GenerateResult) {
              rejectR(new Error('left'));
              return it.return!(v as GenerateResult);
            },
          } as AsyncIterator<GenerateChunk, GenerateResult>;
        },
      };
    },
  } as ServableModel;
}
