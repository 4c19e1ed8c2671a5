/**
 * Errors of dsv2. Every failure the library reports is a `Dsv2Error` with a stable `code`;
 * the message names the offending argument and value.
 */

/** Stable error codes. Scripts may switch on them; they are never renamed. */
export type Dsv2ErrorCode =
  | 'E_SHAPE' // a tensor's rank or sizes disagree with the op
  | 'E_DTYPE' // a dtype the op does not take
  | 'E_RANGE' // a value outside its allowed range (ids, eps, NaN where forbidden)
  | 'E_ARG' // a missing or wrongly typed argument
  | 'E_CHECKPOINT' // a checkpoint file disagrees with its header or config
  | 'E_CUDA' // a CUDA runtime error (the message carries the CUDA error name)
  | 'E_OOM' // an allocation failed (the message carries the sizes)
  | 'E_ABORTED' // the caller aborted the work
  | 'E_DISPOSED' // use of a disposed object
  | 'E_UNSUPPORTED' // a valid request this build or device cannot serve
  | 'E_DEVICE' // tensors on the wrong device for the op
  | 'E_LOAD' // the native addon could not be loaded
  | 'E_TEMPLATE' // a chat template failed to render the given messages
  | 'E_IO' // a file or directory could not be read or written (the message names the path)
  | 'E_OVERLOADED' // too many requests wait for resources (retry later; HTTP 429 in the server)
  | 'E_INTERNAL'; // a bug in dsv2: please report it

export const ERROR_CODES: readonly Dsv2ErrorCode[] = [
  'E_SHAPE', 'E_DTYPE', 'E_RANGE', 'E_ARG', 'E_CHECKPOINT', 'E_CUDA', 'E_OOM',
  'E_ABORTED', 'E_DISPOSED', 'E_UNSUPPORTED', 'E_DEVICE', 'E_LOAD', 'E_TEMPLATE', 'E_IO', 'E_OVERLOADED', 'E_INTERNAL',
];

export class Dsv2Error extends Error {
  readonly code: Dsv2ErrorCode;

  constructor(code: Dsv2ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'Dsv2Error';
    this.code = code;
  }
}

/** Turns an error thrown by the native addon (an Error with a `code`) into a Dsv2Error. */
export function fromNative(e: unknown): Dsv2Error {
  if (e instanceof Dsv2Error) return e;
  const err = e as { code?: unknown; message?: unknown };
  const code = typeof err?.code === 'string' && (ERROR_CODES as readonly string[]).includes(err.code)
    ? (err.code as Dsv2ErrorCode)
    : 'E_INTERNAL';
  const message = typeof err?.message === 'string' ? err.message : String(e);
  return new Dsv2Error(code, message, { cause: e });
}

/** Awaits a native promise, rethrowing its rejection as a Dsv2Error. */
export async function native<T>(p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (e) {
    throw fromNative(e);
  }
}

/**
 * The error an aborted operation rejects with: the signal's own `reason` when the caller gave
 * one (so `AbortSignal.timeout(ms)` rejects with its `TimeoutError`, and `ac.abort(myError)`
 * with `myError`), else — a plain `ac.abort()`, whose reason is the default `AbortError`
 * DOMException — a Dsv2Error E_ABORTED saying `what` was aborted (the DOMException as cause).
 */
export function abortError(signal: AbortSignal, what: string): unknown {
  const r: unknown = signal.reason;
  const plain = r === undefined || (typeof r === 'object' && r !== null && (r as { name?: unknown }).name === 'AbortError' &&
    !(r instanceof Dsv2Error));
  return plain ? new Dsv2Error('E_ABORTED', `${what} was aborted`, { cause: r }) : r;
}

/** Throws abortError(signal, what) when the signal is aborted. */
export function throwIfAborted(signal: AbortSignal | undefined, what: string): void {
  if (signal?.aborted) throw abortError(signal, what);
}

/** A value for an error message: JSON, cut short when long (a fuzzed config may hold megabytes). */
export function showValue(v: unknown): string {
  let s: string;
  try {
    s = typeof v === 'number' ? String(v) : JSON.stringify(v) ?? String(v); // JSON writes Infinity and NaN as null
  } catch {
    s = String(v);
  }
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}
