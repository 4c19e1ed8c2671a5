/**
 * An OpenAI-compatible HTTP server over one loaded Model: /v1/chat/completions and
 * /v1/completions (JSON, or SSE streams in OpenAI's chunk format), /v1/models, /health and
 * /metrics (Prometheus).
 *
 * Why fastify: request bodies are validated against JSON schemas (ajv) before a handler runs,
 * so malformed JSON, wrong types and out-of-range values become 400s in one place; it has a
 * built-in body size limit (413), async handlers and hooks (auth, per-request metrics),
 * graceful close (stops listening, answers 503 on kept-alive connections while closing), and
 * it is widely used and maintained (the Node.js HTTP framework with the most active upkeep
 * besides express, whose v5 still lacks schema validation and a body limit of its own).
 *
 * Generation requests pass an admission queue (admission.ts): at most maxQueue waiting or
 * running (429 past it), at most maxRunning running at once (their decode steps share
 * batched engine steps: Model.generate's continuous batching), and each starts only when its
 * prompt's KV pages fit beside the other running prompts'; pages for the output are the
 * model's to find (Model's scheduler: it waits or preempts, and never fails a generation
 * mid-stream for lack of pages). A client that goes away aborts its generation (the AbortSignal
 * of Model.generate), which frees its pages. Nothing here blocks the event loop for long:
 * generation is async, tokenizing is bounded by the body limit.
 */
import type { AddressInfo, Socket } from 'node:net';
import type { ServerResponse } from 'node:http';
import { timingSafeEqual } from 'node:crypto';
import Fastify, { type FastifyError, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import * as path from 'node:path';
import { Dsv2Error } from '../errors';
import type { GenerateChunk, GenerateResult, Model } from '../model/model';
import { Admission, type Ticket } from './admission';
import { ServerMetrics } from './metrics';
import { ApiError, finishReason, Logprobs, newId, plan, toApiError, usage, type Plan } from './openai';
import { chatBodySchema, completionBodySchema } from './schema';

/** What the server uses of a Model (a Model is one); the stats methods feed /metrics when present. */
export type ServableModel = Pick<Model, 'generate' | 'cache' | 'config' | 'tokenizer' | 'dir'> & {
  prefixCacheStats?: () => { pages: number; hitRate: number } | null;
  batchStats?: () => { steps: number; tokens: number };
};

export interface ServerOptions {
  /** The model's name in responses and /v1/models; default: the basename of the model directory. */
  modelName?: string;
  /** When set, every /v1 route needs `Authorization: Bearer <apiKey>` (401 otherwise). */
  apiKey?: string;
  /** Generation requests waiting or running at most; past it 429. Default 256. */
  maxQueue?: number;
  /** Generation requests running at once at most (the rest wait); default 16 (Model.load's maxBatch default). */
  maxRunning?: number;
  /** Request body limit in bytes (413 past it); default 1 MiB. */
  bodyLimit?: number;
  /** max_tokens of a request that gives none (capped by the context left); default 1024. */
  defaultMaxTokens?: number;
  /** How long close() lets running requests finish before aborting them; default 10,000 ms. */
  graceMs?: number;
  /** fastify's logger (default off). */
  logger?: boolean;
}

export interface ListenInfo {
  url: string;
  host: string;
  port: number;
}

export interface Dsv2Server {
  /** The fastify instance (app.inject() works without listening). */
  readonly app: FastifyInstance;
  readonly metrics: ServerMetrics;
  readonly modelName: string;
  /** Tokens one sequence can hold (prompt + generated). */
  readonly contextLength: number;
  /** Starts listening (port 0: any free port); resolves with the URL. */
  listen(host?: string, port?: number): Promise<ListenInfo>;
  /**
   * Stops accepting requests (/health answers 503 meanwhile), lets running ones finish for
   * `graceMs` (default: the server's), then aborts the rest; resolves once all connections are closed.
   */
  close(opts?: { graceMs?: number }): Promise<void>;
  /** Generation requests waiting and running now. */
  load(): { waiting: number; running: number };
}

/** Why a generation was aborted: the client left, or the server is closing. */
const CLIENT_GONE = 'client-gone';

function posInt(name: string, v: number | undefined, dflt: number): number {
  const n = v ?? dflt;
  if (!Number.isSafeInteger(n) || n < 1) throw new Dsv2Error('E_RANGE', `${name} = ${n} must be a positive integer`);
  return n;
}

/** An ajv error path (/messages/0/role) as a parameter name (messages[0].role). */
function paramOf(instancePath: string): string | null {
  const parts = instancePath.split('/').filter((s) => s.length > 0);
  if (parts.length === 0) return null;
  return parts.map((p, i) => (/^\d+$/.test(p) ? `[${p}]` : i === 0 ? p : `.${p}`)).join('');
}

interface AjvError { instancePath: string; keyword: string; message?: string; params: Record<string, unknown> }

/** "must be integer,null" → "must be an integer" (null is always allowed where it is, so it is not worth naming). */
function typeMessage(types: string[]): string {
  const t = [...new Set(types)].filter((x) => x !== 'null');
  const a = (x: string) => (x === 'integer' || x === 'array' || x === 'object' ? `an ${x}` : x === 'null' ? 'null' : `a ${x}`);
  return `must be ${t.length ? t.map(a).join(' or ') : 'null'}`;
}

/** One ajv error as "param message". */
function describeError(e: AjvError): { param: string | null; message: string; code: string } {
  const p = paramOf(e.instancePath);
  if (e.keyword === 'required') {
    const name = String(e.params.missingProperty);
    const param = p ? `${p}.${name}` : name;
    return { param, message: `${param} is required`, code: 'missing_required_parameter' };
  }
  let msg = e.message ?? 'is not valid';
  if (e.keyword === 'type') msg = typeMessage(String(e.params.type).split(','));
  if (e.keyword === 'enum') msg = `must be one of ${(e.params.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(', ')}`;
  if (e.keyword === 'const') msg = `must be ${JSON.stringify(e.params.allowedValue)}`;
  return { param: p, message: `${p ?? 'the body'} ${msg}`, code: e.keyword === 'type' ? 'invalid_type' : 'invalid_value' };
}

/** fastify's validation errors → one 400 naming the parameter. */
function validationError(errors: AjvError[]): ApiError {
  // An anyOf failure lists each branch's errors first, then its own. An error inside a value
  // (logit_bias.5 > 100, content[0].type) says most; else name the types the branches take.
  const any = [...errors].reverse().find((e) => e.keyword === 'anyOf');
  if (any) {
    const inner = errors.find((e) => e.instancePath.length > any.instancePath.length && e.keyword !== 'anyOf');
    if (inner) {
      const d = describeError(inner);
      return new ApiError(400, d.message, { param: d.param, code: d.code });
    }
    const types = errors.filter((e) => e.instancePath === any.instancePath && e.keyword === 'type').flatMap((e) => String(e.params.type).split(','));
    const param = paramOf(any.instancePath);
    return new ApiError(400, `${param ?? 'the body'} ${types.length ? typeMessage(types) : 'is not valid'}`, { param, code: 'invalid_type' });
  }
  const d = describeError(errors[0]);
  return new ApiError(400, d.message, { param: d.param, code: d.code });
}

/** Waits until `res` can take more (or is gone). */
function drained(res: ServerResponse): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.on('drain', done);
    res.on('close', done);
  });
}

