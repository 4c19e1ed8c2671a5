/**
 * OpenAI's request and response shapes: a validated body → the prompt tokens and
 * Model.generate options; chunks and results → chat.completion(.chunk) / text_completion
 * objects; errors → {"error": {message, type, param, code}}.
 */
import { randomBytes, randomUUID } from 'node:crypto';
import { Dsv2Error } from '../errors';
import type { GenerateChunk, GenerateOptions, GenerateResult } from '../model/model';
import type { ChatMessage, Tokenizer } from '../model/tokenizer';

/** An error answered as OpenAI's error object with this HTTP status. */
export class ApiError extends Error {
  readonly status: number;
  readonly type: string;
  readonly param: string | null;
  readonly code: string | null;
  readonly headers: Record<string, string>;

  constructor(status: number, message: string, o: { type?: string; param?: string | null; code?: string | null; headers?: Record<string, string> } = {}) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.type = o.type ?? (status >= 500 ? 'server_error' : 'invalid_request_error');
    this.param = o.param ?? null;
    this.code = o.code ?? null;
    this.headers = o.headers ?? {};
  }

  body(): { error: { message: string; type: string; param: string | null; code: string | null } } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }
}

const BAD_INPUT = new Set(['E_ARG', 'E_RANGE', 'E_TEMPLATE']);

/** Any error → ApiError: a Dsv2Error keeps its code (400 for bad input, 503 when aborted by shutdown, 500 otherwise). */
export function toApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof Dsv2Error) {
    if (BAD_INPUT.has(e.code)) return new ApiError(400, e.message, { code: e.code });
    if (e.code === 'E_ABORTED') return new ApiError(503, e.message, { code: e.code, type: 'server_error' });
    if ((e.code as string) === 'E_OVERLOADED') return new ApiError(429, e.message, { code: e.code, type: 'overloaded', headers: { 'retry-after': '1' } });
    return new ApiError(500, e.message, { code: e.code });
  }
  const err = e as { statusCode?: unknown; message?: unknown; code?: unknown };
  const status = typeof err?.statusCode === 'number' && err.statusCode >= 400 && err.statusCode < 600 ? err.statusCode : 500;
  const message = typeof err?.message === 'string' ? err.message : String(e);
  return new ApiError(status, status === 500 ? `internal error: ${message}` : message, { code: typeof err?.code === 'string' ? err.code : null });
}

/** What a validated request asks for. */
export interface Plan {
  kind: 'chat' | 'completion';
  /** Prompt token ids (the chat template rendered and encoded, or the prompt encoded). */
  tokens: number[];
  /** max_tokens / max_completion_tokens, or null for the server's default. */
  maxTokens: number | null;
  /** Model.generate options, less tokens, maxNewTokens and signal. */
  gen: GenerateOptions;
  stream: boolean;
  includeUsage: boolean;
  /** null: no logprobs in the answer; k: the chosen token's and k alternatives. */
  logprobs: number | null;
  /** completions' echo: the prompt text that starts the answer. */
  echo: string;
}

type Body = Record<string, unknown>;

const given = (v: unknown) => v !== undefined && v !== null;

function contentText(c: unknown): string {
  if (typeof c === 'string') return c;
  if (Array.isArray(c)) return c.map((p: { text: string }) => p.text).join('');
  return '';
}

/** Turns a validated body (the schemas in schema.ts) into a Plan; ApiError 400 for what the schema cannot check. */
/**
 * Encodes `text`, refusing early a text far past the context: tokenizing is synchronous (about
 * 3 µs a character), so a long text is first measured by a prefix of 16 characters per token
 * of context — more tokens than the context there, and the whole cannot fit either.
 */
function encodeBounded(tok: Tokenizer, text: string, addBos: boolean, contextLength: number, param: string): number[] {
  const probe = 16 * contextLength;
  if (text.length > probe) {
    const n = tok.encode(text.slice(0, probe), { addBos }).length;
    if (n > contextLength + 1) {
      throw new ApiError(400, `this model's maximum context length is ${contextLength} tokens, and the prompt has more than ${n - 1}`,
        { param, code: 'context_length_exceeded' });
    }
  }
  return tok.encode(text, { addBos });
}

