/**
 * Text ⇄ token ids from a checkpoint's tokenizer.json (@huggingface/tokenizers) and chat
 * prompts from tokenizer_config.json's chat_template (@huggingface/jinja).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Template } from '@huggingface/jinja';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { Dsv2Error } from '../errors';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

function tokenText(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as { content?: unknown }).content === 'string') return (v as { content: string }).content;
  return null;
}

export class Tokenizer {
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly bosId: number | null;
  readonly eosId: number | null;
  readonly addBos: boolean;
  #tok: HfTokenizer;
  #template: Template | null;

  private constructor(tok: HfTokenizer, config: Record<string, unknown>, json: { added_tokens?: { id: number; content: string }[] }) {
    this.#tok = tok;
    this.bosToken = tokenText(config.bos_token);
    this.eosToken = tokenText(config.eos_token);
    const idOf = (t: string | null) => (t === null ? null : (json.added_tokens?.find((a) => a.content === t)?.id ?? null));
    this.bosId = idOf(this.bosToken);
    this.eosId = idOf(this.eosToken);
    this.addBos = config.add_bos_token === undefined ? this.bosId !== null : Boolean(config.add_bos_token);
    const tpl = config.chat_template;
    try {
      this.#template = typeof tpl === 'string' ? new Template(tpl) : null;
    } catch (e) {
      throw new Dsv2Error('E_CHECKPOINT', `tokenizer_config.json: chat_template does not parse (${(e as Error).message})`, { cause: e });
    }
  }

  /** Loads `dir/tokenizer.json` and `dir/tokenizer_config.json` (E_CHECKPOINT when missing or invalid). */
  static load(dir: string): Tokenizer {
    const read = (name: string, required: boolean): Record<string, unknown> | null => {
      const file = path.join(dir, name);
      if (!fs.existsSync(file)) {
        if (required) throw new Dsv2Error('E_CHECKPOINT', `${dir}: ${name} is missing`);
        return null;
      }
      try {
        return JSON.parse(fs.readFileSync(file, 'utf8')) as Record<string, unknown>;
      } catch (e) {
        throw new Dsv2Error('E_CHECKPOINT', `${file}: not valid JSON (${(e as Error).message})`, { cause: e });
      }
    };
    const json = read('tokenizer.json', true)!;
    const config = read('tokenizer_config.json', false) ?? {};
    let tok: HfTokenizer;
    try {
      tok = new HfTokenizer(json, config);
    } catch (e) {
      throw new Dsv2Error('E_CHECKPOINT', `${dir}/tokenizer.json: not a tokenizer this library reads (${(e as Error).message})`, { cause: e });
    }
    return new Tokenizer(tok, config, json as { added_tokens?: { id: number; content: string }[] });
  }

  /** Token ids of `text`, with the BOS token first when the tokenizer config asks for it. */
  encode(text: string, opts: { addBos?: boolean } = {}): number[] {
    const ids = this.#tok.encode(text, { add_special_tokens: false }).ids.map(Number);
    const bos = opts.addBos ?? this.addBos;
    if (bos && this.bosId !== null && ids[0] !== this.bosId) ids.unshift(this.bosId);
    return ids;
  }

  /** Text of `ids`; special tokens dropped unless `keepSpecial`. */
  decode(ids: readonly number[], opts: { keepSpecial?: boolean } = {}): string {
    if (ids.length === 0) return ''; // the library refuses an empty list
    return this.#tok.decode([...ids], { skip_special_tokens: !opts.keepSpecial });
  }

  /** Number of tokens `encode(text)` gives (BOS included when the tokenizer config adds it). */
  count(text: string, opts: { addBos?: boolean } = {}): number {
    return this.encode(text, opts).length;
  }

  /** The prompt text the chat template renders for `messages` (generation prompt appended). */
  renderChat(messages: readonly ChatMessage[]): string {
    checkMessages(messages);
    if (!this.#template) throw new Dsv2Error('E_UNSUPPORTED', 'this checkpoint has no chat_template in tokenizer_config.json');
    try {
      return this.#template.render({
        messages: messages.map((m) => ({ role: m.role, content: m.content })),
        bos_token: this.bosToken ?? '', eos_token: this.eosToken ?? '', add_generation_prompt: true,
      });
    } catch (e) {
      throw new Dsv2Error('E_TEMPLATE', `the chat template failed to render these messages (${(e as Error)?.message ?? String(e)})`, { cause: e });
    }
  }

  /** Renders messages with the chat template (generation prompt appended) and encodes them (the template adds BOS if it wants one). */
  encodeChat(messages: readonly ChatMessage[]): number[] {
    return this.encode(this.renderChat(messages), { addBos: false });
  }

  /** An incremental decoder: text for each new token in O(1) per token (see TextStream). */
  stream(): TextStream {
    return new TextStream((ids) => this.decode(ids));
  }
}