export function createServer(model: ServableModel, opts: ServerOptions = {}): Dsv2Server {
  const modelName = opts.modelName ?? path.basename(path.resolve(model.dir));
  const maxQueue = posInt('maxQueue', opts.maxQueue, 256);
  const maxRunning = posInt('maxRunning', opts.maxRunning, 16);
  const defaultMaxTokens = posInt('defaultMaxTokens', opts.defaultMaxTokens, 1024);
  const bodyLimit = posInt('bodyLimit', opts.bodyLimit, 1 << 20);
  const defaultGrace = opts.graceMs ?? 10_000;
  if (opts.apiKey !== undefined && (typeof opts.apiKey !== 'string' || opts.apiKey.length === 0)) throw new Dsv2Error('E_ARG', 'apiKey must be a non-empty string');
  const cache = model.cache;
  const pageSize = cache.pageSize;
  const contextLength = Math.min(model.config.maxPositionEmbeddings, cache.pages * pageSize);
  const admission = new Admission({ maxQueue, maxRunning, totalPages: cache.pages });
  const safe = (f: () => number) => {
    try {
      return f();
    } catch {
      return 0; // the model was disposed
    }
  };
  const metrics = new ServerMetrics({
    queued: () => admission.waiting, running: () => admission.running,
    pagesUsed: () => safe(() => model.cache.pagesUsed), pagesFree: () => safe(() => model.cache.pagesFree),
    prefixPages: () => safe(() => model.prefixCacheStats?.()?.pages ?? 0),
    prefixHitRate: () => safe(() => model.prefixCacheStats?.()?.hitRate ?? 0),
    decodeSteps: () => safe(() => model.batchStats?.().steps ?? 0),
    decodeTokens: () => safe(() => model.batchStats?.().tokens ?? 0),
  });
  const created = Math.floor(Date.now() / 1000);
  let closing = false;
  let closed: Promise<void> | null = null;
  /** Generation requests in flight (waiting or running), to abort at shutdown and to wait for. */
  const active = new Set<AbortController>();
  let onIdle: (() => void)[] = [];
  const forget = (ac: AbortController) => {
    active.delete(ac);
    if (active.size === 0) {
      const f = onIdle;
      onIdle = [];
      f.forEach((r) => r());
    }
  };

  const app = Fastify({
    logger: opts.logger ?? false,
    bodyLimit,
    return503OnClosing: true,
    // No coercion ("5" stays a string: a 400), no removal or defaults: the body is what was sent.
    ajv: { customOptions: { coerceTypes: false, removeAdditional: false, useDefaults: false, allowUnionTypes: true, allErrors: false } },
  });

  // Open connections and the requests in flight on each: at shutdown, those with none are
  // closed (closeIdleConnections misses a connection that has not sent a request yet).
  const sockets = new Map<Socket, number>();
  app.server.on('connection', (so: Socket) => {
    sockets.set(so, 0);
    so.once('close', () => sockets.delete(so));
  });
  const closeIdle = () => {
    app.server.closeIdleConnections();
    for (const [so, n] of sockets) if (n === 0) so.destroy();
  };
  app.setErrorHandler((err: FastifyError, _req, reply) => {
    const api = err.validation ? validationError(err.validation as unknown as AjvError[])
      : err instanceof SyntaxError || (err.code?.startsWith('FST_ERR_CTP_') && err.statusCode === 400)
        ? new ApiError(400, `the body is not valid JSON (${err.message})`, { code: 'invalid_json' })
        : err.code === 'FST_ERR_CTP_BODY_TOO_LARGE'
          ? new ApiError(413, `the body is larger than the limit of ${bodyLimit} bytes`, { code: 'body_too_large', type: 'invalid_request_error' })
          : toApiError(err);
    void reply.code(api.status).headers(api.headers).send(api.body());
  });
  app.setNotFoundHandler((req, reply) => {
    const api = new ApiError(404, `no route ${req.method} ${req.url.split('?')[0]}`, { code: 'not_found' });
    void reply.code(404).send(api.body());
  });

  const key = opts.apiKey === undefined ? null : Buffer.from(`Bearer ${opts.apiKey}`);
  app.addHook('onRequest', async (req, reply) => {
    const endpoint = req.routeOptions.url ?? 'other';
    const res = reply.raw;
    const so = req.raw.socket as Socket;
    if (sockets.has(so)) sockets.set(so, sockets.get(so)! + 1);
    res.once('close', () => {
      if (sockets.has(so)) sockets.set(so, sockets.get(so)! - 1);
      metrics.requests.inc({ endpoint, status: res.writableFinished ? String(res.statusCode) : '499' });
    });
    if (key && (req.url === '/v1' || req.url.startsWith('/v1/'))) {
      const got = Buffer.from(req.headers.authorization ?? '');
      if (got.length !== key.length || !timingSafeEqual(got, key)) {
        throw new ApiError(401, 'a valid API key is needed: Authorization: Bearer <key>', { code: 'invalid_api_key' });
      }
    }
  });

  app.get('/health', async (_req, reply) => {
    if (closing) return reply.code(503).send({ status: 'shutting_down' });
    return { status: 'ok' };
  });

  app.get('/metrics', async (_req, reply) => {
    const text = await metrics.registry.metrics();
    return reply.type(metrics.registry.contentType).send(text);
  });

  const modelCard = () => ({ id: modelName, object: 'model', created, owned_by: 'dsv2', max_model_len: contextLength });
  app.get('/v1/models', async () => ({ object: 'list', data: [modelCard()] }));
  app.get<{ Params: { id: string } }>('/v1/models/:id', async (req) => {
    if (req.params.id !== modelName) throw new ApiError(404, `the model ${JSON.stringify(req.params.id)} does not exist`, { param: 'model', code: 'model_not_found' });
    return modelCard();
  });

  /** One generation request: admission, generate, the answer as JSON or SSE. */
  async function generation(kind: 'chat' | 'completion', req: FastifyRequest, reply: FastifyReply): Promise<unknown> {
    const t0 = performance.now();
    const endpoint = kind === 'chat' ? '/v1/chat/completions' : '/v1/completions';
    if (closing) throw new ApiError(503, 'the server is shutting down', { code: 'shutting_down' });
    const p = plan(kind, req.body as Record<string, unknown>, model.tokenizer, model.config.vocabSize, contextLength);
    const promptParam = kind === 'chat' ? 'messages' : 'prompt';
    if (p.tokens.length > contextLength) {
      throw new ApiError(400, `this model's maximum context length is ${contextLength} tokens, and the prompt has ${p.tokens.length}`,
        { param: promptParam, code: 'context_length_exceeded' });
    }
    // The context bounds the output too: generation ends with "length" when it is full.
    const maxNew = Math.max(1, Math.min(p.maxTokens ?? defaultMaxTokens, contextLength - p.tokens.length));
    // The prompt's pages only: the output's are found by the model's scheduler as it grows.
    const pages = Math.ceil(p.tokens.length / pageSize);

    const res = reply.raw;
    const ac = new AbortController();
    const onClose = () => {
      if (!res.writableFinished) ac.abort(CLIENT_GONE);
    };
    res.once('close', onClose);
    if (res.destroyed || req.raw.socket?.destroyed) ac.abort(CLIENT_GONE);
    active.add(ac);
    const clientGone = () => ac.signal.aborted && ac.signal.reason === CLIENT_GONE;
    let ticket: Ticket | undefined;
    let it: AsyncIterator<GenerateChunk, GenerateResult> | undefined;
    let done = false;
    try {
      ticket = await admission.acquire(pages, ac.signal);
      metrics.promptTokens.inc(p.tokens.length);
      it = model.generate({ ...p.gen, tokens: p.tokens, maxNewTokens: maxNew, signal: ac.signal })[Symbol.asyncIterator]();
      // The first token (or the error) comes before any byte of the answer: a bad request is a 400, not a broken stream.
      const first = await it.next();
      done = Boolean(first.done);
      let last = performance.now();
      const tick = (c: GenerateChunk) => {
        if (c.token === null) return;
        metrics.generatedTokens.inc();
        const now = performance.now();
        metrics.interTokenLatency.observe((now - last) / 1000);
        last = now;
      };
      if (!first.done) {
        metrics.timeToFirstToken.observe((last - t0) / 1000);
        if (first.value.token !== null) metrics.generatedTokens.inc();
      }
      const id = newId(kind);
      const ts = Math.floor(Date.now() / 1000);
      const lp = p.logprobs === null ? null : new Logprobs(model.tokenizer, p.logprobs);
      if (p.stream) {
        reply.hijack();
        res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
        const send = async (obj: unknown) => {
          if (res.destroyed) return;
          if (!res.write(`data: ${JSON.stringify(obj)}\n\n`)) await drained(res);
        };
        const u = p.includeUsage ? { usage: null } : {};
        const chunk = (choice: Record<string, unknown>) => kind === 'chat'
          ? { id, object: 'chat.completion.chunk', created: ts, model: modelName, choices: [{ index: 0, logprobs: null, finish_reason: null, ...choice }], ...u }
          : { id, object: 'text_completion', created: ts, model: modelName, choices: [{ index: 0, text: '', logprobs: null, finish_reason: null, ...choice }], ...u };
        let offset = 0;
        const content = async (c: GenerateChunk) => {
          if (!c.text && !lp) return;
          if (kind === 'chat') await send(chunk({ delta: { content: c.text }, ...(lp ? { logprobs: lp.chat([c]) } : {}) }));
          else await send(chunk({ text: c.text, ...(lp ? { logprobs: lp.completion([c], offset) } : {}) }));
          offset += c.text.length;
        };
        if (kind === 'chat') await send(chunk({ delta: { role: 'assistant', content: '' } }));
        else if (p.echo) {
          await send(chunk({ text: p.echo }));
          offset = p.echo.length;
        }
        let result: GenerateResult;
        try {
          if (first.done) result = first.value;
          else {
            await content(first.value);
            for (;;) {
              const r = await it.next();
              if (r.done) {
                result = r.value;
                break;
              }
              tick(r.value);
              await content(r.value);
            }
          }
          done = true;
        } catch (e) {
          done = true; // the generator has ended (it threw)
          if (!clientGone()) {
            await send(toApiError(e).body());
            if (!res.destroyed) res.write('data: [DONE]\n\n');
          }
          if (clientGone()) res.destroy();
          else res.end();
          return reply;
        }
        const fin = finishReason(result.finishReason);
        await send(kind === 'chat' ? chunk({ delta: {}, finish_reason: fin }) : chunk({ text: '', finish_reason: fin }));
        if (p.includeUsage) {
          await send(kind === 'chat'
            ? { id, object: 'chat.completion.chunk', created: ts, model: modelName, choices: [], usage: usage(result) }
            : { id, object: 'text_completion', created: ts, model: modelName, choices: [], usage: usage(result) });
        }
        if (!res.destroyed) res.write('data: [DONE]\n\n');
        res.end();
        metrics.requestDuration.observe({ endpoint }, (performance.now() - t0) / 1000);
        return reply;
      }

      // Not streamed: the whole answer at once.
      const chunks: GenerateChunk[] = [];
      let result: GenerateResult;
      if (first.done) result = first.value;
      else {
        chunks.push(first.value);
        for (;;) {
          const r = await it.next();
          if (r.done) {
            result = r.value;
            break;
          }
          tick(r.value);
          chunks.push(r.value);
        }
      }
      done = true;
      metrics.requestDuration.observe({ endpoint }, (performance.now() - t0) / 1000);
      const fin = finishReason(result.finishReason);
      if (kind === 'chat') {
        return {
          id, object: 'chat.completion', created: ts, model: modelName,
          choices: [{ index: 0, message: { role: 'assistant', content: result.text }, logprobs: lp ? lp.chat(chunks) : null, finish_reason: fin }],
          usage: usage(result),
        };
      }
      return {
        id, object: 'text_completion', created: ts, model: modelName,
        choices: [{ index: 0, text: p.echo + result.text, logprobs: lp ? lp.completion(chunks, p.echo.length) : null, finish_reason: fin }],
        usage: usage(result),
      };
    } catch (e) {
      done = true;
      if (clientGone()) {
        // Nobody to answer: the client closed (or half-closed) the connection; finish closing it.
        if (!reply.sent) reply.hijack();
        res.destroy();
        return reply;
      }
      throw e;
    } finally {
      if (it && !done) {
        try {
          await it.return?.(); // frees the generation's pages
        } catch {
          // it has ended anyway
        }
      }
      ticket?.release();
      res.off('close', onClose);
      forget(ac);
    }
  }

  app.post('/v1/chat/completions', { schema: { body: chatBodySchema } }, (req, reply) => generation('chat', req, reply));
  app.post('/v1/completions', { schema: { body: completionBodySchema } }, (req, reply) => generation('completion', req, reply));

  const abortAll = () => {
    const why = new Dsv2Error('E_ABORTED', 'the server is shutting down');
    for (const ac of active) ac.abort(why);
  };
  const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
  const idle = (ms: number) => active.size === 0 ? Promise.resolve(true) : new Promise<boolean>((resolve) => {
    const t = setTimeout(() => {
      onIdle = onIdle.filter((f) => f !== ok);
      resolve(false);
    }, ms);
    const ok = () => {
      clearTimeout(t);
      resolve(true);
    };
    onIdle.push(ok);
  });

  return {
    app, metrics, modelName, contextLength,
    async listen(host = '127.0.0.1', port = 0) {
      await app.listen({ host, port });
      const a = app.server.address() as AddressInfo;
      const h = a.family === 'IPv6' ? `[${a.address}]` : a.address;
      return { url: `http://${h}:${a.port}`, host: a.address, port: a.port };
    },
    close(o = {}) {
      if (closed) {
        // Closing already: a second close({graceMs: 0}) (a second Ctrl-C) cuts the grace short.
        if (o.graceMs === 0) abortAll();
        return closed;
      }
      closing = true;
      closed = (async () => {
        // Stop listening now; kept-alive connections get 503 for new requests meanwhile.
        let appClosed = false;
        const closing$ = app.close().then(() => { appClosed = true; });
        if (!(await idle(o.graceMs ?? defaultGrace))) {
          abortAll();
          await idle(5000);
        }
        // The answers are written; close the connections they leave open (kept alive, idle).
        for (let i = 0; i < 80 && !appClosed; i++) {
          closeIdle();
          await Promise.race([closing$, sleep(25)]);
        }
        if (!appClosed) app.server.closeAllConnections();
        await closing$;
      })();
      return closed;
    },
    load: () => ({ waiting: admission.waiting, running: admission.running }),
  };
}
