/** Shared pieces of the model commands: option parsers, model loading with progress, the default model. */
import { CommanderError, InvalidArgumentError } from 'commander';
import { SingleBar } from 'cli-progress';
import { Dsv2Error } from '../errors';
import type { KvCacheDtype } from '../kv-cache';
import { Model, type DeviceChoice, type WeightFormat } from '../model/model';
import { defaultModelDir } from '../model/default';

export function intOpt(name: string, min = 0) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isSafeInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
    return n;
  };
}

export function floatOpt(name: string, min = -Infinity, max = Infinity) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min || n > max) throw new InvalidArgumentError(`${name} must be a number in [${min}, ${max}]`);
    return n;
  };
}

export function choiceOpt<T extends string>(name: string, choices: readonly T[]) {
  return (v: string): T => {
    if (!choices.includes(v as T)) throw new InvalidArgumentError(`${name} must be one of ${choices.join(', ')}`);
    return v as T;
  };
}

export function tokensOpt(v: string): number[] {
  const ids = v.split(',').map((s) => s.trim()).filter((s) => s.length > 0).map(Number);
  if (ids.length === 0 || !ids.every((n) => Number.isSafeInteger(n) && n >= 0)) {
    throw new InvalidArgumentError('tokens must be a comma-separated list of non-negative integers, e.g. 1,2,3');
  }
  return ids;
}

/** A usage error found after parsing (conflicting or missing options): exit 2 with the message, like commander's own. */
export function usage(msg: string): never {
  throw new CommanderError(2, 'dsv2.usage', `error: ${msg}`);
}

/** Repeatable string option: each use adds one value. */
export function collect(v: string, prev: string[] = []): string[] {
  return [...prev, v];
}

/** Writes to stdout, waiting for it to drain when its buffer is full (large outputs stay O(buffer) in memory). */
export function out(s: string): Promise<void> {
  if (process.stdout.write(s)) return Promise.resolve();
  return new Promise((resolve) => process.stdout.once('drain', () => resolve()));
}

export function log(msg: string): void {
  process.stderr.write(`dsv2: ${msg}\n`);
}

export { cacheDir, defaultModelDir } from '../model/default';

export interface ModelOpts {
  model?: string;
  kvCache: KvCacheDtype;
  device: DeviceChoice;
  maxTokens?: number;
  weights?: WeightFormat;
}

/** Loads --model (or the default), with a progress bar on a terminal; Ctrl-C aborts the load. */
export async function loadModel(o: ModelOpts): Promise<Model> {
  const dir = o.model ?? (await defaultModelDir());
  const ac = new AbortController();
  const onSig = () => ac.abort();
  process.once('SIGINT', onSig);
  const bar = process.stderr.isTTY ? new SingleBar({ format: 'dsv2: loading [{bar}] {percentage}% {value}/{total} MiB', stream: process.stderr, hideCursor: true }) : null;
  let started = false;
  try {
    const t0 = Date.now();
    const m = await Model.load(dir, {
      device: o.device, kvCache: o.kvCache, signal: ac.signal, maxTokens: o.maxTokens, weights: o.weights,
      onProgress: (done, total) => {
        if (!bar) return;
        if (!started) {
          bar.start(Math.max(1, Math.round(total / 2 ** 20)), 0);
          started = true;
        }
        bar.update(Math.round(done / 2 ** 20));
      },
    });
    bar?.stop();
    log(`loaded ${dir} (${m.config.architecture}, ${m.config.numLayers} layers) on ${m.device} in ${((Date.now() - t0) / 1000).toFixed(2)} s; KV cache ${o.kvCache}${o.weights && o.weights !== 'bf16' ? `; ${o.weights} weights` : ''}`);
    return m;
  } catch (e) {
    bar?.stop();
    if (ac.signal.aborted && !(e instanceof Dsv2Error)) throw new Dsv2Error('E_ABORTED', 'loading was aborted');
    throw e;
  } finally {
    process.removeListener('SIGINT', onSig);
  }
}
