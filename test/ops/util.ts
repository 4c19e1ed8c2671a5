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
 * `code` whose message matches each of `mentions` (a substring, or a RegExp).
 */
export async function expectRejects(
  fn: () => Promise<unknown>,
  code: string,
  mentions: readonly (string | RegExp)[] = [],
  ctx?: unknown,
): Promise<Dsv2Error> {
  const where = ctx === undefined ? '' : `; case ${caseName(ctx as object)}`;
  let p: Promise<unknown>;
  try {
    p = fn();
  } catch (e) {
    throw new Error(`threw synchronously instead of returning a rejected promise: ${String(e)}${where}`);
  }
  if (!(p instanceof Promise)) throw new Error(`did not return a promise${where}`);
  const outcome = await p.then(
    (v: unknown) => ({ resolved: true as const, v }),
    (e: unknown) => ({ resolved: false as const, e }),
  );
  if (outcome.resolved) throw new Error(`resolved (${String(outcome.v)}), expected a rejection with ${code}${where}`);
  const err = outcome.e;
  if (!(err instanceof Dsv2Error)) throw new Error(`rejected with a non-Dsv2Error ${String(err)}${where}`);
  if (err.code !== code) throw new Error(`rejected with ${err.code} (${err.message}), expected ${code}${where}`);
  for (const m of mentions) {
    const ok = typeof m === 'string' ? err.message.includes(m) : m.test(err.message);
    if (!ok) throw new Error(`error message ${JSON.stringify(err.message)} does not mention ${String(m)}${where}`);
  }
  // the jest idiom, for good measure
  await expect(p).rejects.toMatchObject({ code });
  return err;
}
