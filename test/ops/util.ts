/**
 * Shared helpers of the ops tests: the implementations each case runs under, tensor
 * builders that also return the exact values the reference should see, and rejection checks.
 */
import { Tensor } from '../../lib/tensor';
import { Dsv2Error } from '../../lib/errors';
import { decode, encode, type FloatDType } from '../reference/dtype';

/** Unit roundoff of binary32 round-to-nearest: |fl(a op b) - (a op b)| <= u |a op b|. */
export const U32 = 2 ** -24;

/** Smallest positive normal binary32; absolute slack for results in the subnormal range
 * (the library may flush subnormals to zero, FTZ/DAZ). */
export const F32_MIN_NORMAL = 2 ** -126;

export type ImplName = 'reference' | 'fast' | 'default';
/** Every case runs under both implementations and with no `impl` given (auto). */
export const IMPLS: readonly ImplName[] = ['reference', 'fast', 'default'];

export function implOpts(impl: ImplName): { impl?: 'reference' | 'fast' } {
  return impl === 'default' ? {} : { impl };
}

/** Test name of a case: its JSON, so a failure names the exact case. */
export function caseName(c: object): string {
  return JSON.stringify(c, (_k, v) => (typeof v === 'bigint' ? `${v}n` : v));
}

/** jest table rows [name, case] for test.each('%s', ...). */
export function table<C extends object>(cases: readonly C[]): [string, C][] {
  return cases.map((c) => [caseName(c), c]);
}

/** Cross product helper: cases × impls. */
export function withImpls<C extends object>(cases: readonly C[]): (C & { impl: ImplName })[] {
  const out: (C & { impl: ImplName })[] = [];
  for (const c of cases) for (const impl of IMPLS) out.push({ ...c, impl });
  return out;
}

/** An f32 tensor of the given values. */
export function f32(values: Float32Array | readonly number[], shape: readonly number[]): Tensor {
  const data = values instanceof Float32Array ? values : Float32Array.from(values);
  return new Tensor('f32', shape, data);
}

/**
 * A float tensor of `dtype` from f32 values, and the exact values it holds (the
 * bf16/f16-rounded ones, which are exact in f32 and double) for the reference.
 */
export function floatTensor(values: Float32Array, shape: readonly number[], dtype: FloatDType): { t: Tensor; exact: Float64Array } {
  const data = encode(values, dtype);
  return { t: new Tensor(dtype, shape, data), exact: decode(data, dtype) };
}

export function ids(values: readonly number[], shape: readonly number[], dtype: 'i32' | 'i64'): Tensor {
  if (dtype === 'i32') return new Tensor('i32', shape, Int32Array.from(values));
  return new Tensor('i64', shape, BigInt64Array.from(values.map((v) => BigInt(v))));
}

/** The f32 data of a result, after checking its dtype and shape. */
export function f32Data(t: Tensor, shape: readonly number[], ctx?: unknown): Float32Array {
  if (t.dtype !== 'f32') throw new Error(`result dtype ${t.dtype}, expected f32; case ${caseName(ctx ?? {})}`);
  expectShape(t, shape, ctx);
  return t.data as Float32Array;
}

export function expectShape(t: Tensor, shape: readonly number[], ctx?: unknown): void {
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new Error(`result shape [${t.shape.join(', ')}], expected [${shape.join(', ')}]; case ${caseName(ctx ?? {})}`);
  }
}

/**
 * `fn()` must return a promise (not throw synchronously) that rejects with a Dsv2Error of
 * `code` whose message contains each of `mentions`.
 */
export async function expectRejects(fn: () => Promise<unknown>, code: string, mentions: readonly string[] = []): Promise<Dsv2Error> {
  let p: Promise<unknown>;
  try {
    p = fn();
  } catch (e) {
    throw new Error(`threw synchronously instead of returning a rejected promise: ${String(e)}`);
  }
  expect(p).toBeInstanceOf(Promise);
  await expect(p).rejects.toMatchObject({ code });
  const err = await p.then(
    () => null,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(Dsv2Error);
  const msg = (err as Error).message;
  for (const m of mentions) {
    if (!msg.includes(m)) throw new Error(`error message ${JSON.stringify(msg)} does not mention ${JSON.stringify(m)}`);
  }
  return err as Dsv2Error;
}