const ROLES = ['system', 'user', 'assistant'];

/** Chat messages: an array of {role: system|user|assistant, content: string} (E_ARG naming the bad one). */
export function checkMessages(messages: unknown): asserts messages is ChatMessage[] {
  if (!Array.isArray(messages)) throw new Dsv2Error('E_ARG', `messages must be an array of {role, content}, got ${describe(messages)}`);
  if (messages.length === 0) throw new Dsv2Error('E_ARG', 'messages is empty');
  messages.forEach((m: unknown, i) => {
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw new Dsv2Error('E_ARG', `messages[${i}] must be an object {role, content}, got ${describe(m)}`);
    const { role, content } = m as Record<string, unknown>;
    if (typeof role !== 'string' || !ROLES.includes(role)) throw new Dsv2Error('E_ARG', `messages[${i}].role = ${describe(role)} must be one of ${ROLES.join(', ')}`);
    if (typeof content !== 'string') throw new Dsv2Error('E_ARG', `messages[${i}].content must be a string, got ${describe(content)}`);
  });
}

/** A short description of a value for error messages. */
export function describe(v: unknown): string {
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (typeof v === 'bigint') return `${v}n`;
  if (typeof v === 'number' || typeof v === 'boolean' || v === null || v === undefined) return String(v);
  if (Array.isArray(v)) return `an array of ${v.length}`;
  return typeof v === 'object' ? 'an object' : typeof v;
}

/**
 * Incremental detokenization in O(1) per token (the window scheme of text-generation-inference
 * and vLLM): the text of a new token is decode(ids[prefix:]) minus decode(ids[prefix:read]),
 * where `prefix` is where the previous emitted piece began, so that decoders which treat the
 * first token of a string specially (a stripped leading space) see the same context on both
 * sides. A piece ending in U+FFFD (a multi-byte character not yet complete) is held back until
 * a later token completes it. For byte-level BPE (DeepSeek's tokenizers) the pieces join to
 * decode(all ids).
 */
export class TextStream {
  readonly #decode: (ids: number[]) => string;
  readonly #ids: number[] = [];
  #prefix = 0;
  #read = 0;

  constructor(decode: (ids: number[]) => string) {
    this.#decode = decode;
  }

  /** Adds a token; returns the text it completes ('' while a character is incomplete). */
  push(id: number): string {
    this.#ids.push(id);
    const before = this.#decode(this.#ids.slice(this.#prefix, this.#read));
    const now = this.#decode(this.#ids.slice(this.#prefix));
    if (now.length > before.length && !now.endsWith('\uFFFD')) {
      this.#prefix = this.#read;
      this.#read = this.#ids.length;
      // Drop the tokens before the window: memory stays O(window), not O(tokens).
      if (this.#prefix > 64) {
        this.#ids.splice(0, this.#prefix);
        this.#read -= this.#prefix;
        this.#prefix = 0;
      }
      return now.slice(before.length);
    }
    return '';
  }

  /** The text still held back (an incomplete character decodes as U+FFFD); the stream is then empty. */
  flush(): string {
    const before = this.#decode(this.#ids.slice(this.#prefix, this.#read));
    const now = this.#decode(this.#ids.slice(this.#prefix));
    this.#prefix = this.#read = this.#ids.length;
    return now.startsWith(before) ? now.slice(before.length) : now.slice(Math.min(before.length, now.length));
  }
}
