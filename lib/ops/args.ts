/** Argument checks of the public ops: messages name the parameter, expected and actual. */
import { Dsv2Error } from '../errors';
import type { RawImpl, RawTensor } from '../native';
import { Tensor } from '../tensor';

/** Which implementation runs an op: `auto` (fastest), `reference` (plain, single-threaded) or `fast`. */
export type Impl = RawImpl;

export interface OpOptions {
  /** Implementation to run; `auto` by default. `reference` exists for tests and debugging. */
  impl?: Impl;
}

export function tensorArg(t: unknown, name: string): RawTensor {
  if (!(t instanceof Tensor)) {
    const got = t === null ? 'null' : typeof t === 'object' ? (t.constructor?.name ?? 'object') : typeof t;
    throw new Dsv2Error('E_ARG', `${name} must be a Tensor, got ${got}`);
  }
  return t.raw(name);
}

export function numberArg(v: unknown, name: string, fallback: number): number {
  if (v === undefined) return fallback;
  if (typeof v !== 'number') throw new Dsv2Error('E_ARG', `${name} must be a number, got ${typeof v}`);
  return v;
}

export function implArg(opts: OpOptions | undefined): Impl {
  const impl = opts?.impl ?? 'auto';
  if (impl !== 'auto' && impl !== 'reference' && impl !== 'fast') {
    throw new Dsv2Error('E_ARG', `impl must be 'auto', 'reference' or 'fast', got '${String(impl)}'`);
  }
  return impl;
}

export interface DeviceOptions {
  /**
   * cpu (default) or cuda: run the CUDA kernel. Host tensors are copied to the device and the
   * result back per call (the op-level entry the GPU tests use); E_UNSUPPORTED, with the
   * reason, where CUDA is not usable.
   */
  device?: 'cpu' | 'cuda';
}

export function deviceArg(opts: DeviceOptions | undefined): 'cpu' | 'cuda' {
  const d = opts?.device ?? 'cpu';
  if (d !== 'cpu' && d !== 'cuda') throw new Dsv2Error('E_ARG', `device must be 'cpu' or 'cuda', got '${String(d)}'`);
  return d;
}
