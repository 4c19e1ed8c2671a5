/**
 * A chat that keeps its history: each send() renders the whole conversation with the
 * checkpoint's chat template and generates the next assistant turn. The prefix cache makes a
 * turn cost only what is new (the earlier turns' pages are reused), so the history is not
 * prefilled again.
 */
import { Dsv2Error } from '../errors';
import type { GenerateOptions, GenerateResult, Generation, Model } from './model';
import { checkMessages, type ChatMessage } from './tokenizer';

export type ChatSendOptions = Omit<GenerateOptions, 'prompt' | 'messages' | 'tokens'>;

export class ChatSession {
  readonly model: Model;
  /** The conversation so far (system, then user / assistant turns); a turn is added when it completes. */
  readonly messages: ChatMessage[];
  #busy = false;

  constructor(model: Model, opts: { system?: string; messages?: ChatMessage[] } = {}) {
    this.model = model;
    const start: ChatMessage[] = [];
    if (opts.system !== undefined) {
      if (typeof opts.system !== 'string') throw new Dsv2Error('E_ARG', 'system must be a string');
      start.push({ role: 'system', content: opts.system });
    }
    if (opts.messages !== undefined) {
      checkMessages(opts.messages);
      start.push(...opts.messages.map((m) => ({ role: m.role, content: m.content })));
    }
    this.messages = start;
  }

  /**
   * Sends a user message; returns the assistant's Generation (iterate it, or await `.result`).
   * When it completes, the user message and the answer join `messages`; a turn that fails or
   * is aborted leaves the history as it was. One turn at a time (E_ARG otherwise).
   */
  send(content: string, opts: ChatSendOptions = {}): Generation {
    if (typeof content !== 'string') throw new Dsv2Error('E_ARG', `content must be a string, got ${typeof content}`);
    if (this.#busy) throw new Dsv2Error('E_ARG', 'this ChatSession is still generating its previous turn (one turn at a time)');
    this.#busy = true;
    const user: ChatMessage = { role: 'user', content };
    let gen: Generation;
    try {
      gen = this.model.generate({ ...opts, messages: [...this.messages, user] } as GenerateOptions);
    } catch (e) {
      this.#busy = false;
      throw e;
    }
    let settled = false;
    const settle = (r: GenerateResult | null): void => {
      if (settled) return;
      settled = true;
      this.#busy = false;
      if (r) this.messages.push(user, { role: 'assistant', content: r.text });
    };
    return {
      [Symbol.asyncIterator]: () => {
        const it = gen[Symbol.asyncIterator]();
        return {
          next: async () => {
            try {
              const r = await it.next();
              if (r.done) settle(r.value);
              return r;
            } catch (e) {
              settle(null);
              throw e;
            }
          },
          return: async (v?: unknown) => {
            settle(null);
            return it.return!(v as GenerateResult);
          },
        };
      },
      get result() {
        return gen.result.then((r) => {
          settle(r);
          return r;
        }, (e) => {
          settle(null);
          throw e;
        });
      },
    };
  }
}
