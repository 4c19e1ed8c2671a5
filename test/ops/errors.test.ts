/**
 * Bad inputs: every op rejects (never throws synchronously, never resolves) with a
 * Dsv2Error of the documented code whose message names the offending argument.
 * Data-dependent checks (ids, positions, logits) run inside the implementations, so those
 * cases run under each impl.
 */
import * as ops from '../../lib/ops';
import { Tensor } from '../../lib/tensor';
import { Dsv2Error } from '../../lib/errors';
import { expectRejects, f32, ids, implOpts, IMPLS, type ImplName } from './util';

const x23 = () => f32([1, 2, 3, 4, 5, 6], [2, 3]);
const w43 = () => f32(new Float32Array(12).fill(0.5), [4, 3]);
const bf16 = (shape: number[]) => new Tensor('bf16', shape, new Uint16Array(shape.reduce((a, b) => a * b, 1)).fill(0x3f80));
const f16 = (shape: number[]) => new Tensor('f16', shape, new Uint16Array(shape.reduce((a, b) => a * b, 1)).fill(0x3c00));
const fp8 = (shape: number[]) => new Tensor('fp8_e4m3', shape, new Uint8Array(shape.reduce((a, b) => a * b, 1)).fill(0x38));
const i32 = (shape: number[]) => new Tensor('i32', shape, new Int32Array(shape.reduce((a, b) => a * b, 1)));
const i64 = (shape: number[]) => new Tensor('i64', shape, new BigInt64Array(shape.reduce((a, b) => a * b, 1)));
const zeros = (shape: number[]) => f32(new Float32Array(shape.reduce((a, b) => a * b, 1)), shape);
const table8 = () => zeros([8, 2]); // rope table [8 positions, half 2] -> d = 4
const ropeTab = () => ({ cos: table8(), sin: table8() });
const vocab = () => zeros([10, 4]);

/** Word-boundary match for short argument names ('x' must not match 'exceeds'). */
const word = (w: string) => new RegExp(`(^|[^A-Za-z0-9_])${w.replace('.', '\\.')}([^A-Za-z0-9_]|$)`);

interface BadCase {
  name: string;
  code: 'E_DTYPE' | 'E_SHAPE' | 'E_RANGE' | 'E_DISPOSED' | 'E_ARG';
  mentions: (string | RegExp)[];
  /** data-dependent: checked inside the implementation, so run under every impl */
  perImpl?: boolean;
  call: (o: { impl?: 'reference' | 'fast' }) => Promise<unknown>;
}

