/**
 * Admission of generation requests: at most `maxQueue` waiting or running (past that the
 * caller answers 429), at most `maxRunning` running, and a request runs only when the KV
 * pages its caller asks for (the server: its prompt's) fit beside those already promised to
 * the running ones. (Pages for the output are found by the model's own scheduler, which
 * waits or preempts rather than fail a generation half-way.)
 * First come, first served: the head of the queue is never overtaken.
 */
import { abortError } from '../errors';
import { ApiError } from './openai';

export interface Ticket {
  readonly pages: number;
  /** Gives the slot and its pages back (idempotent). */
  release(): void;
}

interface Waiter {
  pages: number;
  resolve: (t: Ticket) => void;
  reject: (e: unknown) => void;
  signal: AbortSignal;
  onAbort: () => void;
}

export class Admission {
  readonly maxQueue: number;
  readonly maxRunning: number;
  readonly totalPages: number;
  #waiting: Waiter[] = [];
  #running = 0;
  #promised = 0;

  constructor(o: { maxQueue: number; maxRunning: number; totalPages: number }) {
    this.maxQueue = o.maxQueue;
    this.maxRunning = o.maxRunning;
    this.totalPages = o.totalPages;
  }

  get waiting(): number {
    return this.#waiting.length;
  }

  get running(): number {
    return this.#running;
  }

  /**
   * A slot for a request that can need `pages` KV pages: resolves when it may run; ApiError
   * 429 at once when the queue is full; rejects with the abort error when `signal` aborts
   * while it waits.
   */
  acquire(pages: number, signal: AbortSignal): Promise<Ticket> {
    if (signal.aborted) return Promise.reject(abortError(signal, 'the request'));
    if (this.#waiting.length + this.#running >= this.maxQueue) {
      return Promise.reject(new ApiError(429, `the server is overloaded: ${this.maxQueue} requests are already waiting or running; retry later`,
        { type: 'overloaded', code: 'overloaded', headers: { 'retry-after': '1' } }));
    }
    return new Promise<Ticket>((resolve, reject) => {
      const w: Waiter = {
        pages, resolve, reject, signal,
        onAbort: () => {
          const i = this.#waiting.indexOf(w);
          if (i >= 0) {
            this.#waiting.splice(i, 1);
            reject(abortError(signal, 'the request'));
            this.#pump(); // the head may have changed
          }
        },
      };
      signal.addEventListener('abort', w.onAbort, { once: true });
      this.#waiting.push(w);
      this.#pump();
    });
  }

  #pump(): void {
    while (this.#waiting.length > 0 && this.#running < this.maxRunning && this.#promised + this.#waiting[0].pages <= this.totalPages) {
      const w = this.#waiting.shift()!;
      w.signal.removeEventListener('abort', w.onAbort);
      this.#running++;
      this.#promised += w.pages;
      let released = false;
      w.resolve({
        pages: w.pages,
        release: () => {
          if (released) return;
          released = true;
          this.#running--;
          this.#promised -= w.pages;
          this.#pump();
        },
      });
    }
  }
}
