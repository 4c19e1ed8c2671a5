/**
 * softmax(scale · x) over the last dim, against float64.
 *
 * Tolerance, relative per element, per row (first order in u = 2^-24):
 *  - the exponent argument scale·x_i − max is formed with ≤ 2 roundings of quantities
 *    ≤ 2A in magnitude, A = max_j |scale·x_j| of the row (whichever order: s·x − s·m or
 *    s·(x − m)): absolute error ≤ 4u·A, i.e. a relative error 4u·A in e^arg;
 *  - expf: 8u budget (as in siluMul);
 *  - the sum of n positive terms: γ_{n−1}; the division (or reciprocal-multiply): ≤ 2u.
 * Numerator and denominator each carry (4A + 8)u, so
 *   rel ≤ (8A + 16 + n + 1)u; we allow (8A + n + 20)u.
 * Absolute: an f32 min-normal, for probabilities that underflow (FTZ allowed).
 * Special rows: all −inf gives a NaN row; any NaN gives a NaN row; −inf entries give 0.
 */
import * as ops from '../../lib/ops';
import * as ref from '../reference/ops';
import { expectClose } from '../reference/compare';
import { Rng } from '../reference/rng';
import { F32_MIN_NORMAL, U32, f32, f32Data, implOpts, table, withImpls, type ImplName } from './util';

const math = Math; // aliased: global lookups are slow under jest's vm context

interface SoftmaxCase {
  lead: number[];
  n: number;
  /** undefined: default (1) */
  scale?: number;
  xstd: number;
  /** 'masked': some entries −inf (a causal mask); 'special': NaN / all −inf / huge rows mixed in */
  kind: 'plain' | 'masked' | 'special';
}

const cases: SoftmaxCase[] = [];
let rot = 0;
for (const lead of [[1], [3], [0], [], [2, 3], [17]]) {
  for (const n of [1, 3, 7, 17, 33, 127, 4096, 4099]) {
    if (n >= 4096 && lead.length > 0 && lead[0] > 3) continue;
    const scale = [undefined, 0.1352, 2.5, 1][rot % 4]; // 0.1352 ~ V2's 192^-0.5
    const xstd = [1, 4, 10][rot % 3];
    const kind = (['plain', 'masked', 'special'] as const)[rot % 3];
    rot++;
    cases.push({ lead, n, scale, xstd, kind });
  }
}
cases.push({ lead: [1], n: 102400, xstd: 3, kind: 'plain' }); // V2 vocabulary
cases.push({ lead: [2], n: 102400, scale: 0.5, xstd: 3, kind: 'masked' });
cases.push({ lead: [4], n: 5, xstd: 1e3, kind: 'plain' }); // large logits: needs the max subtraction
cases.push({ lead: [4], n: 33, scale: 1e-3, xstd: 1e4, kind: 'plain' });

type Case = SoftmaxCase & { impl: ImplName };

function makeX(c: SoftmaxCase, rng: Rng, rows: number): Float32Array {
  const x = rng.normalF32(rows * c.n, c.xstd);
  if (c.kind === 'masked') {
    // causal-style mask: row r keeps its first max(1, (r+1)·n/rows) entries (at least one finite)
    for (let r = 0; r < rows; r++) {
      const keep = math.max(1, math.floor(((r + 1) * c.n) / math.max(rows, 2)));
      for (let i = keep; i < c.n; i++) x[r * c.n + i] = -Infinity;
    }
  } else if (c.kind === 'special' && rows > 0) {
    // row 0: a NaN in the middle; row 1: all −inf; row 2: one huge value (stability)
    x[math.floor(c.n / 2)] = NaN;
    if (rows > 1) for (let i = 0; i < c.n; i++) x[c.n + i] = -Infinity;
    if (rows > 2) x[2 * c.n + (c.n - 1)] = 1e4;
  }
  return x;
}

describe('softmax', () => {
  test.each(table(withImpls(cases)))('%s', async (_name, c: Case) => {
    const rng = new Rng(c);
    const rows = c.lead.reduce((a, b) => a * b, 1);
    const x = makeX(c, rng, rows);
    const scale = c.scale ?? 1;
    const opts = { ...implOpts(c.impl), ...(c.scale === undefined ? {} : { scale: c.scale }) };
    const y = await ops.softmax(f32(x, [...c.lead, c.n]), opts);
    const got = f32Data(y, [...c.lead, c.n], c);
    const want = ref.softmax(x, c.n, scale);
    const bound = new Float64Array(want.length);
    for (let r = 0; r < rows; r++) {
      let A = 0;
      for (let i = 0; i < c.n; i++) {
        const v = math.abs(math.fround(scale * x[r * c.n + i]));
        if (v > A && v !== Infinity) A = v;
      }
      const rel = (8 * A + c.n + 20) * U32;
      for (let i = 0; i < c.n; i++) bound[r * c.n + i] = rel * math.abs(want[r * c.n + i]);
    }
    expectClose(got, want, { abs: F32_MIN_NORMAL, bound, ctx: c, label: 'softmax' });
  });

  test('hand values: [0, ln 3, -inf] -> [0.25, 0.75, 0]; default scale 1', async () => {
    const y = f32Data(await ops.softmax(f32([0, Math.log(3), -Infinity], [3])), [3]);
    expect(y[0]).toBeCloseTo(0.25, 6);
    expect(y[1]).toBeCloseTo(0.75, 6);
    expect(y[2]).toBe(0);
  });

  test('scale multiplies x before the softmax', async () => {
    // softmax(2·[0, ln 3]) = [1/10, 9/10]
    const y = f32Data(await ops.softmax(f32([0, Math.log(3)], [1, 2]), { scale: 2 }), [1, 2]);
    expect(y[0]).toBeCloseTo(0.1, 6);
    expect(y[1]).toBeCloseTo(0.9, 6);
  });
});
