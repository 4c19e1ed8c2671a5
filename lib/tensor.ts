/**
 * Tensors: a dtype, a shape and host data in a typed array. Dense, row-major.
 *
 * | dtype      | host data          | element                                      |
 * |------------|--------------------|----------------------------------------------|
 * | `f32`      | `Float32Array`     | IEEE binary32                                |
 * | `bf16`     | `Uint16Array`      | bfloat16 bits (the high half of an f32)      |
 * | `f16`      | `Uint16Array`      | IEEE binary16 bits                           |
 * | `fp8_e4m3` | `Uint8Array`       | OCP FP8 E4M3FN bits (max 448, no inf)        |
 * | `i32`      | `Int32Array`       | signed 32-bit integer                        |
 * | `i64`      | `BigInt64Array`    | signed 64-bit integer                        |
 * | `i8`       | `Int8Array`        | signed 8-bit integer (8-bit weight codes)    |
 *
 * `device` is `'cpu'` for host tensors; `'cuda'` tensors (device memory) arrive with the
 * CUDA runtime.
 *
 * Ops read and write tensor data on worker threads until their promise settles: do not
 * transfer (postMessage / structuredClone with transfer) or detach a tensor's ArrayBuffer
 * while an op that uses it is pending. Resizable and shared buffers are refused outright.
 */
import { Dsv2Error } from './errors';
import type { RawTensor } from './native';

export type DType = 'f32' | 'bf16' | 'f16' | 'fp8_e4m3' | 'i32' | 'i64' | 'i8';
export type Device = 'cpu' | 'cuda';
export type HostData = Float32Array | Uint16Array | Uint8Array | Int32Array | BigInt64Array | Int8Array;

export const DTYPES: readonly DType[] = ['f32', 'bf16', 'f16', 'fp8_e4m3', 'i32', 'i64', 'i8'];

/** Bytes per element of each dtype. */
export const DTYPE_SIZE: Readonly<Record<DType, number>> = { f32: 4, bf16: 2, f16: 2, fp8_e4m3: 1, i32: 4, i64: 8, i8: 1 };

const ARRAY_OF: Record<DType, { new (n: number): HostData; name: string }> = {
  f32: Float32Array,
  bf16: Uint16Array,
  f16: Uint16Array,
  fp8_e4m3: Uint8Array,
  i32: Int32Array,
  i64: BigInt64Array,
  i8: Int8Array,
};

/** 'Float32Array', 'Uint16Array', ... for typed arrays of any realm; 'Array' etc. otherwise. */
function arrayKind(v: unknown): string {
  return Object.prototype.toString.call(v).slice(8, -1);
}

function checkShape(shape: readonly number[], what: string): number {
  if (!Array.isArray(shape)) throw new Dsv2Error('E_ARG', `${what}: shape must be an array of integers`);
  if (shape.length > 8) throw new Dsv2Error('E_SHAPE', `${what}: rank ${shape.length} exceeds 8`);
  let n = 1;
  shape.forEach((d, i) => {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new Dsv2Error('E_SHAPE', `${what}: shape[${i}] = ${d} must be a non-negative integer`);
    }
    n *= d;
  });
  if (!Number.isSafeInteger(n)) throw new Dsv2Error('E_SHAPE', `${what}: shape [${shape.join(', ')}] is too large`);
  return n;
}

export class Tensor {
  readonly dtype: DType;
  readonly shape: readonly number[];
  readonly device: Device = 'cpu';
  #data: HostData | null;

