/**
 * Comparators for library output against the float64 reference. Each returns a failure
 * description (or null) and has an `expect...` twin that throws with the case attached, so
 * a failing test prints the case, the worst index, both values and the allowed error.
 *
 * Order of checks: lengths, then special values (NaN positions must agree exactly, and an
 * expected ±inf must be the same inf), then the numeric error of the finite elements.
 */

// Globals used in hot loops are aliased at module scope: under jest every global lookup
// (Math.x, Number.x) goes through the vm context's global interceptor, ~40x slower.
const math = Math;
const num = Number;
const objectIs = Object.is;

export interface CloseOptions {
  /** Absolute slack added to every element's allowance. */
  abs?: number;
  /** Relative slack, times |expected[i]|. */
  rel?: number;
  /** Per-element extra allowance (e.g. K·u·Σ|x·w| for a dot product). */
  bound?: ArrayLike<number>;
  /** The case under test, printed on failure. */
  ctx?: unknown;
  /** What is compared (e.g. 'gemm y'). */
  label?: string;
}

function fmt(v: number): string {
  return num.isNaN(v) ? 'NaN' : objectIs(v, -0) ? '-0' : String(v);
}

function ctxLine(ctx: unknown): string {
  if (ctx === undefined) return '';
  return `\n  case: ${JSON.stringify(ctx, (_k, v) => (typeof v === 'bigint' ? `${v}n` : v))}`;
}

/** Returns null when every element agrees, else a report of the first/worst disagreement. */
export function checkClose(actual: ArrayLike<number>, expected: ArrayLike<number>, o: CloseOptions = {}): string | null {
  const label = o.label ?? 'values';
  if (actual.length !== expected.length) {
    return `${label}: length ${actual.length}, expected ${expected.length}${ctxLine(o.ctx)}`;
  }
  // special values first: a NaN where a number is expected (or vice versa) or a wrong inf
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    const bad = num.isNaN(e)
      ? !num.isNaN(a)
      : num.isNaN(a) || (!num.isFinite(e) && a !== e) || (num.isFinite(e) && !num.isFinite(a));
    if (bad) {
      return `${label}: special-value mismatch at [${i}]: actual ${fmt(a)}, expected ${fmt(e)}${ctxLine(o.ctx)}`;
    }
  }
  const abs = o.abs ?? 0;
  const rel = o.rel ?? 0;
  let worst = -1;
  let worstRatio = 1;
  let nFail = 0;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    if (!num.isFinite(e)) continue; // already checked equal
    const err = math.abs(a - e);
    const allowed = abs + rel * math.abs(e) + (o.bound ? o.bound[i] : 0);
    if (err > allowed) {
      nFail++;
      const ratio = allowed > 0 ? err / allowed : Infinity;
      if (worst < 0 || ratio > worstRatio) {
        worst = i;
        worstRatio = ratio;
      }
    }
  }
  if (worst < 0) return null;
  const a = actual[worst];
  const e = expected[worst];
  const allowed = abs + rel * math.abs(e) + (o.bound ? o.bound[worst] : 0);
  return (
    `${label}: ${nFail} of ${expected.length} elements out of tolerance; worst at [${worst}]: ` +
    `actual ${fmt(a)}, expected ${fmt(e)}, |err| ${math.abs(a - e)} > allowed ${allowed} ` +
    `(abs ${abs}, rel ${rel}${o.bound ? `, bound ${o.bound[worst]}` : ''}; ${worstRatio.toFixed(2)}x)` +
    ctxLine(o.ctx)
  );
}

export function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, o: CloseOptions = {}): void {
  const msg = checkClose(actual, expected, o);
  if (msg !== null) throw new Error(msg);
}

/** Exact equality of integers / bit patterns; `isNaNBits` lets any NaN encoding match a NaN. */
export function checkEqual(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  o: { ctx?: unknown; label?: string; isNaNBits?: (bits: number) => boolean; hex?: boolean } = {},
): string | null {
  const label = o.label ?? 'values';
  if (actual.length !== expected.length) {
    return `${label}: length ${actual.length}, expected ${expected.length}${ctxLine(o.ctx)}`;
  }
  const show = (v: number) => (o.hex ? `0x${v.toString(16).padStart(4, '0')}` : String(v));
  let nFail = 0;
  let first = -1;
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i];
    const e = expected[i];
    const ok = o.isNaNBits && o.isNaNBits(e) ? o.isNaNBits(a) : a === e;
    if (!ok) {
      nFail++;
      if (first < 0) first = i;
    }
  }
  if (first < 0) return null;
  return (
    `${label}: ${nFail} of ${expected.length} differ; first at [${first}]: actual ${show(actual[first])}, ` +
    `expected ${show(expected[first])}${ctxLine(o.ctx)}`
  );
}

export function expectEqual(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  o: { ctx?: unknown; label?: string; isNaNBits?: (bits: number) => boolean; hex?: boolean } = {},
): void {
  const msg = checkEqual(actual, expected, o);
  if (msg !== null) throw new Error(msg);
}

/** 1 - cos(angle between a and e), in double; 0 for two zero vectors. */
export function cosineDifference(actual: ArrayLike<number>, expected: ArrayLike<number>): number {
  let ae = 0;
  let aa = 0;
  let ee = 0;
  for (let i = 0; i < expected.length; i++) {
    ae += actual[i] * expected[i];
    aa += actual[i] * actual[i];
    ee += expected[i] * expected[i];
  }
  if (aa === 0 && ee === 0) return 0;
  if (aa === 0 || ee === 0) return 1;
  return 1 - ae / math.sqrt(aa * ee);
}

export function expectCosine(actual: ArrayLike<number>, expected: ArrayLike<number>, maxDiff: number, ctx?: unknown): void {
  const d = cosineDifference(actual, expected);
  if (!(d <= maxDiff)) throw new Error(`cosine difference ${d} > ${maxDiff}${ctxLine(ctx)}`);
}
