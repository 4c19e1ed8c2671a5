/**
 * embedding: out[..., :] = table[ids[...], :]. A gather plus an exact widening (bf16 and
 * f16 values are exactly representable in f32), so the tolerance is 0: every element must
 * equal the decoded table value bit for bit.
 */
import * as ops from '../../lib/ops';
import * as ref from '../reference/ops';
import { expectClose } from '../reference/compare';
import { Rng } from '../reference/rng';
import type { FloatDType } from '../reference/dtype';
import { f32Data, floatTensor, ids as idTensor, implOpts, table, withImpls, type ImplName } from './util';

interface EmbCase {
  idShape: number[];
  idDtype: 'i32' | 'i64';
  V: number;
  H: number;
  tdtype: FloatDType;
}

const cases: EmbCase[] = [];
const shapes = [[1], [3], [0], [17], [2, 3], [3, 0], [2, 1, 3], [1, 2, 2, 2]];
const dims: [number, number][] = [[1, 1], [7, 3], [33, 17], [1000, 7], [5, 127], [3, 4096], [4, 5120]];
let rot = 0;
for (const idShape of shapes) {
  for (const [V, H] of dims) {
    const tdtype = (['f32', 'bf16', 'f16'] as const)[rot % 3];
    const idDtype = rot % 2 === 0 ? 'i32' : 'i64';
    rot++;
    cases.push({ idShape, idDtype, V, H, tdtype });
  }
}
// every table dtype with both id dtypes on one mid-size shape
for (const tdtype of ['f32', 'bf16', 'f16'] as const) {
  for (const idDtype of ['i32', 'i64'] as const) cases.push({ idShape: [2, 5], idDtype, V: 33, H: 33, tdtype });
}

type Case = EmbCase & { impl: ImplName };

describe('embedding', () => {
  test.each(table(withImpls(cases)))('%s', async (_name, c: Case) => {
    const rng = new Rng(c);
    const n = c.idShape.reduce((a, b) => a * b, 1);
    const idv = rng.ints(n, 0, c.V);
    // always hit the first and last rows when there is room
    if (n >= 2) {
      idv[0] = c.V - 1;
      idv[n - 1] = 0;
    }
    const T = floatTensor(rng.normalF32(c.V * c.H, 2), [c.V, c.H], c.tdtype);
    const out = await ops.embedding(idTensor(idv, c.idShape, c.idDtype), T.t, implOpts(c.impl));
    const got = f32Data(out, [...c.idShape, c.H], c);
    expectClose(got, ref.embedding(idv, T.exact, c.V, c.H), { abs: 0, ctx: c, label: 'embedding' });
  });

  test('special values (inf, -0, NaN, subnormal) pass through unchanged', async () => {
    const vals = new Float32Array([Infinity, -Infinity, -0, NaN, 2 ** -149, 65504, 1e-30, 3]);
    for (const tdtype of ['f32', 'bf16', 'f16'] as const) {
      const T = floatTensor(vals, [4, 2], tdtype);
      for (const impl of ['reference', 'fast', 'default'] as const) {
        const out = await ops.embedding(idTensor([3, 2, 1, 0], [4], 'i32'), T.t, implOpts(impl));
        const got = f32Data(out, [4, 2], { tdtype, impl });
        const want = ref.embedding([3, 2, 1, 0], T.exact, 4, 2);
        expectClose(got, want, { abs: 0, ctx: { tdtype, impl }, label: 'embedding specials' });
        // -0 keeps its sign (row 1, col 0 of the table is output row 2, col 0)
        expect(Object.is(got[4], -0)).toBe(true);
      }
    }
  });

  test('large i64 ids within range', async () => {
    const V = 70000;
    const T = floatTensor(Float32Array.from({ length: V }, (_, i) => i), [V, 1], 'f32');
    const out = await ops.embedding(idTensor([69999, 65536, 0], [3], 'i64'), T.t);
    expect(Array.from(f32Data(out, [3, 1]))).toEqual([69999, 65536, 0]);
  });
});