export function plan(kind: 'chat' | 'completion', body: Body, tok: Tokenizer | null, vocabSize: number, contextLength: number): Plan {
  if (given(body.n) && body.n !== 1) throw new ApiError(400, `n = ${String(body.n)}: only n = 1 is supported`, { param: 'n', code: 'unsupported_value' });
  if (given(body.best_of) && body.best_of !== 1) throw new ApiError(400, `best_of = ${String(body.best_of)}: only best_of = 1 is supported`, { param: 'best_of', code: 'unsupported_value' });
  if (typeof body.suffix === 'string' && body.suffix.length > 0) throw new ApiError(400, 'suffix is not supported', { param: 'suffix', code: 'unsupported_value' });
  if (Array.isArray(body.tools) && body.tools.length > 0) throw new ApiError(400, 'tools are not supported by this server', { param: 'tools', code: 'unsupported_value' });
  const rf = body.response_format as { type?: string } | null | undefined;
  if (rf && rf.type !== 'text') throw new ApiError(400, `response_format ${JSON.stringify(rf.type)} is not supported (only "text")`, { param: 'response_format', code: 'unsupported_value' });

  const needTok = (what: string): Tokenizer => {
    if (!tok) throw new ApiError(400, `this model has no tokenizer (tokenizer.json), needed for ${what}`, { code: 'E_CHECKPOINT' });
    return tok;
  };
  let tokens: number[];
  let echo = '';
  try {
    if (kind === 'chat') {
      (body.messages as { content: unknown }[]).forEach((m, i) => {
        if (Array.isArray(m.content)) {
          m.content.forEach((part: { text?: unknown }, j) => {
            if (typeof part.text !== 'string') throw new ApiError(400, `messages[${i}].content[${j}].text must be a string`, { param: `messages[${i}].content[${j}].text`, code: 'invalid_type' });
          });
        }
      });
      const messages: ChatMessage[] = (body.messages as { role: string; content: unknown }[]).map((m) => ({
        role: (m.role === 'developer' ? 'system' : m.role) as ChatMessage['role'],
        content: contentText(m.content),
      }));
      // = encodeChat: the template renders BOS itself when it wants one.
      tokens = encodeBounded(needTok('messages'), needTok('messages').renderChat(messages), false, contextLength, 'messages');
    } else if (typeof body.prompt === 'string') {
      const t = needTok('a text prompt');
      tokens = encodeBounded(t, body.prompt, t.addBos, contextLength, 'prompt');
      if (body.echo === true) echo = body.prompt;
    } else {
      tokens = [...(body.prompt as number[])];
      tokens.forEach((t, i) => {
        if (t >= vocabSize) throw new ApiError(400, `prompt[${i}] = ${t} is outside the vocabulary [0, ${vocabSize})`, { param: 'prompt', code: 'E_RANGE' });
      });
      if (body.echo === true && tok) echo = tok.decode(tokens);
    }
  } catch (e) {
    if (e instanceof Dsv2Error) throw new ApiError(400, e.message, { param: kind === 'chat' ? 'messages' : 'prompt', code: e.code });
    throw e;
  }
  if (tokens.length === 0) throw new ApiError(400, 'the prompt has no tokens', { param: kind === 'chat' ? 'messages' : 'prompt', code: 'E_RANGE' });

  const maxTokens = (body.max_completion_tokens ?? body.max_tokens ?? null) as number | null;
  const stop = typeof body.stop === 'string' ? [body.stop] : ((body.stop as string[] | null | undefined) ?? []);
  let logitBias: Record<number, number> | undefined;
  if (given(body.logit_bias)) {
    logitBias = {};
    for (const [k, v] of Object.entries(body.logit_bias as Record<string, number>)) {
      const id = Number(k);
      if (!/^\d+$/.test(k) || !Number.isSafeInteger(id) || id >= vocabSize) {
        throw new ApiError(400, `logit_bias key ${JSON.stringify(k)} is not a token id in [0, ${vocabSize})`, { param: 'logit_bias', code: 'E_RANGE' });
      }
      logitBias[id] = v;
    }
  }
  const stopTokenIds = body.stop_token_ids as number[] | null | undefined;
  stopTokenIds?.forEach((t, i) => {
    if (t >= vocabSize) throw new ApiError(400, `stop_token_ids[${i}] = ${t} is outside the vocabulary [0, ${vocabSize})`, { param: 'stop_token_ids', code: 'E_RANGE' });
  });
  let logprobs: number | null = null;
  if (kind === 'chat') {
    if (given(body.top_logprobs) && body.logprobs !== true) {
      throw new ApiError(400, 'top_logprobs needs logprobs: true', { param: 'top_logprobs', code: 'invalid_value' });
    }
    if (body.logprobs === true) logprobs = (body.top_logprobs as number | null | undefined) ?? 0;
  } else if (given(body.logprobs)) logprobs = body.logprobs as number;

  // OpenAI samples when temperature is not given (default 1); a request without a seed gets a random one.
  const seed = given(body.seed) ? BigInt.asUintN(64, BigInt(body.seed as number)) : randomBytes(8).readBigUInt64LE();
  const topK = (body.top_k as number | null | undefined) ?? 0;
  const gen: GenerateOptions = {
    temperature: (body.temperature as number | null | undefined) ?? 1,
    topP: (body.top_p as number | null | undefined) ?? 1,
    topK: topK < 0 ? 0 : topK,
    seed,
    stop,
  };
  const opt = (src: string, dst: keyof GenerateOptions) => {
    if (given(body[src])) (gen as Record<string, unknown>)[dst] = body[src];
  };
  opt('presence_penalty', 'presencePenalty');
  opt('frequency_penalty', 'frequencyPenalty');
  opt('min_p', 'minP');
  opt('repetition_penalty', 'repetitionPenalty');
  opt('ignore_eos', 'ignoreEos');
  if (stopTokenIds) gen.stopTokenIds = stopTokenIds;
  if (logitBias) gen.logitBias = logitBias;
  if (logprobs !== null) gen.logprobs = logprobs;
  const so = body.stream_options as { include_usage?: boolean | null } | null | undefined;
  return {
    kind, tokens, maxTokens, gen, echo, logprobs,
    stream: body.stream === true,
    includeUsage: body.stream === true && so?.include_usage === true,
  };
}