const bad: BadCase[] = [
  // ---- E_DTYPE
  { name: 'gemm: x i32', code: 'E_DTYPE', mentions: [word('x')], call: (o) => ops.gemm(i32([2, 3]), w43(), o) },
  { name: 'gemm: x bf16', code: 'E_DTYPE', mentions: [word('x')], call: (o) => ops.gemm(bf16([2, 3]), w43(), o) },
  { name: 'gemm: weight fp8_e4m3', code: 'E_DTYPE', mentions: ['weight'], call: (o) => ops.gemm(x23(), fp8([4, 3]), o) },
  { name: 'gemm: weight i32', code: 'E_DTYPE', mentions: ['weight'], call: (o) => ops.gemm(x23(), i32([4, 3]), o) },
  { name: 'rmsNorm: x f16', code: 'E_DTYPE', mentions: [word('x')], call: (o) => ops.rmsNorm(f16([2, 3]), zeros([3]), o) },
  { name: 'rmsNorm: weight i64', code: 'E_DTYPE', mentions: ['weight'], call: (o) => ops.rmsNorm(x23(), i64([3]), o) },
  { name: 'embedding: ids f32', code: 'E_DTYPE', mentions: ['ids'], call: (o) => ops.embedding(zeros([3]), vocab(), o) },
  { name: 'embedding: table i32', code: 'E_DTYPE', mentions: ['table'], call: (o) => ops.embedding(ids([1], [1], 'i32'), i32([10, 4]), o) },
  { name: 'rope: x bf16', code: 'E_DTYPE', mentions: [word('x')], call: (o) => ops.rope(bf16([2, 4]), ids([0, 1], [2], 'i32'), ropeTab(), o) },
  { name: 'rope: positions f32', code: 'E_DTYPE', mentions: ['positions'], call: (o) => ops.rope(zeros([2, 4]), zeros([2]), ropeTab(), o) },
  { name: 'siluMul: gate bf16', code: 'E_DTYPE', mentions: ['gate'], call: (o) => ops.siluMul(bf16([2, 3]), zeros([2, 3]), o) },
  { name: 'siluMul: up i32', code: 'E_DTYPE', mentions: [word('up')], call: (o) => ops.siluMul(zeros([2, 3]), i32([2, 3]), o) },
  { name: 'softmax: x f16', code: 'E_DTYPE', mentions: [word('x')], call: (o) => ops.softmax(f16([2, 3]), o) },
  { name: 'sample: logits bf16', code: 'E_DTYPE', mentions: ['logits'], call: (o) => ops.sample(bf16([2, 3]), o) },
  { name: 'cast: x i32', code: 'E_DTYPE', mentions: [word('x')], call: (o) => ops.cast(i32([3]), 'f32', o) },
  { name: 'cast: x fp8_e4m3', code: 'E_DTYPE', mentions: [word('x')], call: (o) => ops.cast(fp8([3]), 'bf16', o) },
  // ---- E_SHAPE
  { name: 'gemm: K mismatch x [2,3] vs weight [4,5]', code: 'E_SHAPE', mentions: ['weight'], call: (o) => ops.gemm(x23(), zeros([4, 5]), o) },
  { name: 'gemm: weight rank 1', code: 'E_SHAPE', mentions: ['weight'], call: (o) => ops.gemm(x23(), zeros([3]), o) },
  { name: 'gemm: weight rank 3', code: 'E_SHAPE', mentions: ['weight'], call: (o) => ops.gemm(x23(), zeros([1, 4, 3]), o) },
  { name: 'gemm: x rank 0', code: 'E_SHAPE', mentions: [word('x')], call: (o) => ops.gemm(zeros([]), zeros([4, 1]), o) },
  { name: 'rmsNorm: weight [D+1]', code: 'E_SHAPE', mentions: ['weight'], call: (o) => ops.rmsNorm(x23(), zeros([4]), o) },
  { name: 'rmsNorm: weight rank 2', code: 'E_SHAPE', mentions: ['weight'], call: (o) => ops.rmsNorm(x23(), zeros([1, 3]), o) },
  { name: 'rmsNorm: x rank 0', code: 'E_SHAPE', mentions: [word('x')], call: (o) => ops.rmsNorm(zeros([]), zeros([1]), o) },
  { name: 'embedding: table rank 1', code: 'E_SHAPE', mentions: ['table'], call: (o) => ops.embedding(ids([1], [1], 'i32'), zeros([10]), o) },
  { name: 'embedding: ids rank 5', code: 'E_SHAPE', mentions: ['ids'], call: (o) => ops.embedding(ids([1], [1, 1, 1, 1, 1], 'i32'), vocab(), o) },
  { name: 'embedding: ids rank 0', code: 'E_SHAPE', mentions: ['ids'], call: (o) => ops.embedding(ids([1], [], 'i64'), vocab(), o) },
  { name: 'rope: x rank 4', code: 'E_SHAPE', mentions: [word('x')], call: (o) => ops.rope(zeros([2, 1, 1, 4]), ids([0, 1], [2], 'i32'), ropeTab(), o) },
  { name: 'rope: x rank 1', code: 'E_SHAPE', mentions: [word('x')], call: (o) => ops.rope(zeros([4]), ids([0], [1], 'i32'), ropeTab(), o) },
  { name: 'rope: odd head dim', code: 'E_SHAPE', mentions: [word('x')], call: (o) => ops.rope(zeros([2, 5]), ids([0, 1], [2], 'i32'), ropeTab(), o) },
  { name: 'rope: head dim != 2 * table half', code: 'E_SHAPE', mentions: [], call: (o) => ops.rope(zeros([2, 8]), ids([0, 1], [2], 'i32'), ropeTab(), o) },
  { name: 'rope: positions length != tokens', code: 'E_SHAPE', mentions: ['positions'], call: (o) => ops.rope(zeros([2, 4]), ids([0, 1, 2], [3], 'i32'), ropeTab(), o) },
  { name: 'rope: positions rank 2', code: 'E_SHAPE', mentions: ['positions'], call: (o) => ops.rope(zeros([2, 4]), ids([0, 1], [2, 1], 'i32'), ropeTab(), o) },
  { name: 'rope: cos and sin shapes differ', code: 'E_SHAPE', mentions: [/cos|sin/], call: (o) => ops.rope(zeros([2, 4]), ids([0, 1], [2], 'i32'), { cos: table8(), sin: zeros([7, 2]) }, o) },
  { name: 'siluMul: gate and up shapes differ', code: 'E_SHAPE', mentions: [word('up')], call: (o) => ops.siluMul(zeros([2, 3]), zeros([2, 4]), o) },
  { name: 'siluMul: packed gate with odd last dim', code: 'E_SHAPE', mentions: ['gate'], call: (o) => ops.siluMul(zeros([2, 3]), null, o) },
  { name: 'softmax: x rank 0', code: 'E_SHAPE', mentions: [word('x')], call: (o) => ops.softmax(zeros([]), o) },
  { name: 'sample: logits rank 3', code: 'E_SHAPE', mentions: ['logits'], call: (o) => ops.sample(zeros([1, 2, 3]), o) },
  { name: 'sample: logits rank 0', code: 'E_SHAPE', mentions: ['logits'], call: (o) => ops.sample(zeros([]), o) },
  // ---- E_RANGE: attributes
  { name: 'rmsNorm: eps NaN', code: 'E_RANGE', mentions: ['eps'], call: (o) => ops.rmsNorm(x23(), zeros([3]), { ...o, eps: NaN }) },
  { name: 'sample: temperature NaN', code: 'E_RANGE', mentions: ['temperature'], call: (o) => ops.sample(zeros([2, 3]), { ...o, temperature: NaN }) },
  { name: 'sample: topP 0', code: 'E_RANGE', mentions: ['topP'], call: (o) => ops.sample(zeros([2, 3]), { ...o, temperature: 1, topP: 0 }) },
  { name: 'sample: topP NaN', code: 'E_RANGE', mentions: ['topP'], call: (o) => ops.sample(zeros([2, 3]), { ...o, temperature: 1, topP: NaN }) },
  { name: 'sample: negative seed', code: 'E_RANGE', mentions: ['seed'], call: (o) => ops.sample(zeros([2, 3]), { ...o, temperature: 1, seed: -1 }) },
  { name: 'sample: seed >= 2^64', code: 'E_RANGE', mentions: ['seed'], call: (o) => ops.sample(zeros([2, 3]), { ...o, temperature: 1, seed: 1n << 64n }) },
  // ---- E_RANGE: data (checked in the implementations)
  { name: 'embedding: id == vocab at ids[3]', code: 'E_RANGE', mentions: ['ids[3]'], perImpl: true, call: (o) => ops.embedding(ids([0, 1, 2, 10, 4], [5], 'i32'), vocab(), o) },
  { name: 'embedding: negative id at ids[1] (i64)', code: 'E_RANGE', mentions: ['ids[1]'], perImpl: true, call: (o) => ops.embedding(ids([0, -1], [2], 'i64'), vocab(), o) },
  { name: 'embedding: i64 id 2^40', code: 'E_RANGE', mentions: ['ids'], perImpl: true, call: (o) => ops.embedding(ids([2 ** 40], [1], 'i64'), vocab(), o) },
  { name: 'embedding: out-of-range id in 2-d ids', code: 'E_RANGE', mentions: ['ids'], perImpl: true, call: (o) => ops.embedding(ids([0, 1, 2, 99], [2, 2], 'i32'), vocab(), o) },
  { name: 'rope: position == table rows', code: 'E_RANGE', mentions: ['positions'], perImpl: true, call: (o) => ops.rope(zeros([2, 4]), ids([0, 8], [2], 'i32'), ropeTab(), o) },
  { name: 'rope: negative position (i64)', code: 'E_RANGE', mentions: ['positions'], perImpl: true, call: (o) => ops.rope(zeros([2, 1, 4]), ids([-1, 0], [2], 'i64'), ropeTab(), o) },
  { name: 'sample: NaN logit in row 1', code: 'E_RANGE', mentions: ['logits'], perImpl: true, call: (o) => ops.sample(f32([0, 1, 2, 0, NaN, 2], [2, 3]), { ...o, temperature: 1 }) },
  { name: 'sample: NaN logit, greedy', code: 'E_RANGE', mentions: ['logits'], perImpl: true, call: (o) => ops.sample(f32([0, NaN, 2], [3]), o) },
  { name: 'sample: +inf logit', code: 'E_RANGE', mentions: ['logits'], perImpl: true, call: (o) => ops.sample(f32([0, Infinity, 2], [1, 3]), { ...o, temperature: 0.5 }) },
  { name: 'sample: +inf logit, greedy', code: 'E_RANGE', mentions: ['logits'], perImpl: true, call: (o) => ops.sample(f32([0, Infinity, 2], [1, 3]), o) },
  { name: 'sample: all -inf row', code: 'E_RANGE', mentions: ['logits'], perImpl: true, call: (o) => ops.sample(f32([0, 1, -Infinity, -Infinity], [2, 2]), { ...o, temperature: 1 }) },
  { name: 'sample: all -inf row, greedy', code: 'E_RANGE', mentions: ['logits'], perImpl: true, call: (o) => ops.sample(f32([-Infinity, -Infinity], [2]), o) },
  // ---- E_DISPOSED
  {
    name: 'gemm: disposed weight', code: 'E_DISPOSED', mentions: ['weight'], call: (o) => {
      const w = w43();
      w.dispose();
      return ops.gemm(x23(), w, o);
    },
  },
  {
    name: 'embedding: disposed ids', code: 'E_DISPOSED', mentions: ['ids'], call: (o) => {
      const t = ids([1], [1], 'i32');
      t.dispose();
      return ops.embedding(t, vocab(), o);
    },
  },
  {
    name: 'rope: disposed table.sin', code: 'E_DISPOSED', mentions: ['sin'], call: (o) => {
      const tb = ropeTab();
      tb.sin.dispose();
      return ops.rope(zeros([1, 4]), ids([0], [1], 'i32'), tb, o);
    },
  },
  {
    name: 'sample: disposed logits', code: 'E_DISPOSED', mentions: ['logits'], call: (o) => {
      const t = zeros([2, 3]);
      t.dispose();
      return ops.sample(t, o);
    },
  },
  // ---- E_ARG (not a tensor, bad impl)
  { name: 'gemm: x is null', code: 'E_ARG', mentions: [word('x')], call: (o) => ops.gemm(null as unknown as Tensor, w43(), o) },
  { name: 'softmax: x is a Float32Array', code: 'E_ARG', mentions: [word('x')], call: (o) => ops.softmax(new Float32Array(3) as unknown as Tensor, o) },
  { name: 'gemm: impl bogus', code: 'E_ARG', mentions: ['impl'], call: () => ops.gemm(x23(), w43(), { impl: 'bogus' as 'fast' }) },
];

