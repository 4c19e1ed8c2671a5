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
    return this.#tok.decode([...ids], { skip_special_tokens: !opts.keepSpecial });
  }

  /** Renders messages with the chat template (generation prompt appended) and encodes them. */
  encodeChat(messages: ChatMessage[]): number[] {
    if (!this.#template) throw new Dsv2Error('E_UNSUPPORTED', 'this checkpoint has no chat_template in tokenizer_config.json');
    const text = this.#template.render({ messages, bos_token: this.bosToken ?? '', eos_token: this.eosToken ?? '', add_generation_prompt: true });
    return this.encode(text, { addBos: false });
  }
}
