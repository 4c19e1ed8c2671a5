/**
 * Continuous batching of decode steps: the generations running at once on one model each ask
 * for their next token; requests that arrive while a step runs wait and go together into the
 * next engine step (one token per sequence, up to the engine's maxSeqs, grouped by sampling
 * parameters — the engine takes one set per step). A batched step gives each sequence the
 * same logits and draw as a step of its own (each row's computation is independent; the draw
 * uses that sequence's seed), so batching changes throughput, not results (bit for bit on the
 * CPU; on CUDA the decode split plan depends on the batch, a rounding-level difference).
 * If a batched step fails (say one sequence's logits are NaN), its requests are retried one
 * by one so only the bad sequence fails.
 */
import type { EngineSampling, NativeEngine } from './engine';
import type { SeqState } from './forward';

export interface DecodeRequest {
  seq: SeqState;
  token: number;
  sampling: Omit<EngineSampling, 'seeds'>;
  seed: bigint;
}

interface Pending extends DecodeRequest {
  resolve: (t: number) => void;
  reject: (e: unknown) => void;
}

export interface BatchStats {
  /** Engine decode steps run, and tokens they produced (tokens / steps = the mean batch). */
  steps: number;
  tokens: number;
}

export class DecodeBatcher {
  readonly #engine: NativeEngine;
  readonly #queue: Pending[] = [];
  #running = false;
  readonly stats: BatchStats = { steps: 0, tokens: 0 };

  constructor(engine: NativeEngine) {
    this.#engine = engine;
  }

  /** The sequence's next token after `token` (its cache must have room: reserve() first). */
  next(req: DecodeRequest): Promise<number> {
    return new Promise<number>((resolve, reject) => {
      this.#queue.push({ ...req, resolve, reject });
      this.#kick();
    });
  }

  #kick(): void {
    if (this.#running || this.#queue.length === 0) return;
    this.#running = true;
    // Let every generation that is about to ask in this turn of the event loop join the step.
    setImmediate(() => {
      void this.#flush().finally(() => {
        this.#running = false;
        this.#kick();
      });
    });
  }

  async #flush(): Promise<void> {
    const key = (p: Pending) => `${p.sampling.temperature}/${p.sampling.topK}/${p.sampling.topP}`;
    const first = key(this.#queue[0]);
    const batch: Pending[] = [];
    for (let i = 0; i < this.#queue.length && batch.length < this.#engine.limits.maxSeqs;) {
      if (key(this.#queue[i]) === first) batch.push(...this.#queue.splice(i, 1));
      else i++;
    }
    try {
      await this.#step(batch);
    } catch (e) {
      if (batch.length === 1) {
        batch[0].reject(e);
        return;
      }
      for (const p of batch) {
        try {
          await this.#step([p]);
        } catch (e1) {
          p.reject(e1);
        }
      }
    }
  }

  async #step(batch: Pending[]): Promise<void> {
    const r = await this.#engine.step(batch.map((p) => ({ tokens: [p.token], pos0: p.seq.length, pages: p.seq.pages })), 'decode',
      'none', { ...batch[0].sampling, seeds: batch.map((p) => p.seed) });
    this.stats.steps++;
    this.stats.tokens += batch.length;
    batch.forEach((p, i) => {
      p.seq.length += 1;
      p.resolve(r.tokens![i]);
    });
  }
}