  /** Wraps `data` (not copied). Its typed-array kind and length must match dtype and shape. */
  constructor(dtype: DType, shape: readonly number[], data: HostData) {
    if (!DTYPES.includes(dtype)) {
      throw new Dsv2Error('E_DTYPE', `dtype '${String(dtype)}' is not one of ${DTYPES.join(', ')}`);
    }
    const n = checkShape(shape, 'Tensor');
    const Ctor = ARRAY_OF[dtype];
    // By tag, not instanceof: typed arrays from another realm (vm contexts, jest's
    // sandboxes, the addon's own constructors) are still the right kind.
    if (arrayKind(data) !== Ctor.name) {
      const got = (data as object | null)?.constructor?.name ?? typeof data;
      throw new Dsv2Error('E_DTYPE', `Tensor: dtype ${dtype} needs its data in a ${Ctor.name}, got ${got}`);
    }
    // Ops read the data on worker threads after the call returns: memory that can shrink (a
    // resizable ArrayBuffer) or change concurrently (a SharedArrayBuffer) is refused.
    const buf = (data as { buffer: ArrayBufferLike }).buffer;
    if (arrayKind(buf) !== 'ArrayBuffer' || (buf as ArrayBuffer & { resizable?: boolean }).resizable) {
      throw new Dsv2Error('E_ARG', `Tensor: data must be backed by a plain, fixed-length ArrayBuffer (got a ${arrayKind(buf)}${(buf as { resizable?: boolean }).resizable ? ', resizable' : ''})`);
    }
    if (data.length !== n) {
      throw new Dsv2Error('E_SHAPE', `Tensor: shape [${shape.join(', ')}] holds ${n} elements but data has ${data.length}`);
    }
    this.dtype = dtype;
    this.shape = Object.freeze([...shape]);
    this.#data = data;
  }

  /**
   * Makes a tensor from values. A typed array of the dtype's kind is used as is; a plain
   * array is copied (numbers, or bigints for i64). `dtype` defaults to f32 for
   * Float32Array/number[], i32 for Int32Array, i64 for BigInt64Array.
   */
  static from(values: HostData | readonly number[] | readonly bigint[], shape?: readonly number[], dtype?: DType): Tensor {
    const kind = arrayKind(values);
    const dt: DType = dtype ?? (kind === 'Int32Array' ? 'i32' : kind === 'BigInt64Array' ? 'i64' : 'f32');
    const sh = shape ?? [values.length];
    if (Array.isArray(values)) {
      const Ctor = ARRAY_OF[dt];
      const data = new Ctor(values.length);
      if (data instanceof BigInt64Array) values.forEach((v, i) => { data[i] = BigInt(v); });
      else values.forEach((v, i) => { (data as Float32Array)[i] = Number(v); });
      return new Tensor(dt, sh, data);
    }
    return new Tensor(dt, sh, values as HostData);
  }

  /** A zero-filled tensor. */
  static zeros(shape: readonly number[], dtype: DType = 'f32'): Tensor {
    return new Tensor(dtype, shape, new ARRAY_OF[dtype](checkShape(shape, 'Tensor.zeros')));
  }

  /** @internal Wraps a tensor the addon returned. */
  static fromRaw(raw: RawTensor): Tensor {
    return new Tensor(raw.dtype as DType, raw.shape, raw.data);
  }

  /** Host data. Throws E_DISPOSED after dispose(). */
  get data(): HostData {
    if (!this.#data) throw new Dsv2Error('E_DISPOSED', `Tensor ${this.describe()} was disposed`);
    return this.#data;
  }

  get disposed(): boolean {
    return this.#data === null;
  }

  get rank(): number {
    return this.shape.length;
  }

  get numel(): number {
    return this.shape.reduce((a, b) => a * b, 1);
  }

  get nbytes(): number {
    return this.numel * DTYPE_SIZE[this.dtype];
  }

  /** Drops the data reference (memory is freed once nothing else holds it). Idempotent. */
  dispose(): void {
    this.#data = null;
  }

  [Symbol.dispose](): void {
    this.dispose();
  }

  /** e.g. `f32[2, 3]` */
  describe(): string {
    return `${this.dtype}[${this.shape.join(', ')}]`;
  }

  toString(): string {
    return `Tensor(${this.describe()}${this.disposed ? ', disposed' : ''})`;
  }

  /** @internal The view the addon reads, checked live; `name` is the argument in errors. */
  raw(name: string): RawTensor {
    if (!this.#data) throw new Dsv2Error('E_DISPOSED', `${name}: tensor ${this.describe()} was disposed`);
    return { dtype: this.dtype, shape: this.shape as number[], data: this.#data, device: this.device };
  }
}