interface Row {
  name: string;
  impl: ImplName;
}

const rows: [string, Row & { c: BadCase }][] = [];
for (const c of bad) {
  for (const impl of c.perImpl ? IMPLS : (['default'] as const)) {
    rows.push([`${c.code} ${c.name} [impl ${impl}]`, { name: c.name, impl, c }]);
  }
}

describe('bad inputs reject with a named Dsv2Error', () => {
  test.each(rows)('%s', async (_name, r) => {
    await expectRejects(() => r.c.call(implOpts(r.impl)), r.c.code, r.c.mentions, { name: r.name, impl: r.impl });
  });
});

describe('disposal', () => {
  test('data of a disposed tensor throws Dsv2Error E_DISPOSED', () => {
    const t = zeros([2]);
    expect(t.disposed).toBe(false);
    t.dispose();
    expect(t.disposed).toBe(true);
    let err: unknown;
    try {
      void t.data;
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(Dsv2Error);
    expect(err).toMatchObject({ code: 'E_DISPOSED' });
  });

  test('a failed op leaves its inputs usable', async () => {
    const x = x23();
    await expectRejects(() => ops.gemm(x, zeros([4, 5])), 'E_SHAPE');
    expect(Array.from(x.data as Float32Array)).toEqual([1, 2, 3, 4, 5, 6]);
    const y = await ops.gemm(x, w43());
    expect(Array.from(y.data as Float32Array)).toEqual([3, 3, 3, 3, 7.5, 7.5, 7.5, 7.5]);
  });
});