export function newId(kind: 'chat' | 'completion'): string {
  return `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID().replace(/-/g, '')}`;
}

/** dsv2's finish reasons → OpenAI's: 'eos' and 'stop' → "stop". */
export function finishReason(r: GenerateResult['finishReason']): 'stop' | 'length' {
  return r === 'length' ? 'length' : 'stop';
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export function usage(r: GenerateResult): Usage {
  return { prompt_tokens: r.promptTokens, completion_tokens: r.tokens.length, total_tokens: r.promptTokens + r.tokens.length };
}

/** Log-probabilities of chunks, in the chat shape ({content: [...]}) or the legacy completions shape. */
export class Logprobs {
  readonly #tok: Tokenizer | null;
  readonly #k: number;

  constructor(tok: Tokenizer | null, k: number) {
    this.#tok = tok;
    this.#k = k;
  }

  #text(id: number): string {
    return this.#tok ? this.#tok.decode([id], { keepSpecial: true }) : `<${id}>`;
  }

  /** Chat: one entry per token chunk (text-only chunks carry none). */
  chat(chunks: readonly GenerateChunk[]): { content: unknown[] } {
    const content = chunks.filter((c) => c.token !== null).map((c) => {
      const token = this.#text(c.token!);
      return {
        token, logprob: c.logprob ?? null, bytes: [...Buffer.from(token, 'utf8')],
        top_logprobs: (c.topLogprobs ?? []).slice(0, this.#k).map((t) => {
          const s = this.#text(t.token);
          return { token: s, logprob: t.logprob, bytes: [...Buffer.from(s, 'utf8')] };
        }),
      };
    });
    return { content };
  }

  /** Completions: parallel arrays; text_offset counts from `offset` (the text before these chunks). */
  completion(chunks: readonly GenerateChunk[], offset: number): { tokens: string[]; token_logprobs: (number | null)[]; top_logprobs: Record<string, number>[] | null; text_offset: number[] } {
    const r = { tokens: [] as string[], token_logprobs: [] as (number | null)[], top_logprobs: this.#k > 0 ? [] as Record<string, number>[] : null, text_offset: [] as number[] };
    let at = offset;
    for (const c of chunks) {
      if (c.token !== null) {
        r.tokens.push(this.#text(c.token));
        r.token_logprobs.push(c.logprob ?? null);
        r.text_offset.push(at);
        if (r.top_logprobs) r.top_logprobs.push(Object.fromEntries((c.topLogprobs ?? []).slice(0, this.#k).map((t) => [this.#text(t.token), t.logprob])));
      }
      at += c.text.length;
    }
    return r;
  }
}
