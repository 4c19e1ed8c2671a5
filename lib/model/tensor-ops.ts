/**
 * Small host-side tensor plumbing for the model runtime: residual add, column slices and
 * concatenation along the last dim. Plain loops over f32 arrays — memory-bound and tiny next
 * to the GEMMs; a fused native forward replaces them when per-op overhead matters.
 */
import { Tensor } from '../tensor';

/** a + b, elementwise (f32, same shape). */
export function add(a: Tensor, b: Tensor): Tensor {
  const x = a.data as Float32Array;
  const y = b.data as Float32Array;
  const out = new Float32Array(x.length);
  for (let i = 0; i < x.length; i++) out[i] = x[i] + y[i];
  return new Tensor('f32', a.shape, out);
}

/** Columns [from, to) of the last dim of an f32 tensor, as a new tensor. */
export function sliceLast(t: Tensor, from: number, to: number): Tensor {
  const d = t.shape[t.shape.length - 1];
  const rows = t.numel / d;
  const w = to - from;
  const src = t.data as Float32Array;
  const out = new Float32Array(rows * w);
  for (let r = 0; r < rows; r++) out.set(src.subarray(r * d + from, r * d + to), r * w);
  return new Tensor('f32', [...t.shape.slice(0, -1), w], out);
}

/** Concatenates f32 tensors along the last dim (all other dims equal). */
export function concatLast(ts: Tensor[]): Tensor {
  const widths = ts.map((t) => t.shape[t.shape.length - 1]);
  const rows = ts[0].numel / widths[0];
  const w = widths.reduce((a, b) => a + b, 0);
  const out = new Float32Array(rows * w);
  for (let r = 0; r < rows; r++) {
    let o = r * w;
    ts.forEach((t, k) => {
      out.set((t.data as Float32Array).subarray(r * widths[k], (r + 1) * widths[k]), o);
      o += widths[k];
    });
  }
  return new Tensor('f32', [...ts[0].shape.slice(0, -1), w], out);
}

/** Same data, new shape (numel must match). */
export function reshape(t: Tensor, shape: number[]): Tensor {
  return new Tensor(t.dtype, shape, t.data);
}
